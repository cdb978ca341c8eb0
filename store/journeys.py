"""Journeys in the store: deployed versions and status, enrollments (who is where), the steps
log that stats are counted from, and the delivery ledger that makes a send happen once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select, update

from store.db import utcnow
from store.models import (
    CustomerRow,
    DeliveryRow,
    EnrollmentRow,
    JourneyRow,
    JourneyStepRow,
    JourneyVersionRow,
    PointsLotRow,
    TagRow,
)
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
    stmt = insert_for(conn, table_of(EnrollmentRow)).on_conflict_do_nothing(
        index_elements=["workflow_id"]
    )
    conn.execute(
        stmt.values(
            workflow_id=workflow_id,
            journey=journey,
            version=version,
            customer_id=customer_id,
            entry_no=entry_no,
            status="active",
            node=node,
            node_since=entered_at if node else None,
            entered_at=entered_at,
        )
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
) -> None:
    values: dict[str, Any] = {"node": node, "node_since": at}
    if variant is not None:
        values["variant"] = variant
    if finish is not None:
        values.update(status=finish, finished_at=at, outcome=outcome)
    conn.execute(
        update(EnrollmentRow).where(EnrollmentRow.workflow_id == workflow_id).values(**values)
    )


def record_step(
    conn: Connection,
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
) -> bool:
    """Log a step once per key; True when this call logged it."""
    t = table_of(JourneyStepRow)
    stmt = (
        insert_for(conn, t)
        .on_conflict_do_nothing(index_elements=["step_key"])
        .values(
            step_key=step_key,
            workflow_id=workflow_id,
            journey=journey,
            version=version,
            customer_id=customer_id,
            node=node,
            kind=kind,
            reason=reason,
            variant=variant,
            at=at,
        )
        .returning(t.c.id)
    )
    return conn.execute(stmt).first() is not None


# --------------------------------------------------------------------------- deliveries


@dataclass
class Delivery:
    status: str
    reason: str | None
    sent_at: datetime | None


def find_delivery(conn: Connection, dedupe_key: str) -> Delivery | None:
    d = DeliveryRow
    row = conn.execute(
        select(d.status, d.reason, d.sent_at).where(d.dedupe_key == dedupe_key)
    ).first()
    return Delivery(row.status, row.reason, row.sent_at) if row else None


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
) -> None:
    """Record a delivery (or a suppression) under its dedupe key, once."""
    stmt = insert_for(conn, table_of(DeliveryRow)).on_conflict_do_nothing(
        index_elements=["dedupe_key"]
    )
    conn.execute(
        stmt.values(
            dedupe_key=dedupe_key,
            customer_id=customer_id,
            channel=channel,
            status=status,
            reason=reason,
            subject=subject,
            body=body,
            meta=meta or {},
            created_at=at,
            sent_at=at if status == "sent" else None,
        )
    )


def close_delivery(
    conn: Connection, dedupe_key: str, status: str, at: datetime, meta: dict[str, Any]
) -> None:
    conn.execute(
        update(DeliveryRow)
        .where(DeliveryRow.dedupe_key == dedupe_key)
        .values(status=status, sent_at=at if status == "sent" else None, meta=meta)
    )


def set_delivery_status(conn: Connection, dedupe_key: str, status: str) -> None:
    conn.execute(
        update(DeliveryRow).where(DeliveryRow.dedupe_key == dedupe_key).values(status=status)
    )


def sends_since(
    conn: Connection,
    *,
    since: datetime,
    customer_id: str | None = None,
    key_prefix: str | None = None,
) -> list[datetime]:
    """Send times of messages sent since `since`, for one customer or one key prefix (a
    journey's enrollments share `journey:<name>:`)."""
    d = DeliveryRow
    stmt = select(d.sent_at).where(d.status == "sent", d.sent_at > since)
    if customer_id is not None:
        stmt = stmt.where(d.customer_id == customer_id)
    if key_prefix is not None:
        stmt = stmt.where(d.dedupe_key.startswith(key_prefix, autoescape=True))
    return sorted(t for (t,) in conn.execute(stmt) if t is not None)


# --------------------------------------------------------------------------- profiles


def message_profile(conn: Connection, customer_id: str, at: datetime) -> dict[str, Any] | None:
    """The customer as templates see it (`customer.*`) and as sending checks need it."""
    c = conn.execute(
        select(CustomerRow.__table__).where(CustomerRow.customer_id == customer_id)
    ).first()
    if c is None:
        return None
    balance = conn.execute(
        select(func.coalesce(func.sum(PointsLotRow.remaining), 0)).where(
            PointsLotRow.customer_id == customer_id,
            PointsLotRow.remaining > 0,
            (PointsLotRow.expires_at.is_(None)) | (PointsLotRow.expires_at > at),
        )
    ).scalar_one()
    tags = sorted(
        conn.execute(
            select(TagRow.tag).where(
                TagRow.customer_id == customer_id,
                (TagRow.expires_at.is_(None)) | (TagRow.expires_at > at),
            )
        ).scalars()
    )
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
        "tags": tags,
    }
