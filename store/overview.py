"""The console overview's figures and the automation runs it lists, counted by the database:
one grouped statement per figure, whatever the number of customers, events or runs.

The figures that are defined elsewhere are not defined again here: members by tier is
`store.kpi.tier_distribution`, a live lot is `store.points.live_lot` (the liability of
`store.kpi`), a customer-made event is `store.kpi.customer_made`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, exists, func, or_, select
from sqlalchemy.orm import aliased

from store.kpi import customer_made
from store.models import AutomationRunRow, EventRow, PointsLotRow
from store.points import live_lot


def _points(v: Any) -> float:
    # Numeric(14, 2): exact in the database; round off a float sum's noise on SQLite
    return float(round(Decimal(str(v or 0)), 2))


def points_outlook(conn: Connection, at: datetime, days: int) -> tuple[float, float, int]:
    """The points liability at `at` (what live lots still hold, as `store.kpi` counts it),
    the part of it that expires within `days` after `at`, and how many members hold that
    part — one pass over the lots."""
    lot = PointsLotRow
    soon = and_(lot.expires_at.is_not(None), lot.expires_at <= at + timedelta(days=days))
    liability, expiring, members = conn.execute(
        select(
            func.sum(lot.remaining),
            func.sum(case((soon, lot.remaining), else_=0)),
            func.count(func.distinct(case((soon, lot.customer_id)))),
        ).where(live_lot(lot, at))
    ).one()
    return _points(liability), _points(expiring), int(members or 0)


def _day(conn: Connection, column: Any) -> Any:
    """The UTC calendar day of a UTC timestamp column, as the dialect writes it."""
    if conn.dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)  # SQLite stores naive UTC text: its date() is the UTC day


def events_per_day(conn: Connection, first: date, last: date) -> dict[date, int]:
    """Customer-made events per UTC day from `first` to `last` (inclusive); days without
    events are left out. Automation events (expiry notices, churn and lead checks, …) are no
    customer's activity and are not counted."""
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    e = EventRow
    day = _day(conn, e.occurred_at).label("day")
    rows = conn.execute(
        select(day, func.count())
        .where(
            e.occurred_at >= start,
            e.occurred_at < end,
            customer_made(e),
        )
        .group_by(day)
    ).all()
    out: dict[date, int] = {}
    for d, n in rows:
        out[d if isinstance(d, date) else date.fromisoformat(str(d))] = int(n)
    return out


# --------------------------------------------------------------------------- automation runs


def _newest_attempt() -> Any:
    """SQL: no later attempt of the same schedule and run date exists (a failed attempt that
    was run again and completed no longer needs anyone)."""
    later = aliased(AutomationRunRow)
    r = AutomationRunRow
    return ~exists().where(
        later.schedule == r.schedule, later.run_date == r.run_date, later.attempt > r.attempt
    )


def _troubled() -> Any:
    """SQL: the attempt failed, or it runs again after an earlier attempt of its date."""
    r = AutomationRunRow
    return or_(r.status == "failed", and_(r.status == "running", r.attempt > 1))


def troubled_runs(conn: Connection, since: datetime, limit: int) -> tuple[int, int, list[Any]]:
    """Automation runs started since `since` whose newest attempt failed or is a retry still
    running: (how many failed, how many are retrying, the newest `limit` of them)."""
    r = AutomationRunRow
    where = [r.started_at >= since, _troubled(), _newest_attempt()]
    failed, retrying = conn.execute(
        select(
            func.sum(case((r.status == "failed", 1), else_=0)),
            func.sum(case((r.status == "running", 1), else_=0)),
        ).where(*where)
    ).one()
    rows = conn.execute(
        select(r).where(*where).order_by(r.started_at.desc(), r.id.desc()).limit(limit)
    ).all()
    return int(failed or 0), int(retrying or 0), list(rows)


def runs_page(
    conn: Connection, schedule: str | None, limit: int, offset: int = 0
) -> tuple[int, list[Any]]:
    """Automation runs (of one schedule, or all), newest first as `recent_runs` orders them:
    how many there are, and `limit` of them after `offset`."""
    r = AutomationRunRow
    where = [r.schedule == schedule] if schedule is not None else []
    total = conn.execute(select(func.count()).select_from(r).where(*where)).scalar_one()
    rows = conn.execute(
        select(r)
        .where(*where)
        .order_by(r.started_at.desc(), r.attempt.desc(), r.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return int(total), list(rows)
