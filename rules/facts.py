"""The facts a rule can test, their types, and how they are computed from a profile and an event.

`ProfileState` is the customer's state as the rules see it (loaded by the store, changed in
memory by the effects of each event); `build_facts` is a pure function of that state and the
event. Time is the event's `occurred_at`, never the wall clock, so replaying a stream of
events gives the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from rules.ledger import ZERO, OrderState, cents, is_pending, is_spendable
from rules.models import Program

FactKind = Literal["number", "string", "boolean", "list", "any"]

WINDOWS = (30, 90, 365)

# What the customer-base model (BG/NBD + Gamma-Gamma, `crmflow model fit`) says of a customer,
# as of its latest scoring: missing for a customer it has not scored (no purchase yet, no
# model fitted) and, for the spend facts, when no spend model could be fitted.
MODEL_FACTS: dict[str, tuple[FactKind, str]] = {
    "p_alive": (
        "number",
        "probability (0 to 1) that the customer is still a customer, from their purchase "
        "history (BG/NBD); a churn signal",
    ),
    **{
        f"expected_purchases_{d}d": (
            "number",
            f"purchases (days with a purchase) the model expects in the next {d} days",
        )
        for d in WINDOWS
    },
    "expected_avg_spend": (
        "number",
        "the spend per purchase the model expects from the customer (Gamma-Gamma)",
    ),
    "clv_365d": (
        "number",
        "customer lifetime value over the next 365 days: expected purchases times expected "
        "spend, discounted at the programme's clv_discount_rate",
    ),
}

# Fixed facts: name -> (type, description). `event.<x>`, `consent.<channel>` and
# `attributes.<name>` are open families, typed by the programme where it declares them.
FIXED_FACTS: dict[str, tuple[FactKind, str]] = {
    "event.type": ("string", "the event's type"),
    "tier": ("string", "current tier name"),
    "tier_rank": ("number", "rank of the current tier (the welcome tier's when none)"),
    "points_balance": (
        "number",
        "points that can be spent now: unexpired lots past their return window (less the "
        "debt where the programme allows a negative balance)",
    ),
    "points_pending": ("number", "points earned by purchases still inside the return window"),
    "tags": ("list", "current (unexpired) tags; test with contains"),
    "lifecycle_stage": ("string", "lead, prospect, customer or member"),
    "owner": ("string", "sales owner; missing when the customer is in the shared pool"),
    "has_owner": ("boolean", "the customer has a sales owner"),
    **{
        f"spend_{d}d": ("number", f"purchase amount over the last {d} days, less refunds")
        for d in WINDOWS
    },
    **{f"purchases_{d}d": ("number", f"number of purchases in the last {d} days") for d in WINDOWS},
    "points_earned_365d": (
        "number",
        "points earned in the last 365 days, less what refunds clawed back, plus operator "
        "credits marked qualifying",
    ),
    "days_since_last_purchase": ("number", "days since the latest purchase (0 on a purchase)"),
    "avg_days_between_purchases": (
        "number",
        "the customer's usual gap: mean days between purchases in the last 365 days",
    ),
    "purchase_gap_ratio": (
        "number",
        "days since the last purchase ÷ the usual gap between purchases (churn signal)",
    ),
    "days_since_last_follow_up": (
        "number",
        "days since the last sales follow-up (since the profile was created when none)",
    ),
    "hours_since_last_follow_up": ("number", "the same, in hours"),
    "days_since_created": ("number", "days since the profile was created"),
    "birthday_month": ("boolean", "the event falls in the month of attributes.birthday"),
    **MODEL_FACTS,
}


def fact_kind(name: str, program: Program) -> FactKind | None:
    """The type of fact `name`, or None when there is no such fact."""
    if name in FIXED_FACTS:
        return FIXED_FACTS[name][0]
    head, _, rest = name.partition(".")
    if not rest:
        return None
    if head == "event":
        declared = program.event_properties.get(rest)
        return "number" if declared == "money" else declared
    if head == "consent":
        return "boolean"
    if head == "attributes":
        return program.attributes.get(rest, "any")
    return None


def known_facts(program: Program) -> list[str]:
    names = list(FIXED_FACTS)
    names += [f"event.{p}" for p in program.event_properties]
    names += ["consent.<channel>", "attributes.<name>"]
    return names


@dataclass
class Lot:
    """Points earned together. `key` names a lot before the store has given it an id."""

    key: str
    remaining: Decimal
    earned_at: datetime
    expires_at: datetime | None
    id: int | None = None
    order_id: str | None = None
    available_at: datetime | None = None  # pending until then (the return window)


@dataclass
class ProfileState:
    """A customer as the rules see it. Changed in memory by the effects of each event."""

    customer_id: str
    created_at: datetime
    timezone: str = "UTC"
    tier: str | None = None
    lifecycle_stage: str = "lead"
    owner: str | None = None
    consent: dict[str, bool] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, datetime | None] = field(default_factory=dict)  # tag -> expires_at
    lots: list[Lot] = field(default_factory=list)
    purchases: list[tuple[datetime, float]] = field(default_factory=list)  # sorted by time
    earnings: list[tuple[datetime, float]] = field(default_factory=list)  # points earned
    last_follow_up_at: datetime | None = None
    # what a refund clawed back beyond the lots; later credits settle it first
    debt: Decimal = ZERO
    # purchases a refund of this chunk may name (loaded on demand; not kept between chunks)
    orders: dict[str, OrderState] = field(default_factory=dict)
    # (purchased_at, refunded_at, money, points): refunds lower spend at the purchase's time
    refunds: list[tuple[datetime, datetime, float, float]] = field(default_factory=list)
    credits: list[tuple[datetime, float]] = field(default_factory=list)  # qualifying credits
    # the customer-base model's scores (MODEL_FACTS), loaded by the store; empty: none
    model_facts: dict[str, float] = field(default_factory=dict)

    def balance(self, at: datetime) -> Decimal:
        """Points spendable at `at` (pending lots are not)."""
        return sum((lot.remaining for lot in self.lots if is_spendable(lot, at)), ZERO)

    def pending(self, at: datetime) -> Decimal:
        return sum((lot.remaining for lot in self.lots if is_pending(lot, at)), ZERO)

    def live_tags(self, at: datetime) -> set[str]:
        return {t for t, exp in self.tags.items() if exp is None or exp > at}


@dataclass(frozen=True)
class EventFacts:
    """The part of an event the rules need (plain values, no store types)."""

    event_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any]


def _days(delta: timedelta) -> float:
    return round(delta.total_seconds() / 86400, 4)


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo | None:
    """The time zone called `name`, or None when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return None


@lru_cache(maxsize=65536)
def _month_of(raw: str) -> int | None:
    try:
        return date.fromisoformat(raw[:10]).month
    except ValueError:
        return None


def _birthday_month(state: ProfileState, at: datetime) -> bool | None:
    raw = state.attributes.get("birthday")
    if not isinstance(raw, str):
        return None
    month = _month_of(raw)
    if month is None:
        return None
    tz = zone(state.timezone)
    return month == (at.astimezone(tz) if tz else at).month


def _fits(value: Any, kind: str) -> bool:
    """A value of the declared type (a declared number arriving as text is no fact)."""
    if kind in ("number", "money"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, str | int | float | bool)


def order_of(event: EventFacts, program: Program) -> str | None:
    """The order an event names (a purchase's or a refund's), or None."""
    oid = event.properties.get(program.order_property)
    return oid if isinstance(oid, str) and oid else None


def record_event(state: ProfileState, event: EventFacts, program: Program) -> None:
    """Fold the event itself into the state (a purchase counts towards its own facts)."""
    if event.type == program.purchase_event:
        amount = event.properties.get(program.spend_property)
        if isinstance(amount, int | float) and not isinstance(amount, bool):
            state.purchases.append((event.occurred_at, float(amount)))
            state.purchases.sort(key=lambda p: p[0])
            oid = order_of(event, program)
            if oid is not None:
                order = state.orders.get(oid)
                if order is None:
                    state.orders[oid] = OrderState(oid, event.occurred_at, cents(amount))
                else:  # one order sent as several purchases (split shipments)
                    order.amount += cents(amount)
    elif event.type == program.follow_up_event and (
        state.last_follow_up_at is None or event.occurred_at > state.last_follow_up_at
    ):
        state.last_follow_up_at = event.occurred_at


_WINDOW_KEYS = [(d, f"spend_{d}d", f"purchases_{d}d") for d in WINDOWS]
_WINDOW_FACTS = frozenset(f"{kind}_{d}d" for kind in ("spend", "purchases") for d in WINDOWS)
_GAP_FACTS = frozenset(
    {"days_since_last_purchase", "avg_days_between_purchases", "purchase_gap_ratio"}
)
# what `rules.effects.qualified_tier` reads
TIER_METRIC_FACTS = frozenset({*(f"spend_{d}d" for d in WINDOWS), "points_earned_365d"})
_FOLLOW_UP_FACTS = frozenset({"days_since_last_follow_up", "hours_since_last_follow_up"})


def build_facts(
    state: ProfileState,
    event: EventFacts,
    program: Program,
    needed: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The facts for this customer at the event's time; a missing fact is left out.

    With `needed` (the facts a rules version reads, `CompiledPack.needed_facts`), facts
    outside it may be left out too: the ones that walk the history are not computed."""
    at = event.occurred_at
    every = needed is None
    want = needed or frozenset()
    facts: dict[str, Any] = {"event.type": event.type}
    for key, kind in program.event_properties.items():
        value = event.properties.get(key)
        if _fits(value, kind):
            facts[f"event.{key}"] = value
    tier = state.tier or program.welcome_tier
    tier_def = program.tier(tier)
    if state.tier is not None:
        facts["tier"] = state.tier
    facts["tier_rank"] = tier_def.rank if tier_def else 0
    if every or "points_balance" in want:
        balance = state.balance(at)
        if program.points.negative_balance == "allow":
            balance -= state.debt
        facts["points_balance"] = float(balance)
    if every or "points_pending" in want:
        facts["points_pending"] = float(state.pending(at))
    if every or "tags" in want:
        facts["tags"] = state.live_tags(at)
    facts["lifecycle_stage"] = state.lifecycle_stage
    if state.owner:
        facts["owner"] = state.owner
    facts["has_owner"] = bool(state.owner)
    year_ago = at - timedelta(days=365)
    if every or not want.isdisjoint(_WINDOW_FACTS) or not want.isdisjoint(_GAP_FACTS):
        past = [(t, a) for t, a in state.purchases if t <= at]
        for d, spend_key, count_key in _WINDOW_KEYS:
            since = at - timedelta(days=d)
            spend, count = 0.0, 0
            for t, a in past:
                if t > since:
                    spend += a
                    count += 1
            if state.refunds:
                spend -= sum(m for p, r, m, _ in state.refunds if since < p <= at and r <= at)
            facts[spend_key] = round(max(spend, 0.0), 2)
            facts[count_key] = count
        if past:
            facts["days_since_last_purchase"] = _days(at - past[-1][0])
            recent = [t for t, _ in past if t > year_ago]
            if len(recent) >= 2:
                usual = _days(recent[-1] - recent[0]) / (len(recent) - 1)
                facts["avg_days_between_purchases"] = round(usual, 4)
                if usual > 0:
                    ratio = facts["days_since_last_purchase"] / usual
                    facts["purchase_gap_ratio"] = round(ratio, 4)
    if every or "points_earned_365d" in want:
        earned = sum(a for t, a in state.earnings if year_ago < t <= at)
        if state.refunds:
            earned -= sum(x for p, r, _, x in state.refunds if year_ago < p <= at and r <= at)
        earned += sum(a for t, a in state.credits if year_ago < t <= at)
        facts["points_earned_365d"] = round(max(earned, 0.0), 2)
    if every or not want.isdisjoint(_FOLLOW_UP_FACTS):
        since_follow_up = at - (state.last_follow_up_at or state.created_at)
        facts["days_since_last_follow_up"] = _days(since_follow_up)
        facts["hours_since_last_follow_up"] = round(since_follow_up.total_seconds() / 3600, 3)
    if every or "days_since_created" in want:
        facts["days_since_created"] = _days(at - state.created_at)
    if every or "birthday_month" in want:
        birthday = _birthday_month(state, at)
        if birthday is not None:
            facts["birthday_month"] = birthday
    for name, value in state.model_facts.items():
        if name in MODEL_FACTS:
            facts[name] = value
    for channel, given in state.consent.items():
        facts[f"consent.{channel}"] = bool(given)
    for name, value in state.attributes.items():
        if _fits(value, program.attributes.get(name, "any")):
            facts[f"attributes.{name}"] = value
    return facts
