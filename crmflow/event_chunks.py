"""One chunk of events into the store: the step every arrival of events ends in (a file
import in this process or in an import worker, an API request, an automation's events).

`store_events` stores the new ones (by event id) in the caller's transaction and runs them
through the active rules; `store_chunk` does it in a transaction of its own and tries again
when it raced another writer. Kept apart from `crmflow.ingest` (files and the chunk loop),
so the import worker processes, which run chunks, and the loop, which starts the workers,
do not import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from crmflow.processing import (
    RACE_RETRIES,
    UNSUBSCRIBED,
    ConcurrentProcessing,
    active_pack,
    process_chunk,
    revoke_consents,
)
from store.db import utcnow
from store.ingest import WriteCounts, insert_events, new_events
from store.models import EventRow
from store.sql import table_of, where_in

log = logging.getLogger(__name__)


@dataclass
class StoredEvents:
    """What one chunk of events did (picklable: import workers send it back)."""

    counts: WriteCounts
    processed: int = 0
    unprocessed: int = 0
    rules_fired: int = 0
    rules_version: str | None = None

    def add(self, other: StoredEvents) -> None:
        self.counts.add(other.counts)
        self.processed += other.processed
        self.unprocessed += other.unprocessed
        self.rules_fired += other.rules_fired
        self.rules_version = other.rules_version or self.rules_version


def store_events(
    conn: Connection,
    rows: list[dict[str, Any]],
    now: datetime,
    *,
    process: bool = True,
    at: list[int] | None = None,
) -> StoredEvents:
    """Store a chunk of validated events (`Event.model_dump()` dicts) in the caller's
    transaction: new ones only (by event id), run through the active rules version in the
    same transaction, stored already marked processed. An id stored (or earlier in the
    chunk) with the same content is a duplicate, with other content a conflict, placed at
    `at[i]` (by default its index). With no rules deployed (or `process=False`) they are
    stored unprocessed — but an unsubscribe still takes consent away at once. Every way an
    event arrives (file import, HTTP, automations) comes through here.

    `ConcurrentProcessing` when another writer stored some of the new ids meanwhile: undo
    the transaction and try again (the next try compares them with what it stored)."""
    pack = active_pack(conn) if process else None
    counts, new = new_events(conn, rows, now, at)
    out = StoredEvents(counts)
    if pack is None:
        counts.stored = insert_events(conn, new, now) if new else 0
        if counts.stored != len(new):
            # a row left out by the database would be neither stored nor compared
            raise ConcurrentProcessing(
                f"{len(new) - counts.stored} of {len(new)} events were stored meanwhile"
            )
        out.unprocessed = len(new)
        revoke_consents(conn, [e for e in new if e["type"] == UNSUBSCRIBED], now)
        return out

    def store_marked(c: Connection, _ids: list[str], at: datetime) -> int:
        # the chunk's events are stored already marked, after the rules state is loaded
        # (so the history does not count them twice)
        counts.stored = insert_events(c, new, now, processed_at=at)
        return counts.stored

    done = process_chunk(conn, pack, new, claim=store_marked)
    out.processed = done.events
    out.rules_fired = done.rules_fired
    out.rules_version = pack.version
    return out


def _deadlocked(exc: DBAPIError) -> bool:
    """PostgreSQL gave up the transaction to break a deadlock or a serialization conflict:
    a lost race like `ConcurrentProcessing`."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")


def _retried(engine: Engine, step: Callable[[Connection], StoredEvents], what: str) -> StoredEvents:
    """`step` in a transaction of its own, rolled back and tried again (up to
    `RACE_RETRIES` times) when it lost a race; the last loss is raised as
    `ConcurrentProcessing`."""
    attempt = 1
    while True:
        try:
            with engine.begin() as conn:
                return step(conn)
        except ConcurrentProcessing:
            if attempt == RACE_RETRIES:
                raise
        except DBAPIError as exc:
            if not _deadlocked(exc):
                raise
            if attempt == RACE_RETRIES:
                raise ConcurrentProcessing(f"{what} kept losing races: {exc.orig}") from exc
        log.info("%s raced another writer; retrying (%d)", what, attempt)
        attempt += 1


def store_chunk(
    engine: Engine,
    rows: list[dict[str, Any]],
    *,
    process: bool = True,
    at: list[int] | None = None,
) -> StoredEvents:
    """`store_events` in a transaction of its own; a chunk that raced another writer (of
    the same events, or of the same customers) is rolled back and tried again — the next
    try compares what the other writer stored and reads the state it left."""
    return _retried(
        engine,
        lambda conn: store_events(conn, rows, utcnow(), process=process, at=at),
        "events chunk",
    )


def _still_pending(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose stored event is not processed yet, in their order."""
    t = table_of(EventRow)
    pending: set[str] = set()
    for where in where_in(conn, t.c.event_id, [r["event_id"] for r in rows]):
        pending.update(
            conn.execute(select(t.c.event_id).where(where, t.c.processed_at.is_(None))).scalars()
        )
    return [r for r in rows if r["event_id"] in pending]


def process_stored_chunk(engine: Engine, rows: list[dict[str, Any]]) -> StoredEvents:
    """Run stored, unprocessed events (`rows`: event_id, customer_id, type, occurred_at,
    properties, in arrival order) through the active rules in a transaction of their own,
    marking them processed. Events another process got to first are left out (looked up
    again on every try); a chunk that raced another writer is rolled back and tried again.
    With no rules version deployed nothing is done (they stay pending)."""

    def step(conn: Connection) -> StoredEvents:
        pack = active_pack(conn)
        out = StoredEvents(WriteCounts())
        if pack is None:
            out.unprocessed = len(rows)
            return out
        done = process_chunk(conn, pack, _still_pending(conn, rows))
        out.processed = done.events
        out.rules_fired = done.rules_fired
        out.rules_version = pack.version
        return out

    return _retried(engine, step, "processing chunk")
