"""The rules language's file formats: the programme file and rule files, as pydantic models.

These models are the single description of both formats: the YAML loader validates with
them, `crmflow rules schema` publishes their JSON Schema for editors.

A rule file:

    rules:
      - name: big-spender
        priority: 10
        on: purchase                      # event type(s); leave out for any event
        when:                             # optional condition
          all:
            - event.amount >= 1000        # shorthand: "<fact> <op> <value>"
            - {fact: tags, op: contains, value: vip}
        then:
          - add_tag: {tag: big-spender, ttl_days: 90}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rules.source import NAME_PATTERN, RULE_NAME_PATTERN, yaml_load

RuleName = Annotated[str, Field(pattern=RULE_NAME_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]

Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "exists"]
OPS: tuple[str, ...] = ("==", "!=", "<=", ">=", "<", ">", "not_in", "in", "contains", "exists")
Scalar = float | int | str | bool


# A common cost of capital for CLV; a programme sets its own as `clv_discount_rate`.
DEFAULT_CLV_DISCOUNT_RATE = 0.10


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- programme


class Qualify(Strict):
    metric: Literal["spend", "points_earned"] = Field(
        description="what qualifies for the tier, summed over the tier window"
    )
    threshold: float = Field(ge=0)


class Benefits(Strict):
    points_multiplier: float = Field(1.0, gt=0, le=100)
    perks: list[str] = Field(default_factory=list, description="free text shown to members")


class TierDef(Strict):
    name: Name
    rank: int = Field(ge=0, description="higher is better; ranks are unique")
    qualify: Qualify
    benefits: Benefits = Field(default_factory=Benefits)


class GracePeriod(Strict):
    policy: Literal["grace_period"]
    grace_days: int = Field(30, ge=0, le=3650)


class Anniversary(Strict):
    policy: Literal["anniversary"]
    attribute: str = Field(
        "member_since", description="customer attribute holding the membership start date"
    )


class TierPolicy(Strict):
    window_days: int = Field(365, ge=1, le=3650)
    downgrade: Annotated[GracePeriod | Anniversary, Field(discriminator="policy")] = Field(
        default_factory=lambda: GracePeriod(policy="grace_period")
    )


class RollingExpiry(Strict):
    policy: Literal["rolling"]
    days: int = Field(ge=1, le=36500)


class PeriodEndExpiry(Strict):
    policy: Literal["end_of_period"]
    period: Literal["month", "quarter", "year"]
    periods: int = Field(1, ge=1, le=100, description="expire at the end of the N-th period")


class NoExpiry(Strict):
    policy: Literal["never"]


class PointsPolicy(Strict):
    earn_rate: float = Field(1.0, ge=0, description="points per currency unit spent")
    rounding: Literal["floor", "round", "ceil"] = "floor"
    per_event_cap: float | None = Field(None, gt=0)
    daily_cap: float | None = Field(None, gt=0, description="per customer, in their timezone")
    expiry: Annotated[RollingExpiry | PeriodEndExpiry | NoExpiry, Field(discriminator="policy")] = (
        Field(default_factory=lambda: RollingExpiry(policy="rolling", days=365))
    )
    pending_days: int = Field(
        0,
        ge=0,
        le=365,
        description="points earned by a purchase become spendable this many days later (the "
        "return window); a refund inside it cancels the pending points. 0: at once",
    )
    negative_balance: Literal["allow", "forbid"] = Field(
        "forbid",
        description="when a refund claws back more than the balance: 'allow' lets the balance "
        "go below zero; 'forbid' keeps it at zero and records the shortfall as a debt that "
        "later earnings settle first",
    )
    clawback: Literal["order", "none"] = Field(
        "order",
        description="'order': a refund takes back the points its order earned (pro rata for "
        "a partial refund); 'none': refunds take no points back",
    )

    @model_validator(mode="after")
    def _pending_before_expiry(self) -> PointsPolicy:
        expiry = self.expiry
        if isinstance(expiry, RollingExpiry) and self.pending_days >= expiry.days:
            raise ValueError(
                f"pending_days ({self.pending_days}) must be shorter than the expiry "
                f"({expiry.days} days): the points would expire before they can be spent"
            )
        return self


FactType = Literal["number", "string", "boolean"]
# An event field's type: `money` is a number that is finite, not negative and has at most two
# decimals (checked when the event arrives); rules read it as a number.
EventFieldType = Literal["number", "money", "string", "boolean"]


def _default_event_properties() -> dict[str, EventFieldType]:
    return {"amount": "money", "currency": "string", "order_id": "string"}


class Program(Strict):
    """The loyalty programme: tiers, tier policy, points policy, and declared event fields."""

    program: str = Field(min_length=1, max_length=100)
    currency: str = Field("CNY", pattern=r"^[A-Z]{3}$")
    tiers: list[TierDef] = Field(min_length=1)
    welcome_tier: Name
    tier_policy: TierPolicy = Field(default_factory=TierPolicy)
    points: PointsPolicy = Field(default_factory=PointsPolicy)
    event_properties: dict[Name, EventFieldType] = Field(
        default_factory=_default_event_properties,
        description="event fields rules may use as event.<name>, with their types",
    )
    attributes: dict[str, FactType] = Field(
        default_factory=dict,
        description="customer attributes with a known type (others may be used untyped)",
    )
    spend_property: Name = Field("amount", description="event field holding a purchase amount")
    purchase_event: Name = "purchase"
    refund_event: Name = Field(
        "refund",
        description="event type of a refund: it carries the order's id and, for a partial "
        "refund, the amount refunded",
    )
    order_property: Name = Field("order_id", description="event field holding an order's id")
    follow_up_event: Name = "sales_follow_up"
    event_types: list[Name] = Field(
        default_factory=list,
        description="the event types rules may listen to (`on:`), besides the built-in ones "
        "(the purchase, refund and follow-up events, unsubscribed, and the events the "
        "scheduled automations write); empty: any event type",
    )
    currency_rates: dict[Annotated[str, Field(pattern=r"^[A-Z]{3}$")], float] = Field(
        default_factory=dict,
        description="other currencies accepted on events, with their rate to the programme's "
        "currency (accepted at the door; amounts still count one to one in this version)",
    )
    max_amount: float = Field(
        1e9, gt=0, le=1e11, description="the largest amount of money an event may carry"
    )
    clv_discount_rate: float = Field(
        DEFAULT_CLV_DISCOUNT_RATE,
        ge=0,
        le=1,
        description="annual discount rate for customer lifetime value (the clv_365d fact): "
        "money a customer is expected to spend in t years counts (1 + rate)^-t today",
    )

    @field_validator("tiers")
    @classmethod
    def _tiers_unique(cls, tiers: list[TierDef]) -> list[TierDef]:
        names = [t.name for t in tiers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tier names must be unique: {', '.join(dup)} repeated")
        ranks = [t.rank for t in tiers]
        dup_ranks = sorted({r for r in ranks if ranks.count(r) > 1})
        if dup_ranks:
            raise ValueError(f"tier ranks must be unique: rank {dup_ranks[0]} repeated")
        return tiers

    @field_validator("welcome_tier")
    @classmethod
    def _welcome_defined(cls, v: str, info: ValidationInfo) -> str:
        tiers = info.data.get("tiers")
        names = [t.name for t in tiers or []]
        if tiers is not None and v not in names:
            raise ValueError(f"welcome_tier {v!r} is not one of the tiers: {', '.join(names)}")
        return v

    def tier(self, name: str | None) -> TierDef | None:
        for t in self.tiers:  # a plain loop: this runs for every event
            if t.name == name:
                return t
        return None

    def ordered_tiers(self) -> list[TierDef]:
        return sorted(self.tiers, key=lambda t: t.rank)


# --------------------------------------------------------------------------- conditions

_SHORTHAND = re.compile(
    r"^\s*(?P<fact>[A-Za-z_][\w.:-]*)\s+(?P<op>==|!=|<=|>=|<|>|not_in|in|contains|exists)"
    r"(?:\s+(?P<value>.+?))?\s*$"
)


class Compare(Strict):
    """`<fact> <op> <value>`; `exists` takes no value. In YAML also "fact op value"."""

    fact: str = Field(min_length=1)
    op: Op
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        m = _SHORTHAND.match(data)
        if not m:
            raise ValueError(
                f"cannot read condition {data!r}; expected '<fact> <op> <value>' such as "
                "'event.amount >= 100', with op one of == != < <= > >= in not_in contains exists"
            )
        raw = m.group("value")
        try:
            value = yaml_load(raw) if raw is not None else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not a YAML value"
            raise ValueError(f"cannot read the value {raw!r} in {data!r}: {problem}") from exc
        return {"fact": m.group("fact"), "op": m.group("op"), "value": value}

    @model_validator(mode="after")
    def _value_shape(self) -> Compare:
        if self.op == "exists":
            if self.value is not None:
                raise ValueError("'exists' takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"'{self.op}' needs a non-empty list of values")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"'{self.op}' needs one value")
        return self


class All(Strict):
    all: list[Condition] = Field(min_length=1)


class AnyOf(Strict):
    any: list[Condition] = Field(min_length=1)


class Not(Strict):
    not_: Condition = Field(alias="not")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _condition_kind(v: Any) -> str | None:
    if isinstance(v, str):
        return "compare"
    if isinstance(v, dict):
        for key in ("all", "any", "not"):
            if key in v:
                return key
        return "compare"
    if isinstance(v, BaseModel):
        kinds: dict[type[BaseModel], str] = {All: "all", AnyOf: "any", Not: "not"}
        return kinds.get(type(v), "compare")
    return None


Condition = Annotated[
    Annotated[Compare, Tag("compare")]
    | Annotated[All, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[Not, Tag("not")],
    Discriminator(
        _condition_kind,
        custom_error_type="condition",
        custom_error_message="expected a condition: 'fact op value', {all: [...]}, "
        "{any: [...]} or {not: ...}",
    ),
]


# --------------------------------------------------------------------------- effects


class AddTagArgs(Strict):
    tag: Name
    ttl_days: float | None = Field(None, gt=0, description="the tag expires after this long")


class AwardPointsArgs(Strict):
    amount: Annotated[float, Field(gt=0, allow_inf_nan=False)] | str = Field(
        description="a number, or an expression over numeric facts such as 'event.amount * 2'"
    )
    multiplier: Literal["tier", "none"] = Field(
        "tier", description="apply the tier's points multiplier"
    )
    earn_rate: bool = Field(
        False, description="multiply by the programme's earn rate (points per currency unit)"
    )
    reason: str | None = None


class DeductPointsArgs(Strict):
    amount: Annotated[float, Field(gt=0, allow_inf_nan=False)] | str
    reason: str | None = None


class CouponArgs(Strict):
    value: float = Field(gt=0)
    valid_days: int = Field(30, ge=1, le=3650)
    code_prefix: str = Field("RET", pattern=r"^[A-Z0-9]{1,10}$")


class RetentionArgs(Strict):
    task: str | None = Field(None, description="follow-up task title for the owner")
    due_days: float = Field(2, gt=0, le=365)
    coupon: CouponArgs | None = None

    @model_validator(mode="after")
    def _something(self) -> RetentionArgs:
        if self.task is None and self.coupon is None:
            raise ValueError("a retention action needs a task, a coupon, or both")
        return self


class EnrollArgs(Strict):
    journey: Name
    data: dict[str, Any] = Field(default_factory=dict)


class JourneyEventArgs(Strict):
    journey: Name
    event: Name
    data: dict[str, Any] = Field(default_factory=dict)


class AddTag(Strict):
    add_tag: AddTagArgs

    @field_validator("add_tag", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"tag": v} if isinstance(v, str) else v


class RemoveTag(Strict):
    remove_tag: Name


class AwardPoints(Strict):
    award_points: AwardPointsArgs

    @field_validator("award_points", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"amount": v} if isinstance(v, int | float | str) else v


class DeductPoints(Strict):
    deduct_points: DeductPointsArgs

    @field_validator("deduct_points", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"amount": v} if isinstance(v, int | float | str) else v


class SetTier(Strict):
    set_tier: Name


class UpgradeTier(Strict):
    upgrade_tier: Literal["one", "qualified"] = Field(
        description="'one' rank up, or up to the tier the customer qualifies for"
    )


class DowngradeTier(Strict):
    downgrade_tier: Literal["one", "qualified"]


class EnrollJourney(Strict):
    enroll_journey: EnrollArgs

    @field_validator("enroll_journey", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"journey": v} if isinstance(v, str) else v


class JourneyEvent(Strict):
    journey_event: JourneyEventArgs


class RetentionAction(Strict):
    retention_action: RetentionArgs


class AssignOwner(Strict):
    assign_owner: str = Field(min_length=1, max_length=200)


class ReturnToPool(Strict):
    return_to_pool: bool = Field(description="true: clear the owner so the lead is unassigned")


class SetStage(Strict):
    set_stage: Literal["lead", "prospect", "customer", "member"]


EFFECT_TYPES: dict[str, type[BaseModel]] = {
    "add_tag": AddTag,
    "remove_tag": RemoveTag,
    "award_points": AwardPoints,
    "deduct_points": DeductPoints,
    "set_tier": SetTier,
    "upgrade_tier": UpgradeTier,
    "downgrade_tier": DowngradeTier,
    "enroll_journey": EnrollJourney,
    "journey_event": JourneyEvent,
    "retention_action": RetentionAction,
    "assign_owner": AssignOwner,
    "return_to_pool": ReturnToPool,
    "set_stage": SetStage,
}


def _effect_kind(v: Any) -> str | None:
    if isinstance(v, dict) and len(v) == 1:
        key = next(iter(v))
        return key if key in EFFECT_TYPES else None
    if isinstance(v, BaseModel):
        return next(iter(type(v).model_fields))
    return None


Effect = Annotated[
    Annotated[AddTag, Tag("add_tag")]
    | Annotated[RemoveTag, Tag("remove_tag")]
    | Annotated[AwardPoints, Tag("award_points")]
    | Annotated[DeductPoints, Tag("deduct_points")]
    | Annotated[SetTier, Tag("set_tier")]
    | Annotated[UpgradeTier, Tag("upgrade_tier")]
    | Annotated[DowngradeTier, Tag("downgrade_tier")]
    | Annotated[EnrollJourney, Tag("enroll_journey")]
    | Annotated[JourneyEvent, Tag("journey_event")]
    | Annotated[RetentionAction, Tag("retention_action")]
    | Annotated[AssignOwner, Tag("assign_owner")]
    | Annotated[ReturnToPool, Tag("return_to_pool")]
    | Annotated[SetStage, Tag("set_stage")],
    Discriminator(
        _effect_kind,
        custom_error_type="effect",
        custom_error_message="expected one effect, a mapping with one key of: "
        + ", ".join(EFFECT_TYPES),
    ),
]


# --------------------------------------------------------------------------- rules


class Rule(Strict):
    name: RuleName
    description: str | None = None
    priority: int = Field(0, description="higher runs first; ties keep file order")
    enabled: bool = True
    on: Name | Annotated[list[Name], Field(min_length=1)] | None = Field(
        None, description="event type(s) the rule listens to; leave out for every event"
    )
    when: Condition | None = None
    then: list[Effect] = Field(min_length=1)

    def event_types(self) -> list[str]:
        if self.on is None:
            return []
        return [self.on] if isinstance(self.on, str) else list(self.on)


class RuleFile(Strict):
    rules: list[Rule] = Field(default_factory=list)


All.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()
Rule.model_rebuild()
RuleFile.model_rebuild()
