"""Set-based writes for the ingest path: customers upserted by id, events appended once.

Each function takes one chunk of already validated rows and an open connection inside a
transaction; the caller commits. Idempotent: the same chunk twice changes nothing. An event
id names one event: a row whose id is stored (or came earlier in the chunk) with other
content is a conflict, left out and reported, never counted as a duplicate. `erased_among`
finds the ids of a chunk whose personal data was erased (their rows are rejected).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from store.bulk import insert_rows
from store.models import CustomerRow, EventRow
from store.sql import insert_for, table_of, where_in

_CUSTOMER_FIELDS = ("name", "email", "phone", "locale", "consent", "owner", "attributes")


@dataclass(frozen=True)
class Conflict:
    """An event whose id is stored, or came earlier in the chunk, with other content."""

    at: int  # where the row came from (a file's line, a request's position)
    event_id: str
    differs: tuple[str, ...]  # the fields that differ (`EVENT_FIELDS`)
    row: dict[str, Any]  # the row as validated, for a rejects file


@dataclass
class WriteCounts:
    """What one chunk's writes did (the words of `crmflow.ingest_report.IngestReport`)."""

    stored: int = 0  # new ids written
    updated: int = 0  # customers whose content changed
    duplicates: int = 0  # no effect: stored with the same content, or repeated
    conflicts: list[Conflict] = field(default_factory=list)

    def add(self, other: WriteCounts) -> None:
        self.stored += other.stored
        self.updated += other.updated
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts


def _existing(conn: Connection, column: Any, keys: list[str], *extra: Any) -> dict[str, Any]:
    """Stored rows among `keys`, by key: the `extra` columns as a Row (or True)."""
    found: dict[str, Any] = {}
    for where in where_in(conn, column, keys):
        for row in conn.execute(select(column, *extra).where(where)):
            found[row[0]] = row if extra else True
    return found


def upsert_customers(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> WriteCounts:
    """Insert new customers, update changed ones, leave identical ones alone.

    `rows` are `Customer.model_dump()` dicts plus `row_hash`. A later row for the same id in
    the chunk wins (the earlier ones count as duplicates: they have no effect).
    `lifecycle_stage` and `timezone` left out of a row keep the stored value.
    """
    latest = {r["customer_id"]: r for r in rows}
    stored = _existing(
        conn,
        CustomerRow.customer_id,
        list(latest),
        CustomerRow.row_hash,
        CustomerRow.timezone,
        CustomerRow.lifecycle_stage,
    )
    counts = WriteCounts(duplicates=len(rows) - len(latest))
    todo = []
    for cid, row in latest.items():
        old = stored.get(cid)
        if old is None:
            counts.stored += 1
            timezone, stage = "UTC", "lead"
        elif old.row_hash == row["row_hash"]:
            counts.duplicates += 1
            continue
        else:
            counts.updated += 1
            timezone, stage = old.timezone, old.lifecycle_stage
        todo.append(
            {
                "customer_id": cid,
                **{f: row.get(f) for f in _CUSTOMER_FIELDS},
                "consent": row.get("consent") or {},
                "attributes": row.get("attributes") or {},
                "timezone": row.get("timezone") or timezone,
                "lifecycle_stage": row.get("lifecycle_stage") or stage,
                "row_hash": row["row_hash"],
                "is_stub": False,
                "created_at": now,
                "updated_at": now,
            }
        )
    if not todo:
        return counts
    table = CustomerRow.__table__
    ins = insert_for(conn, table)  # type: ignore[arg-type]
    exc = ins.excluded
    stmt = ins.on_conflict_do_update(
        index_elements=["customer_id"],
        set_={
            **{f: exc[f] for f in _CUSTOMER_FIELDS},
            "timezone": exc.timezone,
            "lifecycle_stage": exc.lifecycle_stage,
            "row_hash": exc.row_hash,
            "is_stub": False,
            "updated_at": exc.updated_at,
            # the rules read these fields: processes caching rule state must reload them
            "state_version": table.c.state_version + 1,
        },
        where=or_(table.c.row_hash.is_(None), table.c.row_hash != exc.row_hash),
    )
    conn.execute(stmt, todo)
    return counts


def erased_among(conn: Connection, customer_ids: list[str]) -> dict[str, datetime]:
    """The ids among `customer_ids` whose personal data was erased, with when: one
    statement per IN-list (`store.sql.where_in`), however many ids a chunk holds."""
    c = CustomerRow.__table__.c
    found: dict[str, datetime] = {}
    for where in where_in(conn, c.customer_id, sorted(set(customer_ids))):
        for cid, at in conn.execute(
            select(c.customer_id, c.erased_at).where(where, c.erased_at.is_not(None))
        ):
            found[cid] = at
    return found


def ensure_customers(conn: Connection, customer_ids: set[str], now: datetime) -> int:
    """Create stub customers for ids first seen in events, so no event is refused for order."""
    wanted = sorted(customer_ids)
    stored = _existing(conn, CustomerRow.customer_id, wanted)
    missing = [c for c in wanted if c not in stored]
    if not missing:
        return 0
    stmt = insert_for(conn, CustomerRow.__table__).on_conflict_do_nothing(  # type: ignore[arg-type]
        index_elements=["customer_id"]
    )
    conn.execute(
        stmt,
        [
            {
                "customer_id": c,
                "timezone": "UTC",
                "lifecycle_stage": "lead",
                "consent": {},
                "attributes": {},
                "is_stub": True,
                "created_at": now,
                "updated_at": now,
            }
            for c in missing
        ],
    )
    return len(missing)


EVENT_FIELDS = ("customer_id", "type", "occurred_at", "properties")


def event_content(
    customer_id: str, type_: str, occurred_at: datetime, properties: Any
) -> tuple[Any, ...]:
    """What an event says, comparable between a row and its stored copy: the instant in UTC
    at millisecond precision (what every database keeps), properties as canonical JSON."""
    at = occurred_at.astimezone(UTC) if occurred_at.tzinfo else occurred_at.replace(tzinfo=UTC)
    return (
        customer_id,
        type_,
        at.replace(microsecond=at.microsecond // 1000 * 1000),
        json.dumps(properties or {}, sort_keys=True, default=str),
    )


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    return event_content(row["customer_id"], row["type"], row["occurred_at"], row.get("properties"))


def _differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(name for name, x, y in zip(EVENT_FIELDS, a, b, strict=True) if x != y)


def new_events(
    conn: Connection, rows: list[dict[str, Any]], now: datetime, at: list[int] | None = None
) -> tuple[WriteCounts, list[dict[str, Any]]]:
    """The rows whose `event_id` is not stored yet (first of each id). A row whose id is
    stored, or came earlier in `rows`, with the same content is a duplicate; with other
    content a conflict (in `counts.conflicts`, placed at `at[i]`, by default its index i).
    Creates stub customers for the new rows' unknown customer ids."""
    places = at if at is not None else list(range(len(rows)))
    first: dict[str, int] = {}  # event id -> index of its first row
    for i, r in enumerate(rows):
        first.setdefault(r["event_id"], i)
    e = EventRow
    found = _existing(
        conn, e.event_id, list(first), e.customer_id, e.type, e.occurred_at, e.properties
    )
    stored = {
        eid: event_content(s.customer_id, s.type, s.occurred_at, s.properties)
        for eid, s in found.items()
    }
    counts = WriteCounts()
    new = []
    for i, r in enumerate(rows):
        eid = r["event_id"]
        if i == first[eid] and eid not in stored:
            new.append(r)
            continue
        # compared with the stored event, or else with the id's first row in the chunk
        have = stored[eid] if eid in stored else _content(rows[first[eid]])
        content = _content(r)
        if content == have:
            counts.duplicates += 1
        else:
            counts.conflicts.append(Conflict(places[i], eid, _differs(have, content), r))
    if new:
        ensure_customers(conn, {r["customer_id"] for r in new}, now)
    return counts, new


def insert_events(
    conn: Connection,
    rows: list[dict[str, Any]],
    now: datetime,
    *,
    processed_at: datetime | None = None,
) -> int:
    """Store `rows` (from `new_events`); return how many the database took — fewer only
    when another import stored some of them meanwhile. `processed_at` stores them already
    marked, for a caller that processes them in the same transaction."""
    return insert_rows(
        conn,
        table_of(EventRow),
        [
            {
                "event_id": r["event_id"],
                "customer_id": r["customer_id"],
                "type": r["type"],
                "occurred_at": r["occurred_at"],
                "received_at": now,
                "properties": r.get("properties") or {},
                "processed_at": processed_at,
            }
            for r in rows
        ],
        ignore_conflicts_on="event_id",
    )


def append_events(
    conn: Connection, rows: list[dict[str, Any]], now: datetime
) -> tuple[WriteCounts, list[dict[str, Any]]]:
    """Append events not seen before (by `event_id`), unprocessed; return the counts and
    the rows that were new."""
    counts, new = new_events(conn, rows, now)
    counts.stored = insert_events(conn, new, now) if new else 0
    return counts, new
