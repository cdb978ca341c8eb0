"""One customer's rows, read whole (an export) and stripped of personal data (an erasure),
and the set-based look-up of erased ids that imports make.

An erasure keeps every row that a count or a sum reads — the customer row (its id, stage,
tier, owner, debt and dates), events (id, type, time and the properties `Redaction` keeps),
points lots, the ledger, refunds, redemptions, coupons, tier history, enrollments — and
removes what says who the person is: name, e-mail, phone, locale, time zone, consent,
attributes, the content and addresses of messages, free-text event properties, tags. Free
text the person's identifiers may have been copied into (ledger and tier reasons, the audit
trail, task titles, journey step reasons, notices to staff) has every occurrence of them
replaced by `REDACTED`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, func, insert, or_, select, update

from store.models import (
    AuditRow,
    CouponRow,
    CustomerRow,
    DeliveryAttemptRow,
    DeliveryRow,
    EnrollmentRow,
    EventRow,
    FollowUpTaskRow,
    JourneyCommandRow,
    JourneyStepRow,
    OrderRefundRow,
    OutboxMessageRow,
    PointsLedgerRow,
    PointsLotRow,
    PrivacyLogRow,
    RedemptionRow,
    TagRow,
    TierHistoryRow,
)
from store.sql import table_of

REDACTED = "[erased]"
MIN_SECRET = 3  # shorter strings are not searched for in free text (they would match anything)
ERASED_OUTCOME = "exited: the customer's data was erased"
# delivery metadata kept by an erasure: where in which journey, never an address or an error
DELIVERY_META = ("journey", "node", "variant", "via")

# the tables read for an export, with the column they are ordered by
_EXPORTED: dict[str, tuple[Any, str]] = {
    "events": (EventRow, "id"),
    "customer_tags": (TagRow, "id"),
    "points_lots": (PointsLotRow, "id"),
    "points_ledger": (PointsLedgerRow, "id"),
    "order_refunds": (OrderRefundRow, "id"),
    "redemptions": (RedemptionRow, "id"),
    "tier_history": (TierHistoryRow, "id"),
    "audit_log": (AuditRow, "id"),
    "message_deliveries": (DeliveryRow, "id"),
    "delivery_attempts": (DeliveryAttemptRow, "id"),
    "journey_outbox": (JourneyCommandRow, "id"),
    "follow_up_tasks": (FollowUpTaskRow, "id"),
    "coupons": (CouponRow, "id"),
    "journey_enrollments": (EnrollmentRow, "entered_at"),
    "journey_steps": (JourneyStepRow, "id"),
    "privacy_log": (PrivacyLogRow, "id"),
}
OUTBOX = "outbox_messages"


def _t(model: Any) -> Table:
    return table_of(model)


def _dicts(conn: Connection, stmt: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(stmt)]


def customer_row(
    conn: Connection, customer_id: str, *, lock: bool = False
) -> dict[str, Any] | None:
    """The customer's row (None: no such id); `lock` takes its row lock on PostgreSQL."""
    c = _t(CustomerRow)
    stmt = select(c).where(c.c.customer_id == customer_id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return dict(row._mapping) if row is not None else None


def _outbox_where(customer_id: str, addresses: Iterable[str]) -> Any:
    """The outbox messages of the customer: by id, or sent to one of their addresses."""
    o = _t(OutboxMessageRow)
    wanted = sorted({a.lower() for a in addresses if a})
    # never NULL, so that `~` of it is the other messages (NULL is neither)
    by_id = func.coalesce(o.c.customer_id, "") == customer_id
    if not wanted:
        return by_id
    to_them = func.lower(func.coalesce(o.c.address, "")).in_(wanted)
    return or_(by_id, and_(o.c.customer_id.is_(None), to_them))


def customer_tables(conn: Connection, customer_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table that is about the customer, by table name (the customer row
    itself excepted: `customer_row`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, (model, order) in _EXPORTED.items():
        t = _t(model)
        out[name] = _dicts(
            conn, select(t).where(t.c.customer_id == customer_id).order_by(t.c[order])
        )
    profile = customer_row(conn, customer_id) or {}
    addresses = [profile.get("email") or "", profile.get("phone") or ""]
    o = _t(OutboxMessageRow)
    out[OUTBOX] = _dicts(
        conn, select(o).where(_outbox_where(customer_id, addresses)).order_by(o.c.id)
    )
    return out


# --------------------------------------------------------------------------- redaction


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON value (keys excepted)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


@dataclass
class Redaction:
    """What an erasure removes from text: the person's identifiers (`secrets`), found
    case-insensitively; and which event properties it keeps (`keep_property`)."""

    keep_property: Callable[[str, Any], bool]
    secrets: set[str] = field(default_factory=set)
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def add(self, *values: Any) -> None:
        for v in values:
            for s in _strings(v):
                s = s.strip()
                if len(s) >= MIN_SECRET:
                    self.secrets.add(s)
        self._pattern = None

    @property
    def pattern(self) -> re.Pattern[str] | None:
        if self._pattern is None and self.secrets:
            # longest first, so an e-mail is replaced whole before the name inside it
            alts = sorted(self.secrets, key=lambda s: (-len(s), s))
            self._pattern = re.compile("|".join(re.escape(s) for s in alts), re.IGNORECASE)
        return self._pattern

    def text(self, value: str | None) -> str | None:
        """`value` with every identifier replaced by `REDACTED`."""
        if value is None or self.pattern is None:
            return value
        return self.pattern.sub(REDACTED, value)

    def doc(self, value: Any) -> Any:
        """A JSON value with every string redacted (`text`), keys included."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {str(self.text(str(k))): self.doc(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.doc(v) for v in value]
        return value

    def properties(self, props: dict[str, Any] | None) -> dict[str, Any]:
        """An event's properties as an erasure keeps them (`keep_property`)."""
        return {k: v for k, v in (props or {}).items() if self.keep_property(k, v)}

    def dropped(self, props: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (props or {}).items() if not self.keep_property(k, v)}


# --------------------------------------------------------------------------- erasure


def _update_changed(
    conn: Connection,
    table: Table,
    key: str,
    rows: list[dict[str, Any]],
    change: Callable[[dict[str, Any]], dict[str, Any]],
) -> int:
    """Apply `change` (row -> new values) to each row; write those whose values differ;
    how many were written."""
    done = 0
    for row in rows:
        values = change(row)
        if any(row.get(k) != v for k, v in values.items()):
            conn.execute(update(table).where(table.c[key] == row[key]).values(**values))
            done += 1
    return done


def erase_customer(
    conn: Connection,
    customer_id: str,
    redaction: Redaction,
    now: datetime,
) -> dict[str, int]:
    """Remove the customer's personal data from every table, in the caller's transaction;
    rows changed (or deleted) per table. The customer row must exist (`customer_row`).
    Running enrollments are ended (`exited`). Idempotent: erasing again changes nothing
    new (except rows that arrived since)."""
    profile = customer_row(conn, customer_id, lock=True)
    if profile is None:
        raise LookupError(customer_id)
    rows = customer_tables(conn, customer_id)
    addresses = [profile.get("email") or "", profile.get("phone") or ""]
    redaction.add(
        profile.get("name"),
        profile.get("email"),
        profile.get("phone"),
        profile.get("attributes") or {},
    )
    for e in rows["events"]:
        redaction.add(redaction.dropped(e["properties"]))
    for m in rows[OUTBOX]:
        redaction.add(m["address"])
    counts: dict[str, int] = {}

    c = _t(CustomerRow)
    conn.execute(
        update(c)
        .where(c.c.customer_id == customer_id)
        .values(
            name=None,
            email=None,
            phone=None,
            locale=None,
            timezone="UTC",
            consent={},
            attributes={},
            row_hash=None,
            erased_at=func.coalesce(c.c.erased_at, now),
            updated_at=now,
            state_version=c.c.state_version + 1,
        )
    )
    counts["customers"] = 1

    counts["events"] = _update_changed(
        conn,
        _t(EventRow),
        "id",
        rows["events"],
        lambda r: {"properties": redaction.properties(r["properties"])},
    )
    tags = _t(TagRow)
    counts["customer_tags"] = conn.execute(
        delete(tags).where(tags.c.customer_id == customer_id)
    ).rowcount
    for name, model, column in (
        ("points_ledger", PointsLedgerRow, "reason"),
        ("tier_history", TierHistoryRow, "reason"),
        ("journey_steps", JourneyStepRow, "reason"),
        ("follow_up_tasks", FollowUpTaskRow, "title"),
    ):
        counts[name] = _update_changed(
            conn,
            _t(model),
            "id",
            rows[name],
            lambda r, col=column: {col: redaction.text(r[col])},  # type: ignore[misc]
        )
    counts["audit_log"] = _update_changed(
        conn,
        _t(AuditRow),
        "id",
        rows["audit_log"],
        lambda r: {"detail": redaction.doc(r["detail"]), "skipped": redaction.text(r["skipped"])},
    )

    def command(r: dict[str, Any]) -> dict[str, Any]:
        data = dict(r["data"] or {})
        if isinstance(data.get("properties"), dict):
            data["properties"] = redaction.properties(data["properties"])
        return {"data": redaction.doc(data)}

    counts["journey_outbox"] = _update_changed(
        conn, _t(JourneyCommandRow), "id", rows["journey_outbox"], command
    )
    counts["message_deliveries"] = _update_changed(
        conn,
        _t(DeliveryRow),
        "id",
        rows["message_deliveries"],
        lambda r: {
            "subject": None,
            "body": None,
            "reason": redaction.text(r["reason"]),
            "meta": {k: v for k, v in (r["meta"] or {}).items() if k in DELIVERY_META},
        },
    )
    # a provider's answer may quote the address or the message
    counts["delivery_attempts"] = _update_changed(
        conn,
        _t(DeliveryAttemptRow),
        "id",
        rows["delivery_attempts"],
        lambda r: {"response": REDACTED if r["response"] else None},
    )
    o = _t(OutboxMessageRow)
    counts[OUTBOX] = _update_changed(
        conn,
        o,
        "id",
        rows[OUTBOX],
        lambda r: {
            "address": None,
            "subject": None,
            "body_text": None,
            "body_html": None,
            "headers": {},
        },
    )
    counts["staff_notices"] = _redact_notices(conn, redaction, addresses, profile, customer_id)
    en = _t(EnrollmentRow)
    counts["journey_enrollments"] = _update_changed(
        conn,
        en,
        "workflow_id",
        rows["journey_enrollments"],
        lambda r: (
            {"status": "exited", "finished_at": now, "outcome": ERASED_OUTCOME}
            if r["status"] == "active"
            else {"outcome": redaction.text(r["outcome"])}
        ),
    )
    return counts


def _redact_notices(
    conn: Connection,
    redaction: Redaction,
    addresses: list[str],
    profile: dict[str, Any],
    customer_id: str,
) -> int:
    """Messages to someone else (a notice to a manager lists leads by name) that name the
    customer: the name, e-mail or phone replaced in their text."""
    o = _t(OutboxMessageRow)
    terms = [
        s.lower()
        for s in (profile.get("name"), profile.get("email"), profile.get("phone"))
        if s and len(s) >= MIN_SECRET
    ]
    if not terms:
        return 0
    texts = (o.c.subject, o.c.body_text, o.c.body_html)
    mentions = or_(
        *[func.lower(col).contains(term, autoescape=True) for col in texts for term in terms]
    )
    mine = _outbox_where(customer_id, addresses)
    found = _dicts(conn, select(o.c.id, *texts).where(mentions, ~mine))
    return _update_changed(
        conn,
        o,
        "id",
        found,
        lambda r: {
            "subject": redaction.text(r["subject"]),
            "body_text": redaction.text(r["body_text"]),
            "body_html": redaction.text(r["body_html"]),
        },
    )


# --------------------------------------------------------------------------- the log


def record(
    conn: Connection,
    *,
    action: str,
    customer_id: str,
    at: datetime,
    actor: str,
    actor_name: str | None,
    person: str | None,
    role: str | None,
    tables: dict[str, int],
    detail: dict[str, Any],
) -> int:
    """Write one export or erasure to the privacy log; its id."""
    t = _t(PrivacyLogRow)
    row = conn.execute(
        insert(t)
        .values(
            at=at,
            action=action,
            customer_id=customer_id,
            actor=actor[:120],
            actor_name=(actor_name or "")[:100] or None,
            person=(person or "")[:200] or None,
            role=role,
            tables=tables,
            detail=detail,
        )
        .returning(t.c.id)
    ).scalar_one()
    return int(row)


def add_detail(conn: Connection, log_id: int, extra: dict[str, Any]) -> None:
    """Add to the detail of a privacy log entry (what Temporal did, after the commit)."""
    t = _t(PrivacyLogRow)
    old = conn.execute(select(t.c.detail).where(t.c.id == log_id)).scalar_one()
    conn.execute(update(t).where(t.c.id == log_id).values(detail=dict(old or {}) | extra))


def log_entries(
    conn: Connection, *, customer_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The privacy log, newest first (of one customer, or of all)."""
    t = _t(PrivacyLogRow)
    stmt = select(t).order_by(t.c.id.desc()).limit(limit)
    if customer_id is not None:
        stmt = stmt.where(t.c.customer_id == customer_id)
    return _dicts(conn, stmt)
