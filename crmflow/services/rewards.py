"""The rewards catalogue as a service: validate a catalogue, publish its JSON Schema, apply
it to the database, and list what is on offer with the stock left.

A catalogue comes as a YAML file (the CLI: `rewards.yaml`, errors with file and line) or as
the model itself (the API's JSON body): both are `rules.rewards.RewardsFile`. A reward's
`min_tier` is checked against a programme: for `apply`, the active rules version's (the one
redemptions use); for `validate`, a programme file when one is given or lies beside the
rewards file, else the active version's.

Applying is an upsert: a reward in the file is created or updated (and active again if it
had been withdrawn); a reward left out is withdrawn (`active = false`: no new redemptions,
the old ones and its `issued` count stay).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection

from crmflow.processing import active_pack
from crmflow.services.errors import FieldProblem, Invalid
from crmflow.services.rules import RulesInvalid, load_program_file, yaml_bounds
from crmflow.services.runtime import Runtime
from rules.ledger import cents
from rules.models import Program
from rules.pack import PROGRAM_FILE
from rules.rewards import CouponSpec, Reward, RewardsFile, load_rewards, tier_problems
from rules.source import SourceError, SourceProblem
from store import rewards as store
from store.db import utcnow

RewardsSource = Path | RewardsFile  # a YAML file, or the catalogue itself
RewardStatus = Literal["available", "not yet", "ended", "out of stock", "withdrawn"]


class RewardsInvalid(Invalid):
    """The catalogue does not validate; `errors` has every problem (file and line for a
    file, the field's path for a body)."""

    def __init__(self, errors: list[SourceProblem]) -> None:
        self.errors = errors
        super().__init__(
            [FieldProblem(f"{e.file}:{e.line}" if e.line else e.file, e.message) for e in errors]
        )


class RewardsSummary(BaseModel):
    """A valid catalogue."""

    ok: bool = True
    rewards: list[str] = Field(description="the rewards' ids, in file order")
    program: str | None = Field(
        description="what `min_tier` was checked against: a programme file or the active "
        "rules version (null: no programme, and no reward names a tier)"
    )


class RewardsApplied(BaseModel):
    """What applying a catalogue changed (or would change, in a dry run)."""

    dry_run: bool
    created: list[str]
    updated: list[str] = Field(description="changed, or active again after being withdrawn")
    unchanged: list[str]
    withdrawn: list[str] = Field(description="active before, left out of the catalogue")


class RewardInfo(BaseModel):
    """A reward as the catalogue in the database has it."""

    id: str
    name: str
    kind: str
    cost: float
    stock: int | None
    issued: int = Field(description="handed out and not given back")
    stock_left: int | None = Field(description="null: no limit")
    per_member_limit: int | None
    valid_from: datetime | None
    valid_to: datetime | None
    min_tier: str | None
    description: str | None
    coupon: CouponSpec | None
    active: bool
    status: RewardStatus = Field(description="as of now")


# --------------------------------------------------------------------------- loading


def _program_named(path: Path) -> Program:
    try:
        return load_program_file(path)
    except RulesInvalid as exc:
        raise RewardsInvalid(exc.errors) from exc


def _active_program(rt: Runtime | None) -> tuple[Program | None, str | None]:
    if rt is None:
        return None, None
    with rt.engine.connect() as conn:
        pack = active_pack(conn)
    if pack is None:
        return None, None
    return pack.program, f"rules version {pack.version}"


def _load(src: RewardsSource, program: Program | None) -> RewardsFile:
    """The catalogue, validated and its tiers checked; `RewardsInvalid` otherwise."""
    if isinstance(src, RewardsFile):
        bad = tier_problems(src, program)
        if bad:
            raise RewardsInvalid(
                [SourceProblem(".".join(map(str, path)), None, msg) for path, msg in bad]
            )
        return src
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RewardsInvalid(
            [SourceProblem(str(src), None, f"cannot read the file: {exc}")]
        ) from exc
    too_big = yaml_bounds(text, str(src))
    if too_big is not None:
        raise RewardsInvalid([too_big])
    try:
        return load_rewards(text, program, str(src))
    except SourceError as exc:
        raise RewardsInvalid(exc.errors) from exc


def validate(
    rt: Runtime | None, src: RewardsSource, program_file: Path | None = None
) -> RewardsSummary:
    """Check a catalogue; `RewardsInvalid` names every problem. Its tiers are checked against
    `program_file`, else the programme file beside a rewards file, else the active rules
    version (`rt`; None: no database). Stores nothing."""
    if program_file is None and isinstance(src, Path):
        beside = src.parent / PROGRAM_FILE
        program_file = beside if beside.is_file() else None
    program: Program | None
    where: str | None
    if program_file is not None:
        program, where = _program_named(program_file), str(program_file)
    else:
        program, where = _active_program(rt)
    found = _load(src, program)
    return RewardsSummary(rewards=[r.id for r in found.rewards], program=where)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of rewards files, for editors."""
    doc = RewardsFile.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "crmflow rewards file"
    return doc


# --------------------------------------------------------------------------- apply


def _row(reward: Reward) -> dict[str, Any]:
    return {
        "reward_id": reward.id,
        "name": reward.name,
        "kind": reward.kind,
        "cost": reward.cost,
        "stock": reward.stock,
        "per_member_limit": reward.per_member_limit,
        "valid_from": reward.valid_from,
        "valid_to": reward.valid_to,
        "min_tier": reward.min_tier,
        "description": reward.description,
        "coupon": reward.coupon.model_dump(mode="json") if reward.coupon else None,
    }


def _same(stored: Any, row: dict[str, Any]) -> bool:
    """The stored reward has the file's values (and is active)."""
    for column in store.FILE_COLUMNS:
        old, new = getattr(stored, column), row[column]
        if column == "cost":
            old, new = cents(old), cents(new)
        elif column == "coupon" and old is not None and new is not None:
            old, new = CouponSpec.model_validate(old), CouponSpec.model_validate(new)
        if old != new:
            return False
    return bool(stored.active)


def apply(rt: Runtime, src: RewardsSource, *, dry_run: bool = False) -> RewardsApplied:
    """Make the catalogue the database's: create or update its rewards, withdraw the ones it
    leaves out. Tiers are checked against the active rules version. One transaction; with
    `dry_run` nothing is written."""
    program, _ = _active_program(rt)
    found = _load(src, program)
    now = utcnow()
    rows = [_row(r) for r in found.rewards]
    with rt.engine.begin() as conn:
        return _apply(conn, rows, now, dry_run)


def _apply(
    conn: Connection, rows: list[dict[str, Any]], now: datetime, dry_run: bool
) -> RewardsApplied:
    stored = {r.reward_id: r for r in store.read(conn)}
    created = [row["reward_id"] for row in rows if row["reward_id"] not in stored]
    known = [row for row in rows if row["reward_id"] in stored]
    unchanged = [row["reward_id"] for row in known if _same(stored[row["reward_id"]], row)]
    updated = [row["reward_id"] for row in known if row["reward_id"] not in unchanged]
    keep = {row["reward_id"] for row in rows}
    withdrawn = sorted(i for i, r in stored.items() if r.active and i not in keep)
    if not dry_run:
        store.upsert(conn, [r for r in rows if r["reward_id"] not in unchanged], now)
        store.withdraw(conn, withdrawn, now)
    return RewardsApplied(
        dry_run=dry_run,
        created=created,
        updated=updated,
        unchanged=unchanged,
        withdrawn=withdrawn,
    )


# --------------------------------------------------------------------------- list


def _status(r: Any, now: datetime) -> RewardStatus:
    if not r.active:
        return "withdrawn"
    if r.valid_from is not None and now < r.valid_from:
        return "not yet"
    if r.valid_to is not None and now >= r.valid_to:
        return "ended"
    if r.stock is not None and r.issued >= r.stock:
        return "out of stock"
    return "available"


def info(r: Any, now: datetime) -> RewardInfo:
    """A stored reward row as the services show it."""
    return RewardInfo(
        id=r.reward_id,
        name=r.name,
        kind=r.kind,
        cost=float(Decimal(str(r.cost))),
        stock=r.stock,
        issued=r.issued,
        stock_left=None if r.stock is None else max(r.stock - r.issued, 0),
        per_member_limit=r.per_member_limit,
        valid_from=r.valid_from,
        valid_to=r.valid_to,
        min_tier=r.min_tier,
        description=r.description,
        coupon=CouponSpec.model_validate(r.coupon) if r.coupon else None,
        active=bool(r.active),
        status=_status(r, now),
    )


def list_rewards(
    rt: Runtime, *, withdrawn: bool = False, now: datetime | None = None
) -> list[RewardInfo]:
    """The catalogue by id, with the stock left and each reward's status as of `now`;
    withdrawn rewards only when asked."""
    now = now or utcnow()
    with rt.engine.connect() as conn:
        rows = store.read(conn, withdrawn=withdrawn)
    return [info(r, now) for r in rows]
