"""Parallel event import: chunks partitioned by customer across worker processes.

Every event of one customer goes to the same worker, in file order, so each customer's events
are still evaluated one after another in arrival order — what the rules need — while different
customers are evaluated on different cores. A worker stores its chunks with
`crmflow.event_chunks.store_chunk`: a transaction per chunk, rolled back and tried again when it
races another writer (PostgreSQL row-locks the chunk's customers; on SQLite the one write
lock is taken only after the rules have run, and a chunk whose customers another writer
changed meanwhile is redone). Workers are started with `spawn` (no engine, pool or
durable_rules host is shared with the parent), and each queue holds at most two chunks, so
the parent never reads far ahead of the database. Each row travels with its line in the file,
and a chunk's result (counts, conflicts with their lines) comes back pickled.

The same pool runs events stored unprocessed through the rules (`add_stored`, for the event
processor of `crmflow.event_processor`): the same partition by customer, so the order of a
customer's events holds there too.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import pickle
import queue
import traceback
import zlib
from typing import Any

from sqlalchemy.engine import make_url

QUEUED_PER_WORKER = 2
POLL_SECONDS = 1.0


def partition(customer_id: str, workers: int) -> int:
    """The worker that handles `customer_id` (stable across runs and processes)."""
    return zlib.crc32(customer_id.encode()) % workers


def can_share(url: str) -> bool:
    """Whether several processes can open this database (not an in-memory SQLite one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return True
    return parsed.database not in (None, "", ":memory:") and parsed.query.get("mode") != "memory"


def _worker(url: str, inbox: Any, outbox: Any) -> None:
    from crmflow.event_chunks import process_stored_chunk, store_chunk
    from store.db import make_engine

    engine = make_engine(url)
    try:
        while True:
            item = inbox.get()
            if item is None:
                return
            rows, at, process = item
            try:
                if at is None:  # stored already: only run them through the rules
                    done = process_stored_chunk(engine, rows)
                else:
                    done = store_chunk(engine, rows, process=process, at=at)
                outbox.put(("ok", done))
                # what survives a chunk (the kept rule states) lives on: keep the cyclic
                # garbage collector from walking it again after every chunk
                gc.freeze()
            except BaseException as exc:  # reported to the parent, which re-raises it
                try:
                    pickle.dumps(exc)
                    sent: BaseException = exc
                except Exception:
                    sent = RuntimeError(f"{type(exc).__name__}: {exc}")
                outbox.put(("error", sent, traceback.format_exc()))
                return
    finally:
        engine.dispose()


class WorkerFailed(RuntimeError):
    """A worker process ended without reporting (killed, out of memory)."""


class ImportPool:
    """`workers` processes storing event chunks (`add`) or processing stored ones
    (`add_stored`); rows are routed by customer."""

    def __init__(self, url: str, workers: int, *, chunk_size: int, process: bool) -> None:
        ctx = mp.get_context("spawn")
        self.chunk_size = chunk_size
        self.process = process
        self.results: list[Any] = []
        self._pending = 0
        self._stored = False  # rows stored already (`add_stored`): only processed
        # per worker: its rows, and where each came from (a file's line: conflicts name it)
        self._buffers: list[list[dict[str, Any]]] = [[] for _ in range(workers)]
        self._places: list[list[int]] = [[] for _ in range(workers)]
        self._inboxes = [ctx.Queue(maxsize=QUEUED_PER_WORKER) for _ in range(workers)]
        self._outbox = ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker, args=(url, q, self._outbox), daemon=True)
            for q in self._inboxes
        ]
        for p in self._procs:
            p.start()

    def add(self, rows: list[dict[str, Any]], at: list[int]) -> None:
        """Route validated event rows (from places `at`) to their workers; full chunks are
        sent at once."""
        self._route(rows, at)

    def add_stored(self, rows: list[dict[str, Any]]) -> None:
        """Route stored, unprocessed events (in arrival order) to their workers, to be run
        through the rules; full chunks are sent at once. Not mixed with `add` in one pool."""
        self._stored = True
        self._route(rows, [0] * len(rows))

    def _route(self, rows: list[dict[str, Any]], at: list[int]) -> None:
        n = len(self._buffers)
        for row, place in zip(rows, at, strict=True):
            i = partition(row["customer_id"], n)
            self._buffers[i].append(row)
            self._places[i].append(place)
        for i, buf in enumerate(self._buffers):
            if len(buf) >= self.chunk_size:
                self._send(i, buf, self._places[i])
                self._buffers[i], self._places[i] = [], []

    @property
    def in_flight(self) -> int:
        """Chunks sent and not reported back yet."""
        return self._pending

    def send_buffered(self) -> None:
        """Send every worker's buffered rows now, a chunk smaller than `chunk_size` too,
        without waiting for results (only for room in a worker's queue)."""
        for i, buf in enumerate(self._buffers):
            if buf:
                self._send(i, buf, self._places[i])
                self._buffers[i], self._places[i] = [], []

    def ready(self) -> list[Any]:
        """The results that have come back since the last call (does not wait)."""
        self._collect(block=False)
        results, self.results = self.results, []
        return results

    def flush(self) -> list[Any]:
        """Send what is buffered and wait for every chunk sent; the results gathered since
        the last flush. The workers keep running. A worker's exception is raised here."""
        self.send_buffered()
        while self._pending:
            self._collect(block=True)
        results, self.results = self.results, []
        return results

    def finish(self) -> list[Any]:
        """Send what is buffered, wait for every chunk, stop the workers; the chunks'
        results. A worker's exception is raised here."""
        try:
            results = self.flush()
            for q in self._inboxes:
                q.put(None)
            for p in self._procs:
                p.join(30)
        finally:
            self.stop()
        return results

    def stop(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        for q in [*self._inboxes, self._outbox]:
            q.close()
            q.cancel_join_thread()

    def _send(self, index: int, rows: list[dict[str, Any]], at: list[int]) -> None:
        while True:
            self._collect(block=False)
            try:
                item = (rows, None if self._stored else at, self.process)
                self._inboxes[index].put(item, timeout=POLL_SECONDS)
            except queue.Full:
                continue
            self._pending += 1
            return

    def _collect(self, *, block: bool) -> None:
        while self._pending:
            try:
                item = self._outbox.get(block, POLL_SECONDS)
            except queue.Empty:
                self._check_alive()
                if not block:
                    return
                continue
            self._take(item)
            if block:
                return

    def _take(self, item: tuple[Any, ...]) -> None:
        self._pending -= 1
        if item[0] == "error":
            _, exc, trace = item
            exc.add_note("in an import worker:\n" + trace)
            raise exc
        self.results.append(item[1])

    def _check_alive(self) -> None:
        for p in self._procs:
            if not p.is_alive():
                # a worker that failed reports before it ends: take its report
                with contextlib.suppress(queue.Empty):
                    self._take(self._outbox.get(timeout=5))
                raise WorkerFailed(f"an import worker ended unexpectedly (exit code {p.exitcode})")
