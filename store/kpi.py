"""Every business figure, defined once and counted by the database. The KPI digest
(`store.kpi_digest`), the rollout project's KPI review (`store.project_kpis`), the KPI
snapshot workflow, the API and the console overview all read their figures here, so one
name means one number everywhere.

A window is `(start, end]`: after `start`, up to and including `end`. A function that
counts over windows takes several at once and splits them with conditional aggregates in
one statement (the digest compares a window with the one before it at the cost of one
scan). What each figure means:

- **customer-made event**: any event except those the scheduled automations write
  (`AUTOMATION_EVENTS`: expiry notices, churn and lead checks, tier moves, birthdays and
  anniversaries). Only customer-made events are activity.
- **active member**: a customer whose stage is `member` now with a customer-made event in
  the window.
- **new member**: a customer whose stage is `member` now and who joined in the window. The
  join date is the profile's membership attribute (`member_since` unless the programme's
  tier policy names another) when it holds a date `YYYY-MM-DD`, else the day the profile
  was created; a member joined in the window when that UTC day is after `start`'s UTC day
  and not after `end`'s (the day is the attribute's grain).
- **buyer / repeat buyer**: a customer (any stage) with one / two or more purchase events
  in the window; **repurchase rate** = repeat buyers / buyers.
- **revenue**: the purchase events' amounts in the window less the refund events' amounts
  in the window (net sales, as money moved in the window).
- **points issued / redeemed / expired / clawed back**: the ledger's entries of the kinds
  `rules.ledger.KIND_FIGURES` maps to each figure, in the window, as positive numbers
  (redeemed is net of reversals; operator adjustments are none of them).
- **points liability** at a time: what live lots still hold then (`store.points.live_lot`:
  lots past their date are not owed, whether or not the expiry run has zeroed them).
- **journey conversion**: the journey stats' one definition (`store.journey_stats.
  goal_conversions`): an enrollment entered in the window converted when its customer had
  the version's goal event within the goal's window after entering (up to the window's
  end), whatever the enrollment's state. Holdout enrollments are counted apart.

The review's other figures (average order value, redemption rate, churn rate, e-mail open
rate) are defined at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Connection, and_, case, exists, func, or_, select

from crmflow.contracts.kpi import KpiRequest, KpiSnapshot
from journeys.models import HOLDOUT, Journey
from rules.ledger import EARNED_KINDS, KIND_FIGURES
from rules.models import Program
from rules.pack import AUTOMATION_EVENTS  # the one list; re-exported for readers of figures
from store.journey_stats import goal_conversions
from store.models import (
    CustomerRow,
    DeliveryRow,
    EnrollmentRow,
    EventRow,
    FollowUpTaskRow,
    JourneyCommandRow,
    JourneyVersionRow,
    PointsLedgerRow,
    PointsLotRow,
    TagRow,
    TierHistoryRow,
)
from store.points import live_lot

MEMBER = "member"
MEMBER_SINCE = "member_since"
POINT_FIGURES: tuple[str, ...] = tuple(dict.fromkeys(KIND_FIGURES.values()))


@dataclass(frozen=True)
class Window:
    """`(start, end]`, aware datetimes."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a window's bounds must be timezone-aware")
        if self.end < self.start:
            raise ValueError("a window cannot end before it starts")

    @classmethod
    def days_before(cls, end: datetime, days: int) -> Window:
        return cls(end - timedelta(days=days), end)

    def before(self) -> Window:
        """The window of the same length just before this one."""
        return Window(self.start - (self.end - self.start), self.start)

    def holds(self, column: Any) -> ColumnElement[bool]:
        return and_(column > self.start, column <= self.end)


@dataclass(frozen=True)
class Names:
    """What the programme calls the events and fields the figures read."""

    purchase: str = "purchase"
    refund: str = "refund"
    amount: str = "amount"
    member_since: str = MEMBER_SINCE

    @classmethod
    def of(cls, program: Program | None) -> Names:
        if program is None:
            return cls()
        return cls(
            purchase=program.purchase_event,
            refund=program.refund_event,
            amount=program.spend_property,
            member_since=str(getattr(program.tier_policy.downgrade, "attribute", MEMBER_SINCE)),
        )


DEFAULT = Names()


def _int(v: Any) -> int:
    return int(v or 0)


def _money(v: Any) -> float:
    # Numeric(14, 2) is exact in the database; a float sum's noise (SQLite) is rounded off
    return float(round(Decimal(str(v or 0)), 2))


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _any(column: Any, windows: Sequence[Window]) -> ColumnElement[bool]:
    """In one of the windows (the WHERE of a statement that splits them)."""
    return or_(*(w.holds(column) for w in windows))


def _count_if(cond: ColumnElement[bool]) -> Any:
    return func.sum(case((cond, 1), else_=0))


def customer_made(event: Any = EventRow) -> ColumnElement[bool]:
    """SQL: the event (an `EventRow`, or its table's columns) was made by a customer, not
    by a scheduled automation."""
    return event.type.not_in(AUTOMATION_EVENTS)


# --------------------------------------------------------------------------- members


def members_total(conn: Connection) -> int:
    return _int(
        conn.execute(select(func.count()).where(CustomerRow.lifecycle_stage == MEMBER)).scalar_one()
    )


def active(conn: Connection, windows: Sequence[Window], *, members_only: bool = True) -> list[int]:
    """Active members (or, `members_only=False`, customers of any stage) per window."""
    e = EventRow
    stmt = select(
        *(func.count(func.distinct(case((w.holds(e.occurred_at), e.customer_id)))) for w in windows)
    ).where(customer_made(e), _any(e.occurred_at, windows))
    if members_only:
        stmt = stmt.join(CustomerRow, CustomerRow.customer_id == e.customer_id).where(
            CustomerRow.lifecycle_stage == MEMBER
        )
    return [_int(v) for v in conn.execute(stmt).one()]


def _is_day(text: Any) -> ColumnElement[bool]:
    return and_(
        func.length(text) == 10, func.substr(text, 5, 1) == "-", func.substr(text, 8, 1) == "-"
    )


def _utc_day(conn: Connection, column: Any) -> Any:
    """`YYYY-MM-DD` of a UTC timestamp column, as the dialect writes it."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.date(column)  # SQLite stores naive UTC text


def join_day(conn: Connection, names: Names = DEFAULT) -> Any:
    """SQL: the day a customer joined (`YYYY-MM-DD`): the membership attribute when it holds
    a date, else the day the profile was created."""
    c = CustomerRow
    attr = c.attributes[names.member_since].as_string()
    return case((_is_day(attr), attr), else_=_utc_day(conn, c.created_at))


def new_members(conn: Connection, windows: Sequence[Window], names: Names = DEFAULT) -> list[int]:
    """Members who joined in each window (by their join day, see the module's doc)."""
    day = join_day(conn, names)

    def holds(w: Window) -> ColumnElement[bool]:
        first, last = w.start.astimezone(UTC).date(), w.end.astimezone(UTC).date()
        return and_(day > first.isoformat(), day <= last.isoformat())

    row = conn.execute(
        select(*(_count_if(holds(w)) for w in windows)).where(
            CustomerRow.lifecycle_stage == MEMBER, or_(*(holds(w) for w in windows))
        )
    ).one()
    return [_int(v) for v in row]


# --------------------------------------------------------------------------- purchases


@dataclass
class Buyers:
    buyers: int = 0
    repeat: int = 0

    @property
    def repurchase_rate(self) -> float | None:
        return _ratio(self.repeat, self.buyers)


def buyers(conn: Connection, windows: Sequence[Window], names: Names = DEFAULT) -> list[Buyers]:
    """Buyers and repeat buyers per window."""
    e = EventRow
    per_customer = (
        select(*(_count_if(w.holds(e.occurred_at)).label(f"n{i}") for i, w in enumerate(windows)))
        .where(e.type == names.purchase, _any(e.occurred_at, windows))
        .group_by(e.customer_id)
        .subquery()
    )
    cols = [per_customer.c[f"n{i}"] for i in range(len(windows))]
    row = conn.execute(
        select(*(x for n in cols for x in (_count_if(n >= 1), _count_if(n >= 2))))
    ).one()
    return [Buyers(_int(row[2 * i]), _int(row[2 * i + 1])) for i in range(len(windows))]


def revenue(conn: Connection, windows: Sequence[Window], names: Names = DEFAULT) -> list[float]:
    """Net revenue per window: purchases' amounts less refunds' amounts."""
    e = EventRow
    amount = e.properties[names.amount].as_float()
    signed = case((e.type == names.refund, -amount), else_=amount)
    row = conn.execute(
        select(*(func.sum(case((w.holds(e.occurred_at), signed))) for w in windows)).where(
            e.type.in_([names.purchase, names.refund]), _any(e.occurred_at, windows)
        )
    ).one()
    return [_money(v) for v in row]


# --------------------------------------------------------------------------- points


def points(conn: Connection, windows: Sequence[Window]) -> list[dict[str, float]]:
    """Per window, each points figure (`POINT_FIGURES`) as a positive number."""
    p = PointsLedgerRow
    size = case((p.kind.in_(EARNED_KINDS), p.amount), else_=-p.amount)
    rows = conn.execute(
        select(p.kind, *(func.sum(case((w.holds(p.at), size), else_=0)) for w in windows))
        .where(p.kind.in_(KIND_FIGURES), _any(p.at, windows))
        .group_by(p.kind)
    ).all()
    out = [dict.fromkeys(POINT_FIGURES, 0.0) for _ in windows]
    for kind, *sums in rows:
        for figures, v in zip(out, sums, strict=True):
            figures[KIND_FIGURES[kind]] = _money(figures[KIND_FIGURES[kind]] + _money(v))
    return out


def points_liability(conn: Connection, at: datetime) -> float:
    """What live lots hold at `at`: the points owed to members."""
    lot = PointsLotRow
    total = conn.execute(select(func.sum(lot.remaining)).where(live_lot(lot, at))).scalar_one()
    return _money(total)


# --------------------------------------------------------------------------- tiers


def tier_distribution(conn: Connection) -> dict[str, int]:
    """Customers per tier now, largest first (then by name)."""
    c = CustomerRow
    rows = conn.execute(
        select(c.tier, func.count()).where(c.tier.is_not(None)).group_by(c.tier)
    ).all()
    return {str(t): int(n) for t, n in sorted(rows, key=lambda r: (-r[1], r[0]))}


def tier_movement(conn: Connection, w: Window) -> list[tuple[str | None, str, int]]:
    """Tier changes in the window per (from, to), most frequent first."""
    h = TierHistoryRow
    rows = conn.execute(
        select(h.from_tier, h.to_tier, func.count())
        .where(w.holds(h.changed_at))
        .group_by(h.from_tier, h.to_tier)
    ).all()
    moves = [(f, str(t), int(n)) for f, t, n in rows]
    return sorted(moves, key=lambda m: (-m[2], m[0] or "", m[1]))


# --------------------------------------------------------------------------- journeys


@dataclass
class JourneyFigures:
    """A journey's enrollments entered in a window and their goal conversions; the holdout
    apart."""

    journey: str
    enrolled: int = 0
    converted: int = 0
    held_out: int = 0
    held_out_converted: int = 0
    versions: list[str] = field(default_factory=list)

    @property
    def conversion_rate(self) -> float | None:
        return _ratio(self.converted, self.enrolled)


def _goals(conn: Connection, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The goal of each (journey, version) deployed (None: no goal, or not deployed)."""
    goals: dict[tuple[str, str], Any] = dict.fromkeys(pairs)
    v = JourneyVersionRow
    for journey, version, definition in conn.execute(
        select(v.journey, v.version, v.definition).order_by(v.id)
    ):
        if (journey, version) in goals:
            try:
                goals[(journey, version)] = Journey.model_validate(definition).goal
            except ValidationError:
                goals[(journey, version)] = None
    return goals


def journey_conversions(conn: Connection, w: Window | None = None) -> dict[str, JourneyFigures]:
    """Per journey (by name), the enrollments entered in `w` (every enrollment when None)
    and their conversions, by the journey stats' definition."""
    e = EnrollmentRow
    stmt = select(e.journey, e.version).distinct()
    if w is not None:
        stmt = stmt.where(w.holds(e.entered_at))
    pairs = {(j, v) for j, v in conn.execute(stmt)}
    goals = _goals(conn, pairs)
    out: dict[str, JourneyFigures] = {}
    for journey, version in sorted(pairs):
        entered = (w.start, w.end) if w is not None else None
        groups = goal_conversions(conn, journey, version, goals[(journey, version)], entered)
        f = out.setdefault(journey, JourneyFigures(journey))
        f.versions.append(version)
        for variant, (n, k) in groups.items():
            if variant == HOLDOUT:
                f.held_out += n
                f.held_out_converted += k
            else:
                f.enrolled += n
                f.converted += k
    return out


def journey_conversion_rate(conn: Connection, w: Window) -> float | None:
    """Every journey's conversions over its enrollments (the holdout left out), in `w`."""
    figures = journey_conversions(conn, w).values()
    return _ratio(sum(f.converted for f in figures), sum(f.enrolled for f in figures))


# --------------------------------------------------------------------------- the review's


def average_order_value(conn: Connection, w: Window, names: Names = DEFAULT) -> float | None:
    """The mean amount of the window's purchases."""
    e = EventRow
    amount = e.properties[names.amount].as_float()
    n, total = conn.execute(
        select(func.count(amount), func.sum(amount)).where(
            e.type == names.purchase, w.holds(e.occurred_at)
        )
    ).one()
    return _ratio(_money(total), float(n or 0))


def redemption_rate(conn: Connection, w: Window) -> float | None:
    """Points redeemed / points issued in the window."""
    (p,) = points(conn, [w])
    return _ratio(p["points_redeemed"], p["points_issued"])


def churn_rate(conn: Connection, w: Window, names: Names = DEFAULT) -> float | None:
    """Buyers of the window before `w` who bought nothing in `w` / those buyers."""
    e = EventRow
    before = w.before()
    earlier = (
        select(e.customer_id)
        .where(e.type == names.purchase, before.holds(e.occurred_at))
        .group_by(e.customer_id)
        .subquery()
    )
    later = EventRow.__table__.alias("later")
    came_back = exists().where(
        later.c.customer_id == earlier.c.customer_id,
        later.c.type == names.purchase,
        w.holds(later.c.occurred_at),
    )
    total, lost = conn.execute(select(func.count(), _count_if(~came_back))).one()
    return _ratio(float(_int(lost)), float(_int(total)))


def email_open_rate(conn: Connection, w: Window) -> float | None:
    """`message_opened` events / e-mails sent, in the window."""
    d = DeliveryRow
    sent_at = func.coalesce(d.sent_at, d.created_at)
    sent = conn.execute(
        select(func.count()).where(d.channel == "email", d.status == "sent", w.holds(sent_at))
    ).scalar_one()
    opened = conn.execute(
        select(func.count()).where(EventRow.type == "message_opened", w.holds(EventRow.occurred_at))
    ).scalar_one()
    return _ratio(float(opened), float(sent))


# --------------------------------------------------------------------------- the snapshot


def kpi_snapshot(conn: Connection, req: KpiRequest) -> KpiSnapshot:
    """The KPI snapshot workflow's figures: the store at a glance, the window's activity
    by the definitions above."""
    w = Window.days_before(req.as_of, req.window_days)
    by_stage = dict(
        conn.execute(
            select(CustomerRow.lifecycle_stage, func.count()).group_by(CustomerRow.lifecycle_stage)
        ).all()
    )
    consent: dict[str, int] = {}
    for (doc,) in conn.execute(select(CustomerRow.consent).where(CustomerRow.consent.is_not(None))):
        for channel, given in (doc or {}).items():
            if given:
                consent[channel] = consent.get(channel, 0) + 1
    by_type = dict(conn.execute(select(EventRow.type, func.count()).group_by(EventRow.type)).all())
    (active_customers,) = active(conn, [w], members_only=False)
    (b,) = buyers(conn, [w])
    (net,) = revenue(conn, [w])
    (figures,) = points(conn, [w])
    n = func.count().label("n")
    tags = {
        tag: count
        for tag, count in conn.execute(
            select(TagRow.tag, n).group_by(TagRow.tag).order_by(n.desc(), TagRow.tag).limit(10)
        )
    }
    open_tasks = conn.execute(
        select(func.count()).where(FollowUpTaskRow.status == "open")
    ).scalar_one()
    pending = conn.execute(
        select(func.count()).where(JourneyCommandRow.dispatched_at.is_(None))
    ).scalar_one()
    return KpiSnapshot(
        as_of=req.as_of,
        window_days=req.window_days,
        customers=sum(by_stage.values()),
        by_stage=by_stage,
        consent=consent,
        events=sum(by_type.values()),
        events_by_type=by_type,
        active_customers=active_customers,
        buyers=b.buyers,
        repeat_buyers=b.repeat,
        revenue=net,
        tiers=tier_distribution(conn),
        points_issued=figures["points_issued"],
        points_outstanding=points_liability(conn, req.as_of),
        tags=tags,
        open_tasks=open_tasks,
        journey_commands_pending=pending,
    )
