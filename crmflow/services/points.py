"""A member's points statement: totals, lots and ledger, read as of a moment (default now).

A lot's status is read from the clock, not from the nightly expiry: `active` while it has
points left and its date has not passed, `expired` once the date has passed with points left
(whether or not the nightly run has written its `expire` entry yet), `spent` when nothing is
left. The totals are the 360 view's (`crmflow.services.customers`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, func, select

from crmflow.domain import PointsLotView
from crmflow.services.errors import NotFound
from crmflow.services.runtime import Runtime
from store.db import utcnow
from store.models import CustomerRow, PointsLedgerRow, PointsLotRow
from store.points import live_lot
from store.sql import table_of

LotStatus = Literal["active", "expired", "spent"]
MAX_LEDGER = 1000


class PointsTotals(BaseModel):
    balance: float = Field(description="Points left in lots that have not expired")
    earned: float
    spent: float = Field(description="Debited (redeemed or clawed back)")
    expired: float
    by_kind: dict[str, float]


class LotLine(PointsLotView):
    """A lot as the profile shows it, with its status and where it came from."""

    status: LotStatus
    source: str | None = Field(None, description="The rule (or journey) that awarded it")
    event_id: str | None = None


class LedgerLine(BaseModel):
    at: datetime
    kind: str
    amount: float
    event_id: str | None = None
    reason: str | None = None


class PointsStatement(BaseModel):
    customer_id: str
    as_of: datetime
    totals: PointsTotals
    lots: list[LotLine] = Field(description="Every lot, the newest first")
    ledger: list[LedgerLine] = Field(description="The newest entries first")


def points_totals(conn: Connection, customer_id: str, at: datetime) -> PointsTotals:
    """Balance as of `at` (live lots) and the ledger's sums by kind."""
    led = table_of(PointsLedgerRow).c
    by_kind = {
        k: float(v or 0)
        for k, v in conn.execute(
            select(led.kind, func.sum(led.amount))
            .where(led.customer_id == customer_id)
            .group_by(led.kind)
        )
    }
    lot = table_of(PointsLotRow).c
    balance = conn.execute(
        select(func.coalesce(func.sum(lot.remaining), 0)).where(
            lot.customer_id == customer_id, live_lot(lot, at)
        )
    ).scalar_one()
    return PointsTotals(
        balance=float(Decimal(balance)),
        earned=by_kind.get("earn", 0.0),
        spent=-sum(v for k, v in by_kind.items() if k not in ("earn", "expire") and v < 0),
        expired=abs(by_kind.get("expire", 0.0)),  # never "-0"
        by_kind=by_kind,
    )


def _status(remaining: Decimal, expires_at: datetime | None, at: datetime) -> LotStatus:
    if remaining <= 0:
        return "spent"
    return "expired" if expires_at is not None and expires_at <= at else "active"


def statement(
    rt: Runtime, customer_id: str, *, ledger: int = 50, at: datetime | None = None
) -> PointsStatement:
    """The member's points statement as of `at` (default now), with the newest `ledger`
    entries; `NotFound` for an unknown id."""
    at = at or utcnow()
    ledger = max(0, min(ledger, MAX_LEDGER))
    with rt.engine.connect() as conn:
        known = conn.execute(
            select(CustomerRow.customer_id).where(CustomerRow.customer_id == customer_id)
        ).first()
        if known is None:
            raise NotFound(f"no customer with id {customer_id!r}")
        lot = table_of(PointsLotRow).c
        lots = [
            LotLine(
                earned=float(r.earned),
                remaining=float(r.remaining),
                earned_at=r.earned_at,
                expires_at=r.expires_at,
                status=_status(r.remaining, r.expires_at, at),
                source=r.source,
                event_id=r.event_id,
            )
            for r in conn.execute(
                select(
                    lot.earned,
                    lot.remaining,
                    lot.earned_at,
                    lot.expires_at,
                    lot.source,
                    lot.event_id,
                )
                .where(lot.customer_id == customer_id)
                .order_by(lot.earned_at.desc(), lot.id.desc())
            )
        ]
        led = table_of(PointsLedgerRow).c
        lines = [
            LedgerLine(
                at=r.at,
                kind=r.kind,
                amount=float(r.amount),
                event_id=r.event_id,
                reason=r.reason,
            )
            for r in conn.execute(
                select(led.at, led.kind, led.amount, led.event_id, led.reason)
                .where(led.customer_id == customer_id)
                .order_by(led.at.desc(), led.id.desc())
                .limit(ledger)
            )
        ]
        totals = points_totals(conn, customer_id, at)
    return PointsStatement(
        customer_id=customer_id, as_of=at, totals=totals, lots=lots, ledger=lines
    )
