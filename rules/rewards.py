"""The rewards catalogue's file format (`rewards.yaml`, beside the programme), as pydantic
models, and its loader.

    rewards:
      - id: coffee-voucher
        name: Coffee voucher
        kind: coupon                 # coupon, gift or service
        cost: 500                    # points; more than 0, at most two decimals
        stock: 1000                  # leave out for no limit
        per_member_limit: 2          # redemptions per member (reversed ones do not count)
        valid_to: "2027-01-01T00:00:00+08:00"
        coupon: {value: 30, valid_days: 30, code_prefix: CAFE}   # exactly for coupons
      - {id: lounge-pass, name: Airport lounge, kind: service, cost: 8000, min_tier: gold}

These models are the one description of the file and of the API's body (`PUT /rewards`):
the loader validates with them, `crmflow rewards schema` publishes their JSON Schema. A
reward's `min_tier` must be one of the programme's tiers; every problem names its file and
line (`load_rewards`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from rules.models import Name, Program
from rules.source import (
    LinePath,
    SourceError,
    SourceProblem,
    YamlDoc,
    errors_from_validation,
    load_yaml,
    not_mapping,
    parse_yaml,
)

REWARDS_FILE = "rewards.yaml"
MAX_REWARDS = 1000
MAX_POINTS = Decimal(1_000_000_000)  # the ledger's Numeric(14, 2) holds far more; a bound
EARLIEST, LATEST = 2000, 2200  # the years a validity date may fall in


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _in_range(value: datetime | None) -> datetime | None:
    if value is not None and not EARLIEST <= value.year <= LATEST:
        raise ValueError(f"must be a date between the years {EARLIEST} and {LATEST}")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Points = Annotated[Decimal, Field(gt=0, le=MAX_POINTS, decimal_places=2)]
When = Annotated[AwareDatetime | None, AfterValidator(_in_range)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CouponSpec(_Strict):
    """What a coupon reward issues: a code `<code_prefix>-<8 hex>` worth `value`, valid for
    `valid_days` from the redemption."""

    value: Points = Field(description="the coupon's value, in the programme's currency")
    valid_days: int = Field(ge=1, le=3650)
    code_prefix: str = Field(
        pattern=r"^[A-Z0-9]{1,16}$", description="upper case letters and digits, 1 to 16"
    )


class Reward(_Strict):
    """One reward members can spend points on."""

    id: Name = Field(description="lower case letters, digits and _ . : -; unique in the file")
    name: Text = Field(min_length=1, max_length=200)
    kind: Literal["coupon", "gift", "service"]
    cost: Points = Field(description="points; more than 0, at most two decimals")
    stock: int | None = Field(
        None, ge=0, le=2**31 - 1, description="how many can be issued in all; none: no limit"
    )
    per_member_limit: int | None = Field(
        None, ge=1, le=1_000_000, description="redemptions per member; none: no limit"
    )
    valid_from: When = Field(None, description="with a time zone; none: from now on")
    valid_to: When = Field(None, description="with a time zone; the end, exclusive")
    min_tier: Name | None = Field(None, description="one of the programme's tiers, or higher")
    description: Text | None = Field(None, max_length=2000)
    coupon: CouponSpec | None = Field(None, description="required for a coupon, only for one")

    @model_validator(mode="after")
    def _consistent(self) -> Reward:
        if self.valid_from and self.valid_to and self.valid_from >= self.valid_to:
            raise ValueError(
                f"valid_from ({self.valid_from.isoformat()}) must come before valid_to "
                f"({self.valid_to.isoformat()})"
            )
        if self.kind == "coupon" and self.coupon is None:
            raise ValueError("a coupon reward needs `coupon: {value, valid_days, code_prefix}`")
        if self.kind != "coupon" and self.coupon is not None:
            raise ValueError(f"only a coupon reward has `coupon` (this one is a {self.kind})")
        return self


class RewardsFile(_Strict):
    """The catalogue: every reward on offer. Applying it withdraws the rewards it leaves out."""

    rewards: list[Reward] = Field(max_length=MAX_REWARDS)

    @model_validator(mode="after")
    def _unique(self) -> RewardsFile:
        ids = [r.id for r in self.rewards]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"reward ids must be unique: {', '.join(dup)} repeated")
        return self


def tier_problems(rewards: RewardsFile, program: Program | None) -> list[tuple[LinePath, str]]:
    """(path of the field, message) for each `min_tier` the programme does not have (every
    one of them when there is no programme to check against)."""
    out: list[tuple[LinePath, str]] = []
    for i, reward in enumerate(rewards.rewards):
        if reward.min_tier is None:
            continue
        where: LinePath = ("rewards", i, "min_tier")
        if program is None:
            out.append((where, f"tier {reward.min_tier!r} cannot be checked: no programme"))
        elif program.tier(reward.min_tier) is None:
            names = ", ".join(t.name for t in program.ordered_tiers())
            out.append((where, f"unknown tier {reward.min_tier!r}; the tiers are {names}"))
    return out


def rewards_from_doc(doc: YamlDoc, program: Program | None) -> RewardsFile:
    """Validate a parsed rewards file; `SourceError` names every problem's line."""
    bad = not_mapping(doc, "a rewards file", "rewards: [...]")
    if bad:
        raise bad
    try:
        found = RewardsFile.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(errors_from_validation(doc, exc)) from exc
    problems = [
        SourceProblem(doc.path, doc.line_of(path), f"{'.'.join(map(str, path))}: {message}")
        for path, message in tier_problems(found, program)
    ]
    if problems:
        raise SourceError(problems)
    return found


def load_rewards(source: Path | str, program: Program | None, path: str = "") -> RewardsFile:
    """A rewards file (a path, or the YAML text itself, named `path` in messages) checked
    against the programme's tiers; `SourceError` lists every problem with file and line."""
    if isinstance(source, Path):
        doc = load_yaml(source)
    else:
        doc = parse_yaml(source, path or REWARDS_FILE)
    return rewards_from_doc(doc, program)
