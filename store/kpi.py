"""Programme figures computed set-based in SQL (one grouped query per figure)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection, case, func, select

from crmflow.contracts.kpi import KpiRequest, KpiSnapshot
from rules.ledger import EARNED_KINDS
from store.models import (
    CustomerRow,
    EventRow,
    FollowUpTaskRow,
    JourneyCommandRow,
    PointsLedgerRow,
    PointsLotRow,
    TagRow,
)
from store.points import live_lot


def kpi_snapshot(conn: Connection, req: KpiRequest) -> KpiSnapshot:
    since = req.as_of - timedelta(days=req.window_days)
    in_window = (EventRow.occurred_at > since) & (EventRow.occurred_at <= req.as_of)
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
    active = conn.execute(
        select(func.count(func.distinct(EventRow.customer_id))).where(in_window)
    ).scalar_one()
    purchases = (
        select(EventRow.customer_id, func.count().label("n"))
        .where(in_window, EventRow.type == "purchase")
        .group_by(EventRow.customer_id)
        .subquery()
    )
    buyers, repeat = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((purchases.c.n >= 2, 1), else_=0)), 0))
    ).one()
    revenue = conn.execute(
        select(func.coalesce(func.sum(EventRow.properties["amount"].as_float()), 0.0)).where(
            in_window, EventRow.type == "purchase"
        )
    ).scalar_one()
    tiers = dict(
        conn.execute(
            select(CustomerRow.tier, func.count())
            .where(CustomerRow.tier.is_not(None))
            .group_by(CustomerRow.tier)
        ).all()
    )
    issued = conn.execute(
        select(func.coalesce(func.sum(PointsLedgerRow.amount), 0)).where(
            PointsLedgerRow.kind.in_(EARNED_KINDS),
            PointsLedgerRow.at > since,
            PointsLedgerRow.at <= req.as_of,
        )
    ).scalar_one()
    # the liability as of the snapshot: lots past their date are not owed, expiry run or not
    outstanding = conn.execute(
        select(func.coalesce(func.sum(PointsLotRow.remaining), 0)).where(
            live_lot(PointsLotRow, req.as_of)
        )
    ).scalar_one()
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
        active_customers=active,
        buyers=buyers,
        repeat_buyers=int(repeat),
        revenue=round(float(revenue), 2),
        tiers=tiers,
        points_issued=float(issued),
        points_outstanding=float(outstanding),
        tags=tags,
        open_tasks=open_tasks,
        journey_commands_pending=pending,
    )
