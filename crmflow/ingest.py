"""Import customers and events from JSON Lines or CSV files.

Rows are validated one by one with the canonical models; good rows are written in chunks
(one transaction per chunk), bad rows are reported with their line number and the field at
fault and written to `<file>.rejects.jsonl` next to the input. Re-importing a file changes
nothing: customers are keyed by `customer_id`, events by `event_id`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine

from crmflow.formats import Customer, Event, describe_errors
from crmflow.import_workers import ImportPool, can_share
from crmflow.processing import (
    RACE_RETRIES,
    UNSUBSCRIBED,
    ConcurrentProcessing,
    active_pack,
    process_chunk,
    revoke_consents,
)
from store.db import utcnow
from store.ingest import WriteCounts, insert_events, new_events, upsert_customers

log = logging.getLogger(__name__)

Kind = Literal["customers", "events"]
MAX_REPORTED = 20
_JSON_COLUMNS = {"consent", "attributes", "properties"}


@dataclass(frozen=True)
class RowProblem:
    """A CSV row that could not even be turned into fields."""

    message: str


@dataclass
class Reject:
    line: int
    error: str


@dataclass
class ImportReport:
    kind: str
    source: str
    rows: int = 0
    accepted: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects_file: str | None = None
    processed: int = 0
    rules_fired: int = 0
    rules_version: str | None = None
    unprocessed: int = 0  # stored, waiting for a rules version to be deployed
    first_errors: list[Reject] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImportError_(ValueError):
    """The file as a whole cannot be imported (unknown format, unreadable header)."""


def rejects_path(source: Path) -> Path:
    return source.with_name(source.name + ".rejects.jsonl")


def _csv_cell(column: str, value: str) -> Any:
    """CSV cells are text: JSON columns and dotted sub-fields are read as JSON where they parse."""
    if column in _JSON_COLUMNS:
        return json.loads(value)
    if "." in column:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _csv_rows(fh: Any) -> Iterator[tuple[int, Any, str]]:
    reader = csv.DictReader(fh)
    if not reader.fieldnames:
        raise ImportError_("the CSV file has no header row")
    for raw in reader:
        row: dict[str, Any] = {}
        problem = None
        for column, value in raw.items():
            if column is None:
                problem = "row has more cells than the header has columns"
                continue
            if value is None or value == "":
                continue
            try:
                cell = _csv_cell(column, value)
            except json.JSONDecodeError as exc:
                problem = f"field '{column}': not valid JSON ({exc.msg})"
                continue
            head, _, sub = column.partition(".")
            if sub:
                row.setdefault(head, {})[sub] = cell
            else:
                row[column] = cell
        payload = RowProblem(problem) if problem else row
        yield reader.line_num, payload, json.dumps(raw, ensure_ascii=False)


def _jsonl_rows(fh: Any) -> Iterator[tuple[int, Any, str]]:
    for number, line in enumerate(fh, start=1):
        text = line.strip()
        if text:
            yield number, text, text


def _open_rows(path: Path, fh: Any) -> Iterator[tuple[int, Any, str]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(fh)
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return _jsonl_rows(fh)
    raise ImportError_(f"{path}: unknown file type {suffix!r}; expected .jsonl, .ndjson or .csv")


@dataclass
class StoredEvents:
    """What one chunk of events did."""

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
    conn: Connection, rows: list[dict[str, Any]], now: datetime, *, process: bool = True
) -> StoredEvents:
    """Store a chunk of validated events (`Event.model_dump()` dicts) in the caller's
    transaction: new ones only (by event id), run through the active rules version in the
    same transaction, stored already marked processed. With no rules deployed (or
    `process=False`) they are stored unprocessed — but an unsubscribe still takes consent
    away at once. Every way an event arrives (file import, HTTP) comes through here."""
    pack = active_pack(conn) if process else None
    counts, new = new_events(conn, rows, now)
    out = StoredEvents(counts)
    if pack is None:
        counts.inserted = insert_events(conn, new, now) if new else 0
        out.unprocessed = len(new)
        revoke_consents(conn, [e for e in new if e["type"] == UNSUBSCRIBED], now)
        return out

    def store_marked(c: Connection, _ids: list[str], at: datetime) -> int:
        # the chunk's events are stored already marked, after the rules state is loaded
        # (so the history does not count them twice)
        counts.inserted = insert_events(c, new, now, processed_at=at)
        return counts.inserted

    done = process_chunk(conn, pack, new, claim=store_marked)
    out.processed = done.events
    out.rules_fired = done.rules_fired
    out.rules_version = pack.version
    return out


def store_chunk(
    engine: Engine, rows: list[dict[str, Any]], *, process: bool = True
) -> StoredEvents:
    """`store_events` in a transaction of its own; a chunk that raced another writer (of
    the same events, or of the same customers) is rolled back and tried again — the next
    try skips what the other writer stored and reads the state it left."""
    attempt = 1
    while True:
        try:
            with engine.begin() as conn:
                return store_events(conn, rows, utcnow(), process=process)
        except ConcurrentProcessing:
            if attempt == RACE_RETRIES:
                raise
            log.info("events chunk raced another writer; retrying (%d)", attempt)
            attempt += 1


def import_file(
    engine: Engine,
    path: Path,
    kind: Kind,
    *,
    phone_region: str = "CN",
    chunk_size: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    process: bool = True,
    workers: int = 1,
) -> ImportReport:
    """Validate and write every row of `path`; return what happened.

    New events go through the active rules version in the same transaction that stores
    them (`process=False` only stores them, for `crmflow events process` later). With
    `workers` > 1, a file of events longer than one chunk is stored by that many worker
    processes, each taking a share of the customers (`crmflow.import_workers`).
    """
    model: type[BaseModel] = Customer if kind == "customers" else Event
    context = {"phone_region": phone_region}
    report = ImportReport(kind=kind, source=str(path))
    started = time.perf_counter()
    reject_file = rejects_path(path)
    reject_fh = None
    batch: list[dict[str, Any]] = []
    totals = WriteCounts()
    url = engine.url.render_as_string(hide_password=False)
    parallel = workers > 1 and kind == "events" and can_share(url)
    pool: ImportPool | None = None

    def absorb(got: StoredEvents) -> None:
        totals.add(got.counts)
        report.unprocessed += got.unprocessed
        report.processed += got.processed
        report.rules_fired += got.rules_fired
        report.rules_version = got.rules_version or report.rules_version

    def flush(last: bool = False) -> None:
        nonlocal pool
        if not batch:
            return
        if kind == "customers":
            with engine.begin() as conn:
                totals.add(upsert_customers(conn, batch, utcnow()))
        elif pool is None and (not parallel or last):
            absorb(store_chunk(engine, batch, process=process))
        else:
            if pool is None:  # more than a chunk of events: worth starting the workers
                pool = ImportPool(url, workers, chunk_size=chunk_size, process=process)
            pool.add(list(batch))
        batch.clear()

    try:
        with path.open("rb") as binary, io.TextIOWrapper(binary, "utf-8", newline="") as fh:
            for line, payload, raw in _open_rows(path, fh):
                report.rows += 1
                try:
                    if isinstance(payload, RowProblem):
                        raise ValueError(payload.message)
                    if isinstance(payload, str):
                        item = model.model_validate_json(payload, context=context)
                    else:
                        item = model.model_validate(payload, context=context)
                except (ValidationError, ValueError) as exc:
                    error = describe_errors(exc) if isinstance(exc, ValidationError) else str(exc)
                    report.rejected += 1
                    if len(report.first_errors) < MAX_REPORTED:
                        report.first_errors.append(Reject(line, error))
                    if reject_fh is None:
                        reject_fh = reject_file.open("w", encoding="utf-8")
                    reject_fh.write(
                        json.dumps({"line": line, "error": error, "row": raw}, ensure_ascii=False)
                        + "\n"
                    )
                    continue
                row = item.model_dump()
                if isinstance(item, Customer):
                    row["row_hash"] = item.content_hash()
                batch.append(row)
                report.accepted += 1
                if len(batch) >= chunk_size:
                    flush()
                    if on_progress:
                        # the binary offset: text-mode tell() is off while iterating
                        on_progress(binary.tell())
            flush(last=True)
            if pool is not None:
                for got in pool.finish():
                    absorb(got)
    finally:
        if pool is not None:
            pool.stop()
        if reject_fh is not None:
            reject_fh.close()
    if reject_fh is None and reject_file.exists():
        reject_file.unlink()  # an old rejects file would describe a run that is gone
    report.rejects_file = str(reject_file) if report.rejected else None
    report.inserted, report.updated, report.unchanged = (
        totals.inserted,
        totals.updated,
        totals.unchanged,
    )
    report.seconds = round(time.perf_counter() - started, 3)
    if on_progress:
        on_progress(path.stat().st_size)
    return report
