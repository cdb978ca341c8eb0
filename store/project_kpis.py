"""The rollout KPI review's figures, read-only and set-based: each metric over one window.

`measure(conn, metrics, start, end)` returns metric -> value over [start, end) (aware
datetimes). A metric whose denominator is empty in the window (no buyers, nothing issued, no
e-mail sent) is left out, so the review says "not measured" instead of judging a 0.

- repurchase_rate: buyers with two or more purchases / buyers (customers with a purchase);
- active_members: customers with a purchase;
- new_members: customers whose first event of any kind falls in the window;
- journey_conversion: customers who were sent a message (`message_deliveries`, status sent)
  and bought at or after their first message in the window / customers sent a message;
- points_issued: points earned (ledger `earn` and `pending`); points_redeemed: points spent on
  rewards, net of reversals (`redeem`, `redeem_reversal`);
  redemption_rate: redeemed / issued;
- average_order_value: mean purchase `amount`;
- churn_rate: customers who bought in the equally long window just before and not in this
  one / customers who bought in the window before;
- email_open_rate: `message_opened` events / e-mails sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, exists, func, select

from rules.ledger import KIND_FIGURES
from store.models import DeliveryRow, EventRow, PointsLedgerRow

Window = tuple[datetime, datetime]


def _in(column: Any, w: Window) -> ColumnElement[bool]:
    return and_(column >= w[0], column < w[1])


def _purchases(w: Window) -> ColumnElement[bool]:
    return and_(EventRow.type == "purchase", _in(EventRow.occurred_at, w))


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def repurchase_rate(conn: Connection, w: Window) -> float | None:
    per = (
        select(EventRow.customer_id, func.count().label("n"))
        .where(_purchases(w))
        .group_by(EventRow.customer_id)
        .subquery()
    )
    buyers, repeat = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((per.c.n >= 2, 1), else_=0)), 0))
    ).one()
    return _ratio(float(repeat), float(buyers))


def active_members(conn: Connection, w: Window) -> float | None:
    n = conn.execute(
        select(func.count(func.distinct(EventRow.customer_id))).where(_purchases(w))
    ).scalar_one()
    return float(n)


def new_members(conn: Connection, w: Window) -> float | None:
    first = (
        select(func.min(EventRow.occurred_at).label("first"))
        .group_by(EventRow.customer_id)
        .subquery()
    )
    n = conn.execute(
        select(func.count()).where(first.c.first >= w[0], first.c.first < w[1])
    ).scalar_one()
    return float(n)


def journey_conversion(conn: Connection, w: Window) -> float | None:
    sent_at = func.coalesce(DeliveryRow.sent_at, DeliveryRow.created_at)
    messaged = (
        select(DeliveryRow.customer_id, func.min(sent_at).label("first"))
        .where(DeliveryRow.status == "sent", _in(sent_at, w))
        .group_by(DeliveryRow.customer_id)
        .subquery()
    )
    bought = exists().where(
        EventRow.customer_id == messaged.c.customer_id,
        EventRow.type == "purchase",
        EventRow.occurred_at >= messaged.c.first,
        EventRow.occurred_at < w[1],
    )
    total, converted = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((bought, 1), else_=0)), 0))
    ).one()
    return _ratio(float(converted), float(total))


def _points(conn: Connection, w: Window, figure: str) -> float:
    """A points figure (`rules.ledger.KIND_FIGURES`) over the window, as a positive number."""
    kinds = [k for k, f in KIND_FIGURES.items() if f == figure]
    total = conn.execute(
        select(func.coalesce(func.sum(PointsLedgerRow.amount), 0)).where(
            PointsLedgerRow.kind.in_(kinds),
            _in(PointsLedgerRow.at, w),
        )
    ).scalar_one()
    return abs(float(total))


def points_issued(conn: Connection, w: Window) -> float | None:
    return _points(conn, w, "points_issued")


def points_redeemed(conn: Connection, w: Window) -> float | None:
    return _points(conn, w, "points_redeemed")


def redemption_rate(conn: Connection, w: Window) -> float | None:
    return _ratio(_points(conn, w, "points_redeemed"), _points(conn, w, "points_issued"))


def average_order_value(conn: Connection, w: Window) -> float | None:
    amount = EventRow.properties["amount"].as_float()
    n, total = conn.execute(
        select(func.count(amount), func.coalesce(func.sum(amount), 0.0)).where(_purchases(w))
    ).one()
    return _ratio(float(total), float(n))


def churn_rate(conn: Connection, w: Window) -> float | None:
    before: Window = (w[0] - (w[1] - w[0]), w[0])
    earlier = (
        select(EventRow.customer_id)
        .where(_purchases(before))
        .group_by(EventRow.customer_id)
        .subquery()
    )
    came_back = exists().where(
        EventRow.customer_id == earlier.c.customer_id,
        _purchases(w),
    )
    total, lost = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((came_back, 0), else_=1)), 0))
    ).one()
    return _ratio(float(lost), float(total))


def email_open_rate(conn: Connection, w: Window) -> float | None:
    sent_at = func.coalesce(DeliveryRow.sent_at, DeliveryRow.created_at)
    sent = conn.execute(
        select(func.count()).where(
            DeliveryRow.channel == "email",
            DeliveryRow.status == "sent",
            _in(sent_at, w),
        )
    ).scalar_one()
    opened = conn.execute(
        select(func.count()).where(
            EventRow.type == "message_opened",
            _in(EventRow.occurred_at, w),
        )
    ).scalar_one()
    return _ratio(float(opened), float(sent))


METRICS: dict[str, Callable[[Connection, Window], float | None]] = {
    "repurchase_rate": repurchase_rate,
    "active_members": active_members,
    "new_members": new_members,
    "journey_conversion": journey_conversion,
    "points_issued": points_issued,
    "points_redeemed": points_redeemed,
    "redemption_rate": redemption_rate,
    "average_order_value": average_order_value,
    "churn_rate": churn_rate,
    "email_open_rate": email_open_rate,
}


def measure(
    conn: Connection, metrics: Iterable[str], start: datetime, end: datetime
) -> dict[str, float]:
    """Each known metric over [start, end); unknown or unmeasurable ones are left out."""
    out: dict[str, float] = {}
    for name in metrics:
        fn = METRICS.get(name)
        if fn is None:
            continue
        value = fn(conn, (start, end))
        if value is not None:
            out[name] = value
    return out
