"""Customer events in: the one entry point every face uses to store events and run them
through the active rules.

Idempotent by `event_id`: an id stored already with the same content has no second effect
(a duplicate); the same id with *other* content is a conflict, reported with its position,
never applied and never counted as a duplicate. A request goes through the same chunk loop
and chunk size as `crmflow events import` (`crmflow.ingest.ChunkLoop`), which finds the
conflicts as it stores; the report is the import's (`IngestReport`).

At the door, with a rules version deployed, each event's properties must match the
programme's declarations (`rules.properties`); a request with one that does not is refused
whole (`Invalid`, naming `events.<i>.properties.<name>`). With no rules deployed, only the
model's JSON checks apply.

Two ways to accept: synchronous (the rules run before the answer, as before) or
asynchronous (`process=False`: stored, deduplicated, unsubscribes applied, and the rules run
shortly after by the event processor, `crmflow.event_processor`); `backlog` says how many
stored events still wait for the rules.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine

from crmflow.domain import Event
from crmflow.event_processor import EventProcessor, pending_summary, processor_running
from crmflow.ingest import ChunkLoop, property_faults
from crmflow.ingest_report import IngestReport
from crmflow.processing import ConcurrentProcessing
from crmflow.services.errors import FieldProblem, Invalid, TooLarge, Unavailable
from crmflow.services.runtime import Runtime
from rules.source import SourceError
from store.rule_versions import active_source

# On SQLite, chunks evaluated at the same time by the threads of one server lose the
# stale-state check against each other (the one write lock is taken after the rules ran)
# and are evaluated again: one chunk at a time per process is faster. PostgreSQL row-locks
# the chunk's customers, so its chunks run side by side.
_SQLITE_CHUNKS = threading.Lock()


def _one_chunk_at_a_time(engine: Engine) -> AbstractContextManager[Any]:
    return _SQLITE_CHUNKS if engine.dialect.name == "sqlite" else nullcontext()


def store_events(rt: Runtime, events: list[Event], *, process: bool = True) -> IngestReport:
    """Store validated events and run the new ones through the active rules, one
    transaction per chunk of `import_chunk_size`. Conflicting ids are left out and listed
    with their position in `events`. `process=False` only stores them (an `unsubscribed`
    still takes consent away at once), for the event processor: their count is the
    report's `unprocessed`.

    With a rules version deployed, every event's properties must match the programme's
    declarations first (`rules.properties`: declared types, money, currency): `Invalid`
    naming each field at fault (`events.<i>.properties.amount`), and nothing of the request
    is stored. With none deployed only the model's JSON checks apply.

    `TooLarge` past the batch limit; `Unavailable` when the active rules do not load or a
    chunk kept racing another writer (nothing of that chunk is stored: send it again).
    """
    limit = rt.settings.api_max_batch
    if len(events) > limit:
        raise TooLarge(f"{len(events)} events in one request; at most {limit} (api_max_batch)")
    started = time.perf_counter()
    report = IngestReport(kind="events", source="api", received=len(events)).list_all_faults()
    try:
        with ChunkLoop(
            rt.engine,
            report,
            chunk_size=rt.settings.import_chunk_size,
            process=process,
            guard=lambda: _one_chunk_at_a_time(rt.engine),
        ) as loop:
            program = loop.program()
            problems = [
                FieldProblem(f"events.{i}.{where}", why)
                for i, event in enumerate(events)
                for where, why in property_faults(event, program)
            ]
            if problems:
                raise Invalid(problems)
            for i, event in enumerate(events):
                loop.add(event.model_dump(), i)
            loop.finish()
    except SourceError as exc:
        raise Unavailable(f"the active rules version does not load: {exc}") from exc
    except ConcurrentProcessing as exc:
        raise Unavailable(f"{exc}; send the request again") from exc
    report.seconds = round(time.perf_counter() - started, 3)
    return report


class Backlog(BaseModel):
    """Stored events that wait for the rules (accepted asynchronously, or imported with
    processing left for later)."""

    pending: int = Field(description="stored events not run through the rules yet")
    oldest_received_at: datetime | None = Field(
        None, description="when the oldest of them arrived (UTC)"
    )
    rules_deployed: bool = Field(description="whether a rules version is active to run them")
    processor_running: bool = Field(
        description="whether an event processor works on this database now (`crmflow api` "
        "runs one; `crmflow events process --follow` runs one on its own)"
    )


def backlog(rt: Runtime) -> Backlog:
    """How many stored events wait for the rules, and whether anything will run them."""
    with rt.engine.connect() as conn:
        pending, oldest = pending_summary(conn)
        deployed = active_source(conn) is not None
    return Backlog(
        pending=pending,
        oldest_received_at=oldest,
        rules_deployed=deployed,
        processor_running=processor_running(rt.engine),
    )


def event_processor(rt: Runtime, workers: int | None = None) -> EventProcessor:
    """An event processor for this runtime's database (not started): `workers` processes
    (default `import_workers`), chunks of `import_chunk_size`, waiting up to
    `process_linger_seconds` for a round to fill."""
    return EventProcessor(
        rt.engine,
        workers=workers or rt.settings.import_workers,
        chunk_size=rt.settings.import_chunk_size,
        linger_seconds=rt.settings.process_linger_seconds,
    )
