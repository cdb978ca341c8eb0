"""Reads for one customer's page that the 360 view does not hold: who set each tag (the
audit trail), the customer's journey enrollments with the newest step each one logged, and
the newest message deliveries (sent, suppressed — with why — or failed).

Each read is one query bounded by the customer's own rows (indexed by customer id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from store.models import AuditRow, CustomerRow, DeliveryRow, EnrollmentRow, JourneyStepRow
from store.sql import table_of

TAG_KINDS = ("add_tag", "remove_tag")
MAX_TRAIL = 2000  # audit rows read to find who set each tag (newest first)
MAX_STEPS = 2000


@dataclass(frozen=True)
class TagSet:
    tag: str
    rule: str  # the rule; `manual` for a person (`by`); `automation:<schedule>`
    by: str | None
    at: datetime
    event_id: str | None
    rules_version: str | None


@dataclass(frozen=True)
class Step:
    workflow_id: str
    node: str
    kind: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class Delivery:
    dedupe_key: str
    channel: str
    status: str
    reason: str | None
    meta: dict[str, Any]
    created_at: datetime
    sent_at: datetime | None


def tag_setters(conn: Connection, customer_id: str) -> dict[str, TagSet]:
    """Per tag, the newest audit entry that added it to the customer."""
    a = table_of(AuditRow).c
    rows = conn.execute(
        select(a.rule, a.detail, a.at, a.event_id, a.rules_version)
        .where(a.customer_id == customer_id, a.kind == "add_tag", a.skipped.is_(None))
        .order_by(a.at.desc(), a.id.desc())
        .limit(MAX_TRAIL)
    ).all()
    found: dict[str, TagSet] = {}
    for rule, detail, at, event_id, version in rows:
        tag = (detail or {}).get("tag")
        if isinstance(tag, str) and tag not in found:
            by = (detail or {}).get("by")
            who = by if isinstance(by, str) else None
            found[tag] = TagSet(tag, rule, who, at, event_id, version)
    return found


def enrollments(conn: Connection, customer_id: str, limit: int = 50) -> list[Any]:
    """The customer's enrollments, the newest first."""
    en = table_of(EnrollmentRow)
    return list(
        conn.execute(
            select(en)
            .where(en.c.customer_id == customer_id)
            .order_by(en.c.entered_at.desc())
            .limit(limit)
        ).all()
    )


def latest_steps(conn: Connection, workflow_ids: list[str]) -> dict[str, list[Step]]:
    """Per enrollment (workflow id), its logged steps, the newest first."""
    if not workflow_ids:
        return {}
    s = table_of(JourneyStepRow).c
    rows = conn.execute(
        select(s.workflow_id, s.node, s.kind, s.reason, s.at)
        .where(s.workflow_id.in_(workflow_ids))
        .order_by(s.at.desc(), s.id.desc())
        .limit(MAX_STEPS)
    ).all()
    found: dict[str, list[Step]] = {}
    for wid, node, kind, reason, at in rows:
        found.setdefault(wid, []).append(Step(wid, node, kind, reason, at))
    return found


def deliveries(conn: Connection, customer_id: str, limit: int = 30) -> list[Delivery]:
    """The customer's newest deliveries (no subject or body: the page shows no content)."""
    d = table_of(DeliveryRow).c
    rows = conn.execute(
        select(d.dedupe_key, d.channel, d.status, d.reason, d.meta, d.created_at, d.sent_at)
        .where(d.customer_id == customer_id)
        .order_by(d.created_at.desc(), d.id.desc())
        .limit(limit)
    ).all()
    return [Delivery(k, ch, st, why, m or {}, at, sent) for k, ch, st, why, m, at, sent in rows]


def erased_at(conn: Connection, customer_id: str) -> datetime | None:
    """When the customer's personal data was erased (None: never, or no such customer)."""
    c = table_of(CustomerRow).c
    found: datetime | None = conn.execute(
        select(c.erased_at).where(c.customer_id == customer_id)
    ).scalar()
    return found
