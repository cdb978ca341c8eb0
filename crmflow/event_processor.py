"""The event processor: runs events stored unprocessed through the active rules, continuously.

An API client that asks for an asynchronous accept (`Prefer: respond-async`) gets its batch
stored — durably, deduplicated, conflicts reported, unsubscribes applied at once — and a
202 at once; this processor then runs the stored events through the rules: oldest first (by
arrival), up to `workers * chunk_size` events at a time, each customer's events in one
worker process in arrival order (`crmflow.import_workers.ImportPool.add_stored`), one
transaction per chunk, as `crmflow events import` does. An event is applied once: the chunk
marks it processed in the transaction that applies it, and a chunk that races another
writer (`crmflow events process`, a synchronous request) is undone and tried again.

One processor per database works at a time: it holds a lock for as long as it runs (a
PostgreSQL advisory lock; for SQLite a file lock beside the database file, or an in-process
lock for an in-memory database). A second one waits for the lock and takes over when the
first stops. `crmflow api` runs one beside the server; `crmflow events process --follow`
runs one on its own (production: beside several API processes started without it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Connection, Engine, func, select, text

from crmflow.event_chunks import StoredEvents, process_stored_chunk
from crmflow.import_workers import ImportPool, can_share
from crmflow.metrics import record_processed
from crmflow.processing import active_pack
from store.db import utcnow
from store.ingest import WriteCounts
from store.models import EventRow

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: b"crmflowP" as a signed 64-bit integer
ADVISORY_KEY = int.from_bytes(b"crmflowP", "big", signed=True)
LOCK_RETRY_SECONDS = 2.0
ERROR_BACKOFF_SECONDS = 5.0

_MEMORY_LOCKS: dict[int, threading.Lock] = {}
_MEMORY_LOCKS_GUARD = threading.Lock()


class ProcessorLock:
    """The lock that lets one event processor per database work at a time (not reentrant:
    a second `ProcessorLock` of the same database fails to take it, in this process too)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._file: IO[bytes] | None = None
        self._memory: threading.Lock | None = None

    def _path(self) -> str | None:
        database = self.engine.url.database
        if not can_share(self.engine.url.render_as_string(hide_password=False)) or not database:
            return None
        return database + "-processor.lock"

    def acquire(self) -> bool:
        """Take the lock if it is free; True when taken (now or before)."""
        if self._conn is not None or self._file is not None or self._memory is not None:
            return True
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            if got.scalar_one():
                conn.commit()
                self._conn = conn
                return True
            conn.rollback()
            conn.close()
            return False
        path = self._path()
        if path is None:
            with _MEMORY_LOCKS_GUARD:
                lock = _MEMORY_LOCKS.setdefault(id(self.engine), threading.Lock())
            if lock.acquire(blocking=False):
                self._memory = lock
                return True
            return False
        fh = open(path, "ab")  # noqa: SIM115 - held open for as long as the lock is
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._file = fh
        return True

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a dropped connection released it already
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                self._conn.commit()
            self._conn.close()
            self._conn = None
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._memory is not None:
            self._memory.release()
            self._memory = None


def processor_running(engine: Engine) -> bool:
    """Whether an event processor holds this database's lock right now."""
    probe = ProcessorLock(engine)
    if probe.acquire():
        probe.release()
        return False
    return True


def pending_summary(conn: Connection) -> tuple[int, datetime | None]:
    """How many stored events wait for the rules, and when the oldest of them arrived."""
    e = EventRow
    count, oldest = conn.execute(
        select(func.count(), func.min(e.received_at)).where(e.processed_at.is_(None))
    ).one()
    return int(count), oldest


def pending_rows(conn: Connection, limit: int, after: int = 0) -> list[dict[str, Any]]:
    """Up to `limit` stored events not processed yet with an id above `after`, in arrival
    order (with their id and when each arrived)."""
    e = EventRow
    rows = conn.execute(
        select(e.id, e.event_id, e.customer_id, e.type, e.occurred_at, e.properties, e.received_at)
        .where(e.processed_at.is_(None), e.id > after)
        .order_by(e.id)
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows]


class EventProcessor:
    """Processes stored events as they arrive until stopped (`start`/`stop` run it on a
    thread of this process; `run` on the caller's). With `workers` > 1 (and a database
    several processes can open) the rules run in that many worker processes."""

    def __init__(
        self,
        engine: Engine,
        *,
        workers: int,
        chunk_size: int,
        poll_seconds: float = 0.1,
        linger_seconds: float = 0.0,
    ) -> None:
        self.engine = engine
        self.chunk_size = chunk_size
        self.poll_seconds = poll_seconds
        # a round smaller than a full one waits until its oldest event is this old: under a
        # steady stream, chunks grow towards `chunk_size` (the per-chunk costs are paid
        # once per many events) for at most this much latency
        self.linger_seconds = linger_seconds
        self._url = engine.url.render_as_string(hide_password=False)
        self.workers = workers if can_share(self._url) else 1
        self._pool: ImportPool | None = None
        self._cursor = 0  # the last event id handed out (see `step`)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.total = StoredEvents(WriteCounts())
        self.holding = threading.Event()  # set while this processor holds the lock
        self.on_round: Callable[[StoredEvents], None] | None = None  # after a round's work

    # -- one step ------------------------------------------------------------------------

    def step(self, *, linger: bool = False) -> tuple[StoredEvents, bool]:
        """One step of the processing pipeline: what finished during it, and whether there
        may be more to do right away (False: nothing pending, no rules version deployed,
        or — `linger` — fewer than a full round wait and the oldest of them arrived less
        than `linger_seconds` ago).

        Pending events are read in arrival order after a cursor (the last id handed out),
        up to `workers * chunk_size` at a time, and handed to the worker processes without
        waiting for the chunks before them (each worker's queue holds two), so reading,
        sending and the rules overlap as in a file import. When nothing is left after the
        cursor, the chunks in flight are waited for and the cursor goes back to the start:
        an event whose transaction committed after ones with higher ids (PostgreSQL) is
        found by that rescan."""
        done = StoredEvents(WriteCounts())
        pool = self._start_pool()
        if pool is not None:
            for got in pool.ready():
                done.add(got)
        full = self.workers * self.chunk_size
        with self.engine.connect() as conn:
            if active_pack(conn) is None:
                return self._tally(done), False
            rows = pending_rows(conn, full, after=self._cursor)
        if rows and linger and len(rows) < full and self.linger_seconds > 0:
            waited = (utcnow() - rows[0]["received_at"]).total_seconds()
            if waited < self.linger_seconds:
                rows = []  # let the round fill up; meanwhile finish what is in flight
                if pool is None or not pool.in_flight:
                    return self._tally(done), False
        if rows:
            self._cursor = rows[-1]["id"]
            if pool is None:
                for start in range(0, len(rows), self.chunk_size):
                    chunk = rows[start : start + self.chunk_size]
                    done.add(process_stored_chunk(self.engine, chunk))
            else:
                pool.add_stored(rows)
                pool.send_buffered()
            return self._tally(done), True
        if pool is not None and pool.in_flight:
            for got in pool.flush():
                done.add(got)
            return self._tally(done), True
        if self._cursor:
            self._cursor = 0  # rescan from the start: nothing is in flight now
            return self._tally(done), True
        return self._tally(done), False

    def _tally(self, done: StoredEvents) -> StoredEvents:
        self.total.add(done)
        record_processed(done.processed, done.rules_fired)  # each chunk committed already
        return done

    def drain(self) -> StoredEvents:
        """Steps until nothing is pending (or no rules version is deployed)."""
        done = StoredEvents(WriteCounts())
        while True:
            got, more = self.step()
            done.add(got)
            if not more:
                return done

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Take the database's processor lock (waiting for it), then process until `stop`."""
        lock = ProcessorLock(self.engine)
        try:
            while not lock.acquire():
                if self._stop.wait(LOCK_RETRY_SECONDS):
                    return
            self.holding.set()
            log.info("event processor: running (%d worker process(es))", self.workers)
            self._start_pool()  # now, not at the first event: a process starts in seconds
            while not self._stop.is_set():
                try:
                    got, more = self.step(linger=True)
                except Exception:  # a bad rules version, a lost database: log, back off, go on
                    log.exception("event processor: a round failed; trying again shortly")
                    self._stop_pool()
                    self._cursor = 0
                    self._stop.wait(ERROR_BACKOFF_SECONDS)
                    self._start_pool()
                    continue
                if got.processed and self.on_round is not None:
                    self.on_round(got)
                if not more:
                    self._stop.wait(self.poll_seconds)
        finally:
            self._stop_pool()
            self.holding.clear()
            lock.release()

    def start(self) -> EventProcessor:
        self._thread = threading.Thread(target=self.run, name="event-processor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _start_pool(self) -> ImportPool | None:
        """The worker processes (started if they are not), or None with one worker."""
        if self._pool is None and self.workers > 1:
            self._pool = ImportPool(
                self._url, self.workers, chunk_size=self.chunk_size, process=True
            )
        return self._pool

    def _stop_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                pool.finish()


@contextlib.contextmanager
def running_processor(engine: Engine, *, workers: int, chunk_size: int) -> Iterator[EventProcessor]:
    """An event processor on a thread of this process for the duration of the block."""
    processor = EventProcessor(engine, workers=workers, chunk_size=chunk_size).start()
    try:
        yield processor
    finally:
        processor.stop()
