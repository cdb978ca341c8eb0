"""Journeys in the store: deployed versions and status, enrollments (who is where), the steps
log that stats are counted from, and the delivery ledger that makes a send happen once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.sql.expression import Executable

from store.db import UTCDateTime, utcnow
from store.models import (
    CustomerRow,
    DeliveryRow,
    EnrollmentRow,
    EventRow,
    JourneyRow,
    JourneyStepRow,
    JourneyVersionRow,
    PointsLotRow,
    TagRow,
)
from store.points import live_lot
from store.sql import insert_for, table_of

STATUSES = ("active", "paused", "archived")


def content_version(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@dataclass
class DeployedJourney:
    name: str
    status: str
    version: str
    definition: dict[str, Any]
    deployed_at: datetime


def deploy_journey(
    conn: Connection, name: str, definition: dict[str, Any], source: str, origin: str | None
) -> tuple[str, bool]:
    """Store this version of journey `name` (once) and make it the one new enrollments use;
    an archived journey becomes active again. Returns (version, whether it was new)."""
    version = content_version(source)
    now = utcnow()
    t = table_of(JourneyVersionRow)
    created = (
        conn.execute(
            insert_for(conn, t)
            .on_conflict_do_nothing(index_elements=["journey", "version"])
            .values(
                journey=name,
                version=version,
                definition=definition,
                source=source,
                origin=origin,
                deployed_at=now,
            )
            .returning(t.c.id)
        ).first()
        is not None
    )
    j = table_of(JourneyRow)
    stmt = insert_for(conn, j).values(
        name=name, status="active", active_version=version, updated_at=now
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "active_version": version,
                "updated_at": now,
                # a paused journey stays paused; an archived one comes back
                "status": func.coalesce(func.nullif(j.c.status, "archived"), stmt.excluded.status),
            },
        )
    )
    return version, created


def set_status(conn: Connection, name: str, status: str) -> str | None:
    """Set a journey's status; returns the previous one (None: no such journey)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    before = conn.execute(select(JourneyRow.status).where(JourneyRow.name == name)).scalar()
    if before is not None:
        conn.execute(
            update(JourneyRow)
            .where(JourneyRow.name == name)
            .values(status=status, updated_at=utcnow())
        )
    return before


def deployed(conn: Connection, name: str | None = None) -> list[DeployedJourney]:
    """Deployed journeys (all, or one) with their active version's definition."""
    j, v = JourneyRow, JourneyVersionRow
    stmt = select(j.name, j.status, j.active_version, v.definition, v.deployed_at).join(
        v, (v.journey == j.name) & (v.version == j.active_version)
    )
    if name is not None:
        stmt = stmt.where(j.name == name)
    return [DeployedJourney(*row) for row in conn.execute(stmt.order_by(j.name))]


def deployment_stamp(conn: Connection) -> tuple[Any, ...]:
    """Changes whenever a version is deployed or a journey's status changes."""
    v = conn.execute(select(func.count(), func.max(JourneyVersionRow.id))).one()
    j = conn.execute(select(func.count(), func.max(JourneyRow.updated_at))).one()
    return (*v, *j)


def listening_definitions(conn: Connection) -> list[tuple[str, dict[str, Any]]]:
    """Every deployed version of every journey that is not archived."""
    v, j = JourneyVersionRow, JourneyRow
    rows = conn.execute(
        select(v.journey, v.definition)
        .join(j, j.name == v.journey)
        .where(j.status != "archived")
        .order_by(v.id)
    )
    return [(r.journey, r.definition) for r in rows]


def versions(conn: Connection, name: str) -> list[tuple[str, datetime, str | None]]:
    v = JourneyVersionRow
    return [
        (r.version, r.deployed_at, r.origin)
        for r in conn.execute(
            select(v.version, v.deployed_at, v.origin).where(v.journey == name).order_by(v.id)
        )
    ]


# --------------------------------------------------------------------------- enrollments


@dataclass
class PastEnrollments:
    count: int
    last_entered: datetime | None
    last_finished: datetime | None
    active: list[str]  # workflow ids of running enrollments


def past_enrollments(conn: Connection, journey: str, customer_id: str) -> PastEnrollments:
    e = EnrollmentRow
    rows = conn.execute(
        select(e.workflow_id, e.status, e.entered_at, e.finished_at).where(
            e.journey == journey, e.customer_id == customer_id
        )
    ).all()
    entered = [r.entered_at for r in rows]
    finished = [r.finished_at for r in rows if r.finished_at is not None]
    return PastEnrollments(
        count=len(rows),
        last_entered=max(entered) if entered else None,
        last_finished=max(finished) if finished else None,
        active=[r.workflow_id for r in rows if r.status == "active"],
    )


def past_enrollments_many(
    conn: Connection, journey: str, customer_ids: list[str]
) -> dict[str, PastEnrollments]:
    """`past_enrollments` for many customers in one query (those with none are left out)."""
    e = EnrollmentRow
    rows = conn.execute(
        select(e.customer_id, e.workflow_id, e.status, e.entered_at, e.finished_at).where(
            e.journey == journey, e.customer_id.in_(customer_ids)
        )
    ).all()
    found: dict[str, PastEnrollments] = {}
    for r in rows:
        p = found.setdefault(r.customer_id, PastEnrollments(0, None, None, []))
        finished = p.last_finished
        if r.finished_at is not None and (finished is None or r.finished_at > finished):
            finished = r.finished_at
        entered = r.entered_at if p.last_entered is None else max(p.last_entered, r.entered_at)
        active = [*p.active, r.workflow_id] if r.status == "active" else p.active
        found[r.customer_id] = PastEnrollments(p.count + 1, entered, finished, active)
    return found


def ensure_enrollment(
    conn: Connection,
    *,
    workflow_id: str,
    journey: str,
    version: str,
    customer_id: str,
    entry_no: int,
    entered_at: datetime,
    node: str | None = None,
) -> None:
    conn.execute(
        _prepared(conn, "ensure_enrollment", _ensure_enrollment_stmt),
        {
            "workflow_id": workflow_id,
            "journey": journey,
            "version": version,
            "customer_id": customer_id,
            "entry_no": entry_no,
            "status": "active",
            "node": node,
            "node_since": entered_at if node else None,
            "entered_at": entered_at,
        },
    )


def _ensure_enrollment_stmt(conn: Connection) -> Executable:
    return insert_for(conn, table_of(EnrollmentRow)).on_conflict_do_nothing(
        index_elements=["workflow_id"]
    )


def move_enrollment(
    conn: Connection,
    workflow_id: str,
    *,
    node: str | None,
    at: datetime,
    finish: str | None = None,
    outcome: str | None = None,
    variant: str | None = None,
    wait: Wait | None = None,
) -> bool:
    """Move the enrollment to `node` at `at` (ending it with `finish`); what it waits for
    there is `wait` (none: it does not wait, or has ended). True when this call ended it
    (a repeated call finds it ended: it changes nothing and says False)."""
    params: dict[str, Any] = {"wid": workflow_id, "node": node, "node_since": at}
    params.update(_wait_params(None if finish else wait))
    if variant is not None:
        params["variant"] = variant
    if finish is not None:
        params.update(status=finish, finished_at=at, outcome=outcome)
        ended = conn.execute(_prepared(conn, "finish_enrollment", _finish_enrollment_stmt), params)
        return bool(ended.rowcount)
    # the columns SET are the parameters' column names: one statement, four compiled forms
    conn.execute(_prepared(conn, "move_enrollment", _move_enrollment_stmt), params)
    return False


@dataclass(frozen=True)
class Wait:
    """What an enrollment waits for (delay, event, quiet_hours, rate_limit, frequency_cap),
    until when, and a detail (the event's name, the local time it ends)."""

    waiting_for: str
    until: datetime | None = None
    detail: str | None = None


def _wait_params(wait: Wait | None) -> dict[str, Any]:
    return {
        "waiting_for": wait.waiting_for if wait else None,
        "wait_until": wait.until if wait else None,
        "wait_detail": wait.detail if wait else None,
    }


def set_wait(conn: Connection, workflow_id: str, wait: Wait | None) -> None:
    """Record what the enrollment waits for now, where it is."""
    e = table_of(EnrollmentRow)
    conn.execute(update(e).where(e.c.workflow_id == workflow_id).values(**_wait_params(wait)))


def _finish_enrollment_stmt(conn: Connection) -> Executable:
    e = table_of(EnrollmentRow)
    return update(e).where(e.c.workflow_id == bindparam("wid"), e.c.status == "active")


def _move_enrollment_stmt(conn: Connection) -> Executable:
    e = table_of(EnrollmentRow)
    return update(e).where(e.c.workflow_id == bindparam("wid"))


def record_step(conn: Connection, row: dict[str, Any]) -> bool:
    """Log a step (a `step_row`) once per key; True when this call logged it."""
    return conn.execute(_prepared(conn, "record_step", _record_step_stmt), row).first() is not None


def record_steps(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Log several steps (`step_row`s) in one statement, each once per key."""
    if rows:
        conn.execute(_prepared(conn, "record_steps", _record_steps_stmt), rows)


def step_row(
    *,
    step_key: str,
    workflow_id: str,
    journey: str,
    version: str,
    customer_id: str,
    node: str,
    kind: str,
    at: datetime,
    reason: str | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """The parameters of one step for `record_steps`."""
    return {
        "step_key": step_key,
        "workflow_id": workflow_id,
        "journey": journey,
        "version": version,
        "customer_id": customer_id,
        "node": node,
        "kind": kind,
        "reason": reason,
        "variant": variant,
        "at": at,
    }


def _record_steps_stmt(conn: Connection) -> Executable:
    t = table_of(JourneyStepRow)
    return insert_for(conn, t).on_conflict_do_nothing(index_elements=["step_key"])


def _record_step_stmt(conn: Connection) -> Executable:
    t = table_of(JourneyStepRow)
    stmt: Executable = (
        insert_for(conn, t).on_conflict_do_nothing(index_elements=["step_key"]).returning(t.c.id)
    )
    return stmt


# --------------------------------------------------------------------------- deliveries


@dataclass
class Delivery:
    status: str
    reason: str | None
    sent_at: datetime | None


def find_delivery(conn: Connection, dedupe_key: str) -> Delivery | None:
    row = conn.execute(
        _prepared(conn, "find_delivery", _find_delivery_stmt), {"key": dedupe_key}
    ).first()
    return Delivery(row.status, row.reason, row.sent_at) if row else None


def _find_delivery_stmt(conn: Connection) -> Executable:
    d = table_of(DeliveryRow)
    return select(d.c.status, d.c.reason, d.c.sent_at).where(d.c.dedupe_key == bindparam("key"))


def open_delivery(
    conn: Connection,
    *,
    dedupe_key: str,
    customer_id: str,
    channel: str,
    status: str,
    at: datetime,
    reason: str | None = None,
    subject: str | None = None,
    body: str | None = None,
    meta: dict[str, Any] | None = None,
) -> bool:
    """Record a delivery (or a suppression) under its dedupe key, once; True when this call
    recorded it (False: the key was there already)."""
    result = conn.execute(
        _prepared(conn, "open_delivery", _open_delivery_stmt),
        {
            "dedupe_key": dedupe_key,
            "customer_id": customer_id,
            "channel": channel,
            "status": status,
            "reason": reason,
            "subject": subject,
            "body": body,
            "meta": meta or {},
            "created_at": at,
            "sent_at": at if status == "sent" else None,
        },
    )
    return result.first() is not None  # RETURNING: a row when inserted


def _open_delivery_stmt(conn: Connection) -> Executable:
    t = table_of(DeliveryRow)
    stmt: Executable = (
        insert_for(conn, t).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(t.c.id)
    )
    return stmt


def close_delivery(
    conn: Connection, dedupe_key: str, status: str, at: datetime, meta: dict[str, Any]
) -> None:
    sent_at = at if status == "sent" else None
    conn.execute(
        _prepared(conn, "update_delivery", _update_delivery_stmt),
        {"key": dedupe_key, "status": status, "sent_at": sent_at, "meta": meta},
    )


def set_delivery_status(conn: Connection, dedupe_key: str, status: str) -> None:
    conn.execute(
        _prepared(conn, "update_delivery", _update_delivery_stmt),
        {"key": dedupe_key, "status": status},
    )


def _update_delivery_stmt(conn: Connection) -> Executable:
    d = table_of(DeliveryRow)
    # the columns SET are the parameters' column names
    return update(d).where(d.c.dedupe_key == bindparam("key"))


# --------------------------------------------------------------------------- profiles


def latest_event(conn: Connection, customer_id: str, event_type: str) -> dict[str, Any] | None:
    """The customer's latest event of `event_type`, as a template sees an entry event
    ({type, occurred_at, properties}); None when they have none."""
    e = EventRow
    row = conn.execute(
        select(e.type, e.occurred_at, e.properties)
        .where(e.customer_id == customer_id, e.type == event_type)
        .order_by(e.occurred_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {
        "type": row.type,
        "occurred_at": row.occurred_at.isoformat(),
        "properties": dict(row.properties or {}),
    }


def message_profile(conn: Connection, customer_id: str, at: datetime) -> dict[str, Any] | None:
    """The customer as templates see it (`customer.*`) and as sending checks need it.

    One query: the customer's row once per unexpired tag (once without tags), each with the
    points balance."""
    rows = conn.execute(
        _prepared(conn, "message_profile", _message_profile_stmt), {"cid": customer_id, "at": at}
    ).all()
    if not rows:
        return None
    c = rows[0]
    balance = c.points_balance_
    return {
        "customer_id": c.customer_id,
        "name": c.name,
        "email": c.email,
        "phone": c.phone,
        "timezone": c.timezone or "UTC",
        "locale": c.locale,
        "consent": dict(c.consent or {}),
        "lifecycle_stage": c.lifecycle_stage,
        "owner": c.owner,
        "tier": c.tier,
        "attributes": dict(c.attributes or {}),
        "points_balance": float(balance if isinstance(balance, Decimal | int | float) else 0),
        "tags": sorted(r.tag_ for r in rows if r.tag_ is not None),
    }


def _message_profile_stmt(conn: Connection) -> Executable:
    c, lot, tag = table_of(CustomerRow), table_of(PointsLotRow), table_of(TagRow)
    at = bindparam("at", type_=UTCDateTime())
    balance = (
        select(func.coalesce(func.sum(lot.c.remaining), 0))
        .where(lot.c.customer_id == c.c.customer_id, live_lot(lot.c, at))
        .scalar_subquery()
    )
    unexpired = and_(
        tag.c.customer_id == c.c.customer_id, or_(tag.c.expires_at.is_(None), tag.c.expires_at > at)
    )
    return (
        select(c, balance.label("points_balance_"), tag.c.tag.label("tag_"))
        .outerjoin(tag, unexpired)
        .where(c.c.customer_id == bindparam("cid"))
    )


# --------------------------------------------------------------------------- prepared statements

_STATEMENTS: dict[tuple[str, str], Executable] = {}


def _prepared(conn: Connection, name: str, build: Callable[[Connection], Executable]) -> Executable:
    """The statement `name` for this connection's database, built once: executed with a
    parameter dict, SQLAlchemy finds its compiled form in the engine's cache straight away,
    where a statement built per call with `.values(**kw)` coerces every value into a new
    bind parameter and computes a cache key first (~0.4 ms a statement)."""
    key = (conn.dialect.name, name)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build(conn)
    return stmt
