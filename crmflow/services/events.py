"""Customer events in: the one entry point every face uses to store events and run them
through the active rules.

Idempotent by `event_id`: an id stored already with the same content has no second effect
(a duplicate); the same id with *other* content is a conflict, reported, never applied and
never counted as a duplicate.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select

from crmflow.formats import Event
from crmflow.ingest import StoredEvents, store_chunk
from crmflow.processing import ConcurrentProcessing
from crmflow.services.errors import TooLarge, Unavailable
from crmflow.services.runtime import Runtime
from rules.source import RuleFileError
from store.ingest import WriteCounts
from store.models import EventRow

CHUNK_SIZE = 5000


class EventConflict(BaseModel):
    """An event whose id was stored (or sent earlier in the request) with other content."""

    index: int = Field(description="Position in the request (0 for a single event)")
    event_id: str
    differs: list[str] = Field(description="The fields that differ from what is stored")


class EventsReport(BaseModel):
    """What storing a batch of events did."""

    received: int = Field(description="events in the request")
    stored: int = Field(description="events stored now (new event ids)")
    duplicates: int = Field(
        description="events whose event_id was stored already with the same content (or "
        "repeated in the request): no second effect"
    )
    conflicts: list[EventConflict] = Field(
        default_factory=list,
        description="events whose event_id was stored with other content: not applied",
    )
    processed: int = Field(0, description="stored events run through the active rules")
    rules_fired: int = 0
    rules_version: str | None = Field(None, description="the rules version that ran them")
    unprocessed: int = Field(
        0, description="stored events waiting for a rules version: none is deployed yet"
    )
    seconds: float = 0.0


def _canonical(customer_id: str, type_: str, at: datetime, props: Any) -> tuple[Any, ...]:
    instant = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return (
        customer_id,
        type_,
        instant.replace(microsecond=instant.microsecond // 1000 * 1000),
        json.dumps(props or {}, sort_keys=True, default=str),
    )


_FIELDS = ("customer_id", "type", "occurred_at", "properties")


def _differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> list[str]:
    return [name for name, x, y in zip(_FIELDS, a, b, strict=True) if x != y]


def find_conflicts(rt: Runtime, rows: list[dict[str, Any]]) -> list[EventConflict]:
    """Rows whose event id is stored, or repeated earlier in `rows`, with other content."""
    seen: dict[str, tuple[Any, ...]] = {}
    out: list[EventConflict] = []
    for i, r in enumerate(rows):
        key = _canonical(r["customer_id"], r["type"], r["occurred_at"], r.get("properties"))
        first = seen.setdefault(r["event_id"], key)
        if first != key:
            out.append(EventConflict(index=i, event_id=r["event_id"], differs=_differs(first, key)))
    ids = list(seen)
    stored: dict[str, tuple[Any, ...]] = {}
    t = EventRow.__table__
    with rt.engine.connect() as conn:
        for start in range(0, len(ids), 900):
            for row in conn.execute(
                select(
                    t.c.event_id, t.c.customer_id, t.c.type, t.c.occurred_at, t.c.properties
                ).where(t.c.event_id.in_(ids[start : start + 900]))
            ):
                stored[row.event_id] = _canonical(
                    row.customer_id, row.type, row.occurred_at, row.properties
                )
    flagged = {c.index for c in out}
    for i, r in enumerate(rows):
        have = stored.get(r["event_id"])
        if have is None or i in flagged:
            continue
        key = _canonical(r["customer_id"], r["type"], r["occurred_at"], r.get("properties"))
        if have != key:
            out.append(EventConflict(index=i, event_id=r["event_id"], differs=_differs(have, key)))
    return sorted(out, key=lambda c: c.index)


def store_events(rt: Runtime, events: list[Event], *, chunk_size: int = CHUNK_SIZE) -> EventsReport:
    """Store validated events and run the new ones through the active rules, one
    transaction per chunk. Conflicting ids are left out and reported.

    `TooLarge` past the batch limit; `Unavailable` when the active rules do not load or a
    chunk kept racing another writer (nothing of that chunk is stored: send it again).
    """
    limit = rt.settings.api_max_batch
    if len(events) > limit:
        raise TooLarge(f"{len(events)} events in one request; at most {limit} (api_max_batch)")
    started = time.perf_counter()
    rows = [e.model_dump() for e in events]
    conflicts = find_conflicts(rt, rows) if rows else []
    bad = {c.index for c in conflicts}
    keep = [r for i, r in enumerate(rows) if i not in bad]
    total = StoredEvents(WriteCounts())
    try:
        for start in range(0, len(keep), chunk_size):
            total.add(store_chunk(rt.engine, keep[start : start + chunk_size]))
    except RuleFileError as exc:
        raise Unavailable(f"the active rules version does not load: {exc}") from exc
    except ConcurrentProcessing as exc:
        raise Unavailable(f"{exc}; send the request again") from exc
    return EventsReport(
        received=len(rows),
        stored=total.counts.inserted,
        duplicates=total.counts.unchanged,
        conflicts=conflicts,
        processed=total.processed,
        rules_fired=total.rules_fired,
        rules_version=total.rules_version,
        unprocessed=total.unprocessed,
        seconds=round(time.perf_counter() - started, 3),
    )
