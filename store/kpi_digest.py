"""The KPI digest's figures, counted by the database (see `automations.digest` for what each
figure means).

Set-based: one statement per figure, whatever the number of customers, on SQLite and
PostgreSQL alike. The windowed figures are counted for the window and the one before it in
the same statement — the rows of both windows are read once, and conditional aggregates
(`SUM(CASE …)`, `COUNT(DISTINCT CASE …)`) split them — so the comparison costs no extra scan.
The window is `(as_of - window_days, as_of]`, the previous one the same length before it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, select

from automations.digest import JourneyConversion, KpiDigest, TierMove
from journeys.models import HOLDOUT
from rules.ledger import EARNED_KINDS, KIND_FIGURES
from store.models import CustomerRow, EnrollmentRow, EventRow, PointsLedgerRow, TierHistoryRow

MEMBER = "member"
PURCHASE = "purchase"
# the ledger kinds the digest reports (the clawbacks are not one of its figures)
LEDGER_KINDS = {k: f for k, f in KIND_FIGURES.items() if f != "points_clawed_back"}


def _int(v: Any) -> int:
    return int(v or 0)


def _float(v: Any) -> float:
    return float(v or 0)


def _within(column: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    """`start < column <= end`."""
    return and_(column > start, column <= end)


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


class _Windows:
    """The window `(since, as_of]` and the one before it `(before, since]`."""

    def __init__(self, as_of: datetime, window_days: int) -> None:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        if window_days < 1:
            raise ValueError("window_days must be at least 1")
        self.as_of = as_of
        self.since = as_of - timedelta(days=window_days)
        self.before = as_of - timedelta(days=2 * window_days)

    def both(self, column: Any) -> ColumnElement[bool]:
        """In either window (the WHERE of a statement that splits them)."""
        return _within(column, self.before, self.as_of)

    def now(self, column: Any) -> ColumnElement[bool]:
        """In the current window, given `both` holds."""
        return column > self.since

    def then(self, column: Any) -> ColumnElement[bool]:
        """In the previous window, given `both` holds."""
        return column <= self.since


def _count_if(cond: ColumnElement[bool]) -> Any:
    return func.sum(case((cond, 1), else_=0))


def members_total(conn: Connection) -> int:
    return _int(
        conn.execute(select(func.count()).where(CustomerRow.lifecycle_stage == MEMBER)).scalar_one()
    )


def active_members(conn: Connection, w: _Windows) -> tuple[int, int]:
    """Members with any event in the window, and in the previous one."""
    e = EventRow
    now, then = conn.execute(
        select(
            func.count(func.distinct(case((w.now(e.occurred_at), e.customer_id)))),
            func.count(func.distinct(case((w.then(e.occurred_at), e.customer_id)))),
        )
        .select_from(e)
        .join(CustomerRow, CustomerRow.customer_id == e.customer_id)
        .where(CustomerRow.lifecycle_stage == MEMBER, w.both(e.occurred_at))
    ).one()
    return _int(now), _int(then)


def new_members(conn: Connection, w: _Windows) -> tuple[int, int]:
    """Customers created in the window (and the previous one) whose stage is member now."""
    c = CustomerRow
    now, then = conn.execute(
        select(_count_if(w.now(c.created_at)), _count_if(w.then(c.created_at))).where(
            c.lifecycle_stage == MEMBER, w.both(c.created_at)
        )
    ).one()
    return _int(now), _int(then)


def buyers(conn: Connection, w: _Windows) -> tuple[tuple[int, int], tuple[int, int]]:
    """(buyers, repeat buyers) of the window, and of the previous one."""
    e = EventRow
    per_customer = (
        select(
            _count_if(w.now(e.occurred_at)).label("now"),
            _count_if(w.then(e.occurred_at)).label("then"),
        )
        .where(e.type == PURCHASE, w.both(e.occurred_at))
        .group_by(e.customer_id)
        .subquery()
    )
    now, then = per_customer.c.now, per_customer.c.then
    row = conn.execute(
        select(
            _count_if(now >= 1),
            _count_if(now >= 2),
            _count_if(then >= 1),
            _count_if(then >= 2),
        )
    ).one()
    return (_int(row[0]), _int(row[1])), (_int(row[2]), _int(row[3]))


def revenue(conn: Connection, w: _Windows) -> tuple[float, float]:
    """The sum of purchase amounts in the window, and in the previous one."""
    e = EventRow
    amount = e.properties["amount"].as_float()
    now, then = conn.execute(
        select(
            func.sum(case((w.now(e.occurred_at), amount))),
            func.sum(case((w.then(e.occurred_at), amount))),
        ).where(e.type == PURCHASE, w.both(e.occurred_at))
    ).one()
    return round(_float(now), 2), round(_float(then), 2)


def points(conn: Connection, w: _Windows) -> tuple[dict[str, float], dict[str, float]]:
    """Points issued, redeemed (net of reversals) and expired in the window and the previous
    one, positive."""
    p = PointsLedgerRow
    size = case((p.kind.in_(EARNED_KINDS), p.amount), else_=-p.amount)
    rows = conn.execute(
        select(
            p.kind,
            func.sum(case((w.now(p.at), size), else_=0)),
            func.sum(case((w.then(p.at), size), else_=0)),
        )
        .where(p.kind.in_(LEDGER_KINDS), w.both(p.at))
        .group_by(p.kind)
    ).all()
    now = dict.fromkeys(LEDGER_KINDS.values(), 0.0)
    then = dict(now)
    for kind, n, t in rows:
        now[LEDGER_KINDS[kind]] += _points(n)
        then[LEDGER_KINDS[kind]] += _points(t)
    return now, then


def _points(v: Any) -> float:
    # Numeric(14, 2): exact in the database; round off a float sum's noise on SQLite
    return float(round(Decimal(str(v or 0)), 2))


def tier_distribution(conn: Connection) -> dict[str, int]:
    """Customers per tier now, largest first (then by name)."""
    c = CustomerRow
    rows = conn.execute(
        select(c.tier, func.count()).where(c.tier.is_not(None)).group_by(c.tier)
    ).all()
    return {str(t): int(n) for t, n in sorted(rows, key=lambda r: (-r[1], r[0]))}


def tier_movement(conn: Connection, w: _Windows) -> list[TierMove]:
    """Tier changes in the window per (from, to), most frequent first."""
    h = TierHistoryRow
    rows = conn.execute(
        select(h.from_tier, h.to_tier, func.count())
        .where(_within(h.changed_at, w.since, w.as_of))
        .group_by(h.from_tier, h.to_tier)
    ).all()
    moves = [TierMove(from_tier=f, to_tier=t, count=int(n)) for f, t, n in rows]
    return sorted(moves, key=lambda m: (-m.count, m.from_tier or "", m.to_tier))


def journey_conversions(
    conn: Connection, w: _Windows
) -> tuple[list[JourneyConversion], dict[str, float]]:
    """Per journey, enrollments entered in the window and those converted; and the previous
    window's totals (`journey_enrolled`, `journey_converted`)."""
    e = EnrollmentRow
    # `variant = 'holdout'` is NULL (not true) for enrollments without a split: they count
    holdout = e.variant == HOLDOUT
    converted = e.status == "converted"
    now, then = w.now(e.entered_at), w.then(e.entered_at)
    rows = conn.execute(
        select(
            e.journey,
            func.sum(case((holdout, 0), (now, 1), else_=0)),
            func.sum(case((holdout, 0), (and_(now, converted), 1), else_=0)),
            _count_if(and_(now, holdout)),
            func.sum(case((holdout, 0), (then, 1), else_=0)),
            func.sum(case((holdout, 0), (and_(then, converted), 1), else_=0)),
        )
        .where(w.both(e.entered_at))
        .group_by(e.journey)
        .order_by(e.journey)
    ).all()
    out = []
    previous = {"journey_enrolled": 0.0, "journey_converted": 0.0}
    for journey, enrolled, conv, held, enrolled_then, conv_then in rows:
        previous["journey_enrolled"] += _int(enrolled_then)
        previous["journey_converted"] += _int(conv_then)
        if not _int(enrolled) and not _int(held):
            continue  # entered only in the previous window
        out.append(
            JourneyConversion(
                journey=journey,
                enrolled=_int(enrolled),
                converted=_int(conv),
                conversion_rate=_ratio(_int(conv), _int(enrolled)),
                held_out=_int(held),
            )
        )
    return out, previous


def digest_figures(conn: Connection, as_of: datetime, window_days: int, run_date: str) -> KpiDigest:
    """The digest for the window `(as_of - window_days, as_of]`, with the previous window's
    figures in `previous`."""
    w = _Windows(as_of, window_days)
    active_now, active_then = active_members(conn, w)
    new_now, new_then = new_members(conn, w)
    (buyers_now, repeat_now), (buyers_then, repeat_then) = buyers(conn, w)
    revenue_now, revenue_then = revenue(conn, w)
    points_now, points_then = points(conn, w)
    journeys, journeys_then = journey_conversions(conn, w)
    previous: dict[str, float] = {
        "active_members": active_then,
        "new_members": new_then,
        "buyers": buyers_then,
        "repeat_buyers": repeat_then,
        "repurchase_rate": _ratio(repeat_then, buyers_then),
        "revenue": revenue_then,
        **points_then,
        **journeys_then,
    }
    return KpiDigest(
        as_of=as_of,
        window_days=window_days,
        run_date=run_date,
        members_total=members_total(conn),
        active_members=active_now,
        new_members=new_now,
        buyers=buyers_now,
        repeat_buyers=repeat_now,
        repurchase_rate=_ratio(repeat_now, buyers_now),
        revenue=revenue_now,
        points_issued=points_now["points_issued"],
        points_redeemed=points_now["points_redeemed"],
        points_expired=points_now["points_expired"],
        tier_distribution=tier_distribution(conn),
        tier_movement=tier_movement(conn, w),
        journey_conversions=journeys,
        previous=previous,
    )
