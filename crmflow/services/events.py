"""Customer events in: the one entry point every face uses to store events and run them
through the active rules.

Idempotent by `event_id`: an id stored already with the same content has no second effect
(a duplicate); the same id with *other* content is a conflict, reported with its position,
never applied and never counted as a duplicate. A request goes through the same chunk loop
and chunk size as `crmflow events import` (`crmflow.ingest.ChunkLoop`), which finds the
conflicts as it stores; the report is the import's (`IngestReport`).
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Engine

from crmflow.domain import Event
from crmflow.ingest import ChunkLoop
from crmflow.ingest_report import IngestReport
from crmflow.processing import ConcurrentProcessing
from crmflow.services.errors import TooLarge, Unavailable
from crmflow.services.runtime import Runtime
from rules.source import SourceError

# On SQLite, chunks evaluated at the same time by the threads of one server lose the
# stale-state check against each other (the one write lock is taken after the rules ran)
# and are evaluated again: one chunk at a time per process is faster. PostgreSQL row-locks
# the chunk's customers, so its chunks run side by side.
_SQLITE_CHUNKS = threading.Lock()


def _one_chunk_at_a_time(engine: Engine) -> AbstractContextManager[Any]:
    return _SQLITE_CHUNKS if engine.dialect.name == "sqlite" else nullcontext()


def store_events(rt: Runtime, events: list[Event]) -> IngestReport:
    """Store validated events and run the new ones through the active rules, one
    transaction per chunk of `import_chunk_size`. Conflicting ids are left out and listed
    with their position in `events`.

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
            guard=lambda: _one_chunk_at_a_time(rt.engine),
        ) as loop:
            for i, event in enumerate(events):
                loop.add(event.model_dump(), i)
            loop.finish()
    except SourceError as exc:
        raise Unavailable(f"the active rules version does not load: {exc}") from exc
    except ConcurrentProcessing as exc:
        raise Unavailable(f"{exc}; send the request again") from exc
    report.seconds = round(time.perf_counter() - started, 3)
    return report
