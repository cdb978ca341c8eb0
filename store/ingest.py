"""Set-based writes for the ingest path: customers upserted by id, events appended once.

Each function takes one chunk of already validated rows and an open connection inside a
transaction; the caller commits. Idempotent: the same chunk twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from store.bulk import insert_rows
from store.models import CustomerRow, EventRow
from store.sql import insert_for, table_of, where_in

_CUSTOMER_FIELDS = ("name", "email", "phone", "locale", "consent", "owner", "attributes")


@dataclass
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, other: WriteCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged


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
    the chunk wins. `lifecycle_stage` and `timezone` left out of a row keep the stored value.
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
    counts = WriteCounts()
    todo = []
    for cid, row in latest.items():
        old = stored.get(cid)
        if old is None:
            counts.inserted += 1
            timezone, stage = "UTC", "lead"
        elif old.row_hash == row["row_hash"]:
            counts.unchanged += 1
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


def new_events(
    conn: Connection, rows: list[dict[str, Any]], now: datetime
) -> tuple[WriteCounts, list[dict[str, Any]]]:
    """The rows whose `event_id` is not stored yet (first of each id); repeats are counted
    as unchanged. Creates stub customers for unknown customer ids."""
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(r["event_id"], r)
    counts = WriteCounts(unchanged=len(rows) - len(first))
    stored = _existing(conn, EventRow.event_id, list(first))
    new = [r for eid, r in first.items() if eid not in stored]
    counts.unchanged += len(first) - len(new)
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
    counts.inserted = insert_events(conn, new, now) if new else 0
    return counts, new
