"""Read one customer's profile with its tags, points, tier history and event counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from crmflow.domain import (
    AuditView,
    CouponView,
    CustomerProfile,
    PointsLotView,
    TagView,
    TierChangeView,
)
from store.db import utcnow
from store.models import (
    AuditRow,
    CouponRow,
    CustomerRow,
    EventRow,
    PointsLotRow,
    TagRow,
    TierHistoryRow,
)
from store.points import live_lot


def load_profile(
    conn: Connection,
    customer_id: str,
    lots: int = 5,
    history_limit: int = 50,
    at: datetime | None = None,
) -> CustomerProfile | None:
    c = conn.execute(
        select(CustomerRow.__table__).where(CustomerRow.customer_id == customer_id)
    ).first()
    if c is None:
        return None
    moment = at or utcnow()

    def waiting(lot: Any) -> bool:  # still inside its return window
        return lot.available_at is not None and lot.available_at > moment

    tags = conn.execute(
        select(TagRow.tag, TagRow.source, TagRow.expires_at)
        .where(TagRow.customer_id == customer_id)
        .order_by(TagRow.tag)
    ).all()
    open_lots = conn.execute(
        select(
            PointsLotRow.earned,
            PointsLotRow.remaining,
            PointsLotRow.earned_at,
            PointsLotRow.expires_at,
            PointsLotRow.available_at,
        )
        # as of now: a lot past its date no longer counts, nightly expiry run or not
        .where(PointsLotRow.customer_id == customer_id, live_lot(PointsLotRow, moment))
        .order_by(PointsLotRow.expires_at.is_(None), PointsLotRow.expires_at, PointsLotRow.id)
    ).all()
    history = conn.execute(
        select(
            TierHistoryRow.from_tier,
            TierHistoryRow.to_tier,
            TierHistoryRow.changed_at,
            TierHistoryRow.reason,
            TierHistoryRow.event_id,
        )
        .where(TierHistoryRow.customer_id == customer_id)
        .order_by(TierHistoryRow.changed_at, TierHistoryRow.id)
    ).all()
    by_type = dict(
        conn.execute(
            select(EventRow.type, func.count())
            .where(EventRow.customer_id == customer_id)
            .group_by(EventRow.type)
        ).all()
    )
    last = conn.execute(
        select(func.max(EventRow.occurred_at)).where(EventRow.customer_id == customer_id)
    ).scalar_one()
    audit = conn.execute(
        select(
            AuditRow.at,
            AuditRow.event_id,
            AuditRow.rule,
            AuditRow.rules_version,
            AuditRow.kind,
            AuditRow.detail,
            AuditRow.skipped,
        )
        .where(AuditRow.customer_id == customer_id)
        .order_by(AuditRow.at.desc(), AuditRow.id.desc())
        .limit(history_limit)
    ).all()
    coupons = conn.execute(
        select(CouponRow.code, CouponRow.value, CouponRow.expires_at, CouponRow.redeemed_at)
        .where(CouponRow.customer_id == customer_id)
        .order_by(CouponRow.expires_at)
    ).all()
    return CustomerProfile(
        customer_id=c.customer_id,
        name=c.name,
        email=c.email,
        phone=c.phone,
        timezone=c.timezone,
        locale=c.locale,
        consent=c.consent or {},
        lifecycle_stage=c.lifecycle_stage,
        owner=c.owner,
        attributes=c.attributes or {},
        tier=c.tier,
        is_stub=c.is_stub,
        created_at=c.created_at,
        updated_at=c.updated_at,
        tags=[TagView(tag=t, source=s, expires_at=e) for t, s, e in tags],
        points_balance=float(sum((lot.remaining for lot in open_lots if not waiting(lot)), 0)),
        points_pending=float(sum((lot.remaining for lot in open_lots if waiting(lot)), 0)),
        points_debt=float(c.points_debt or 0),
        expiring_lots=[
            PointsLotView(
                earned=float(e), remaining=float(r), earned_at=at, expires_at=exp, available_at=av
            )
            for e, r, at, exp, av in open_lots[:lots]
        ],
        tier_history=[
            TierChangeView(from_tier=f, to_tier=t, changed_at=at, reason=r, event_id=ev)
            for f, t, at, r, ev in history
        ],
        events=sum(by_type.values()),
        last_event_at=last,
        events_by_type=by_type,
        coupons=[
            CouponView(code=c, value=float(v), expires_at=e, redeemed_at=r)
            for c, v, e, r in coupons
        ],
        history=[AuditView(**row._mapping) for row in audit],
    )
