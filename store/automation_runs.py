"""The `automation_runs` table: one row per attempt of a schedule at a run date, holding the
step and keyset cursor of the last committed chunk (so a crashed attempt resumes there) and
the counts of what the attempt changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from crmflow.contracts.automations import RunStart, add_counts
from store.db import utcnow
from store.models import AutomationRunRow
from store.sql import table_of

RUNS = table_of(AutomationRunRow)


def begin_run(
    conn: Connection,
    *,
    schedule: str,
    automation: str,
    run_date: str,
    as_of: datetime,
    workflow_id: str,
) -> RunStart:
    """The attempt to work on: the unfinished one of this date (resumed where it got to),
    or a new one after a finished attempt. Idempotent for a workflow retrying the call."""
    r = RUNS.c
    latest = conn.execute(
        select(r.id, r.attempt, r.status, r.step, r.workflow_id)
        .where(r.schedule == schedule, r.run_date == run_date)
        .order_by(r.attempt.desc())
        .limit(1)
    ).first()
    now = utcnow()
    if latest is not None and (latest.status != "completed" or latest.workflow_id == workflow_id):
        conn.execute(
            update(RUNS)
            .where(r.id == latest.id)
            .values(status="running", workflow_id=workflow_id, error=None, updated_at=now)
        )
        return RunStart(
            run_id=latest.id,
            run_date=run_date,
            attempt=latest.attempt,
            step=latest.step,
            resumed=latest.step is not None,
        )
    attempt = 1 if latest is None else latest.attempt + 1
    run_id = conn.execute(
        RUNS.insert()
        .values(
            schedule=schedule,
            automation=automation,
            run_date=run_date,
            as_of=as_of,
            status="running",
            counts={},
            attempt=attempt,
            workflow_id=workflow_id,
            started_at=now,
            updated_at=now,
        )
        .returning(r.id)
    ).scalar_one()
    return RunStart(run_id=run_id, run_date=run_date, attempt=attempt)


def lock_run(conn: Connection, run_id: int) -> Any:
    """The run's row, locked for this transaction on PostgreSQL (two workers on one run
    take turns chunk by chunk; SQLite serialises writers anyway)."""
    stmt = select(RUNS).where(RUNS.c.id == run_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise KeyError(f"no automation run {run_id}")
    return row


def record_chunk(
    conn: Connection, run: Any, step: str, cursor: str | None, counts: dict[str, float]
) -> None:
    """Store a committed chunk's position and counts (in the chunk's own transaction)."""
    total = add_counts(dict(run.counts or {}), counts)
    conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run.id)
        .values(step=step, cursor=cursor, counts=total, updated_at=utcnow())
    )


def finish_run(conn: Connection, run_id: int, error: str | None = None) -> Any:
    now = utcnow()
    conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id)
        .values(
            status="failed" if error else "completed",
            error=error,
            finished_at=now,
            updated_at=now,
        )
    )
    return conn.execute(select(RUNS).where(RUNS.c.id == run_id)).one()


def recent_runs(conn: Connection, schedule: str, limit: int = 20) -> list[Any]:
    r = RUNS.c
    return list(
        conn.execute(
            select(RUNS)
            .where(r.schedule == schedule)
            .order_by(r.started_at.desc(), r.attempt.desc())
            .limit(limit)
        ).all()
    )


def last_runs(conn: Connection) -> dict[str, Any]:
    """Each schedule's latest attempt."""
    newest = select(func.max(RUNS.c.id)).group_by(RUNS.c.schedule)
    return {row.schedule: row for row in conn.execute(select(RUNS).where(RUNS.c.id.in_(newest)))}


def previous_as_of(conn: Connection, schedule: str, run_date: str) -> datetime | None:
    """The time the schedule's last completed run before `run_date` ran as of (None: it has
    none). A date-based automation covers every day after it, so a night that did not run
    (the server down longer than the catch-up window, a failed run) is not skipped."""
    r = RUNS.c
    return conn.execute(
        select(func.max(r.as_of)).where(
            r.schedule == schedule, r.status == "completed", r.run_date < run_date
        )
    ).scalar()
