"""Customers and events in: the file import, and the one chunk loop every arrival uses.

Rows are validated one by one with the canonical models; good rows are written in chunks
(one transaction per chunk, `ChunkLoop`), bad rows are reported with their line number and
the field at fault and written to `<file>.rejects.jsonl` next to the input. With a rules
version deployed, an event's properties must also match the programme's declarations
(`rules.properties`), and imported members without a tier get its welcome tier
(`store.tiers`). Re-importing a file changes nothing: customers are keyed by
`customer_id`, events by `event_id`. An event whose id is stored (or came earlier in the
file) with other content is a conflict: not applied, reported and written to the rejects
file with the fields that differ. A row naming a customer whose personal data was erased
(`crmflow customer erase`) is rejected — "customer X was erased on DATE" — so an old file
cannot bring the person back; the ids of each chunk are looked up in one statement.

The HTTP API stores its requests through the same `ChunkLoop`, and every face reports in the
words of `crmflow.ingest_report.IngestReport`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine

from crmflow.domain import Customer, Event, describe_errors
from crmflow.event_chunks import StoredEvents, store_chunk
from crmflow.import_workers import ImportPool, can_share
from crmflow.ingest_report import IngestReport, RowFault
from crmflow.metrics import record_ingested, record_processed
from rules.models import Program
from rules.pack import load_program
from rules.properties import check_properties
from rules.source import parse_yaml
from store.db import utcnow
from store.ingest import Conflict, erased_among, upsert_customers
from store.rule_versions import active_version, stored_source
from store.tiers import welcome_members

Kind = Literal["customers", "events"]
IMPORT_WELCOME = "welcome tier: a member imported without a tier"
_JSON_COLUMNS = {"consent", "attributes", "properties"}


MAX_LINE_CHARS = 100_000  # one line of a file; a row's JSON fields are at most 32 KB each


@dataclass(frozen=True)
class RowProblem:
    """A row that could not even be turned into fields (a bad CSV cell, a line too long)."""

    message: str


TOO_LONG = RowProblem(f"the line is longer than {MAX_LINE_CHARS:,} characters; nothing was read")


def _bounded_lines(fh: Any, too_long: list[int]) -> Iterator[str]:
    """The file's lines, each read with a limit: a longer line is skipped without being held
    in memory (an empty line stands in for it) and its number added to `too_long`."""
    number = 0
    while line := fh.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            while (rest := fh.readline(65_536)) and not rest.endswith("\n"):
                pass
            too_long.append(number)
            yield "\n"
            continue
        yield line


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
    too_long: list[int] = []
    reader = csv.DictReader(_bounded_lines(fh, too_long))
    if too_long:
        raise ImportError_(f"the header row is longer than {MAX_LINE_CHARS:,} characters")
    if not reader.fieldnames:
        raise ImportError_("the CSV file has no header row")
    while True:
        got: dict[str | None, Any] | csv.Error | None
        try:
            got = next(reader)
        except StopIteration:
            got = None
        except csv.Error as exc:  # a quoted cell over many lines, past the field limit
            got = exc
        while too_long:  # skipped lines come out in their place, before the next row
            yield too_long.pop(0), TOO_LONG, ""
        if got is None:
            return
        if isinstance(got, csv.Error):
            yield reader.line_num, RowProblem(f"not a CSV row: {got}"), ""
            continue
        raw = got
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


def json_lines(fh: Any) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of an open JSON Lines text file."""
    for number, line in enumerate(fh, start=1):
        text = line.strip()
        if text:
            yield number, text


def read_json_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a JSON Lines file (UTF-8): the one
    JSON Lines reader (imports, `crmflow rules test`, simulations)."""
    with path.open(encoding="utf-8") as fh:
        yield from json_lines(fh)


def _jsonl_rows(fh: Any) -> Iterator[tuple[int, Any, str]]:
    too_long: list[int] = []
    for number, line in enumerate(_bounded_lines(fh, too_long), start=1):
        if too_long:
            yield too_long.pop(), TOO_LONG, ""
        elif text := line.strip():
            yield number, text, text


def _open_rows(path: Path, fh: Any) -> Iterator[tuple[int, Any, str]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(fh)
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return _jsonl_rows(fh)
    raise ImportError_(f"{path}: unknown file type {suffix!r}; expected .jsonl, .ndjson or .csv")


def erased_reason(customer_id: str, erased_at: datetime) -> str:
    """Why a row naming an erased customer is rejected (a report, a rejects file)."""
    return (
        f"field 'customer_id': customer {customer_id!r} was erased on "
        f"{erased_at:%Y-%m-%d}; rows naming an erased customer are not imported"
    )


def conflict_reason(c: Conflict) -> str:
    """A conflict in words (a report's rows at fault, a rejects file, a 409)."""
    return (
        f"event_id {c.event_id!r} names another event (stored, or earlier in this input): "
        f"it differs in {', '.join(c.differs)}"
    )


# the programme of each rules version, by version (a content hash: the same version is the
# same programme in every database)
_PROGRAMS: dict[str, Program] = {}


def active_program(conn: Connection) -> tuple[str, Program] | None:
    """The active rules version and its programme (read once per version per process);
    None when no rules version is deployed. Only the programme file is read, so a door
    check does not wait for the rules to compile. `SourceError` when it does not load."""
    version = active_version(conn)
    if version is None:
        return None
    program = _PROGRAMS.get(version)
    if program is None:
        source = stored_source(conn, version)
        if source is None:  # deployed and gone between the two reads
            return None
        program = load_program(parse_yaml(source.program_text, source.program_path))
        _PROGRAMS[version] = program
    return version, program


def property_faults(event: Event, program: Program | None) -> list[tuple[str, str]]:
    """The fields of a validated event that the programme's declarations refuse: `(field,
    reason)` (`rules.properties.check_properties`); none when no rules are deployed."""
    if program is None or not event.properties:
        return []
    return check_properties(event.type, event.properties, program)


Guard = Callable[[], AbstractContextManager[Any]]


class ChunkLoop:
    """The one chunk loop every arrival uses: validated rows in (`add`, with where each came
    from: a file's line, a request's position), stored `chunk_size` at a time, one
    transaction per chunk; what each chunk did is summed into `report`.

    Events: with `workers` > 1 and more than one chunk, the chunks go to that many worker
    processes, each taking a share of the customers (`crmflow.import_workers`). `guard`
    wraps each chunk stored in this process (the API serialises chunks on SQLite);
    `on_conflict` sees every conflicting row (a file import writes them to its rejects file).

    Rows naming a customer whose data was erased are rejected (counted, a fault with
    `erased_reason`, and handed to `on_reject` with where they came from), the chunk's ids
    looked up in one statement before it is stored.

    Customers: with a rules version deployed, the chunk's members without a tier get the
    programme's welcome tier in the chunk's transaction (`store.tiers.welcome_members`).
    The active programme is read once per loop (`program`).
    """

    def __init__(
        self,
        engine: Engine,
        report: IngestReport,
        *,
        chunk_size: int,
        process: bool = True,
        workers: int = 1,
        guard: Guard | None = None,
        on_conflict: Callable[[Conflict], None] | None = None,
        on_reject: Callable[[int, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.report = report
        self.chunk_size = chunk_size
        self.process = process
        self.guard = guard
        self.on_conflict = on_conflict
        self.on_reject = on_reject
        self._rows: list[dict[str, Any]] = []
        self._at: list[int] = []
        self._url = engine.url.render_as_string(hide_password=False)
        self._workers = workers if report.kind == "events" and can_share(self._url) else 1
        self._pool: ImportPool | None = None
        self._active: tuple[str, Program] | None = None
        self._active_read = False

    def __enter__(self) -> ChunkLoop:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, row: dict[str, Any], at: int) -> bool:
        """Queue a validated row; True when that filled a chunk, which was stored (or sent
        to a worker)."""
        self._rows.append(row)
        self._at.append(at)
        if len(self._rows) < self.chunk_size:
            return False
        self._flush(last=False)
        return True

    def finish(self) -> IngestReport:
        """Store what is queued, wait for the workers; the report, its faults in order."""
        self._flush(last=True)
        if self._pool is not None:
            for got in self._pool.finish():
                self._absorb(got)
        self.report.faults.sort(key=lambda f: f.at)
        if self.report.kind == "events" and self.report.rejected:
            record_ingested(
                self._via, stored=0, duplicates=0, conflicts=0, rejected=self.report.rejected
            )
        return self.report

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()

    def active(self) -> tuple[str, Program] | None:
        """The active rules version and its programme, read once for this loop (None: no
        rules deployed)."""
        if not self._active_read:
            with self.engine.connect() as conn:
                self._active = active_program(conn)
            self._active_read = True
        return self._active

    def program(self) -> Program | None:
        """The active programme, read once for this loop (None: no rules deployed)."""
        active = self.active()
        return active[1] if active is not None else None

    def _flush(self, *, last: bool) -> None:
        rows, at = self._rows, self._at
        if not rows:
            return
        self._rows, self._at = [], []
        rows, at = self._without_erased(rows, at)
        if not rows:
            return
        if self.report.kind == "customers":
            active = self.active()
            with self._guarded(), self.engine.begin() as conn:
                now = utcnow()
                self._absorb(StoredEvents(upsert_customers(conn, rows, now)))
                if active is not None:
                    version, program = active
                    ids = [r["customer_id"] for r in rows]
                    welcome_members(conn, program, now, ids, IMPORT_WELCOME, rules_version=version)
        elif self._pool is None and (self._workers == 1 or last):
            with self._guarded():
                self._absorb(store_chunk(self.engine, rows, process=self.process, at=at))
        else:
            if self._pool is None:  # more than a chunk of events: worth starting the workers
                self._pool = ImportPool(
                    self._url, self._workers, chunk_size=self.chunk_size, process=self.process
                )
            self._pool.add(rows, at)

    def _without_erased(
        self, rows: list[dict[str, Any]], at: list[int]
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """The rows not naming an erased customer; the others are rejected."""
        with self.engine.connect() as conn:
            erased = erased_among(conn, [r["customer_id"] for r in rows])
        if not erased:
            return rows, at
        kept: list[dict[str, Any]] = []
        kept_at: list[int] = []
        for row, where in zip(rows, at, strict=True):
            when = erased.get(row["customer_id"])
            if when is None:
                kept.append(row)
                kept_at.append(where)
                continue
            reason = erased_reason(row["customer_id"], when)
            self.report.rejected += 1
            self.report.fault(RowFault(at=where, problem="rejected", reason=reason))
            if self.on_reject is not None:
                self.on_reject(where, reason, row)
        return kept, kept_at

    def _guarded(self) -> AbstractContextManager[Any]:
        return self.guard() if self.guard is not None else nullcontext()

    def _absorb(self, got: StoredEvents) -> None:
        r, counts = self.report, got.counts
        r.stored += counts.stored
        r.updated += counts.updated
        r.duplicates += counts.duplicates
        r.conflicts += len(counts.conflicts)
        for c in counts.conflicts:
            r.fault(
                RowFault(
                    at=c.at,
                    problem="conflict",
                    event_id=c.event_id,
                    differs=list(c.differs),
                    reason=conflict_reason(c),
                )
            )
            if self.on_conflict is not None:
                self.on_conflict(c)
        r.processed += got.processed
        r.unprocessed += got.unprocessed
        r.rules_fired += got.rules_fired
        r.rules_version = got.rules_version or r.rules_version
        # committed by now (a chunk's own transaction, or a worker process's)
        if r.kind == "events":
            record_ingested(
                self._via,
                stored=counts.stored,
                duplicates=counts.duplicates,
                conflicts=len(counts.conflicts),
                rejected=0,
            )
        record_processed(got.processed, got.rules_fired)

    @property
    def _via(self) -> str:
        return "api" if self.report.source == "api" else "file"


def _json_default(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


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
) -> IngestReport:
    """Validate and write every row of `path`; return what happened.

    With a rules version deployed, an event's properties must also match the programme's
    declarations (`rules.properties`: types, money, currency), read once per import; a row
    that does not is rejected like any other invalid row. With none deployed, only the
    model's JSON checks apply.

    New events go through the active rules version in the same transaction that stores
    them (`process=False` only stores them, for `crmflow events process` later). With
    `workers` > 1, a file of events longer than one chunk is stored by that many worker
    processes, each taking a share of the customers (`crmflow.import_workers`); an event id
    repeated with another customer id then meets its first row in whichever order the
    workers get to them, so which of the two rows is reported as the conflict can vary.
    """
    model: type[BaseModel] = Customer if kind == "customers" else Event
    context = {"phone_region": phone_region}
    report = IngestReport(kind=kind, source=str(path))
    started = time.perf_counter()
    reject_file = rejects_path(path)
    reject_fh: Any = None

    def reject(line: int, error: str, row: str) -> None:
        nonlocal reject_fh
        if reject_fh is None:
            # rejected rows hold personal data (e-mail, phone): readable by the owner only
            fd = os.open(reject_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.chmod(reject_file, 0o600)  # an older file keeps its mode through O_TRUNC
            reject_fh = open(fd, "w", encoding="utf-8")  # noqa: SIM115 - closed at the end
        record = {"line": line, "error": error, "row": row}
        reject_fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def conflicting(c: Conflict) -> None:
        row = json.dumps(c.row, ensure_ascii=False, default=_json_default)
        reject(c.at, "conflict: " + conflict_reason(c), row)

    def refused(line: int, reason: str, row: dict[str, Any]) -> None:
        reject(line, reason, json.dumps(row, ensure_ascii=False, default=_json_default))

    try:
        with (
            path.open("rb") as binary,
            io.TextIOWrapper(binary, "utf-8", newline="") as fh,
            ChunkLoop(
                engine,
                report,
                chunk_size=chunk_size,
                process=process,
                workers=workers,
                on_conflict=conflicting,
                on_reject=refused,
            ) as loop,
        ):
            program = loop.program() if kind == "events" else None
            for line, payload, raw in _open_rows(path, fh):
                report.received += 1
                try:
                    if isinstance(payload, RowProblem):
                        raise ValueError(payload.message)
                    if isinstance(payload, str):
                        item = model.model_validate_json(payload, context=context)
                    else:
                        item = model.model_validate(payload, context=context)
                    if isinstance(item, Event) and program is not None:
                        faults = property_faults(item, program)
                        if faults:
                            raise ValueError(
                                "; ".join(f"field {where!r}: {why}" for where, why in faults)
                            )
                except (ValidationError, ValueError) as exc:
                    error = describe_errors(exc) if isinstance(exc, ValidationError) else str(exc)
                    report.rejected += 1
                    report.fault(RowFault(at=line, problem="rejected", reason=error))
                    reject(line, error, raw)
                    continue
                row = item.model_dump()
                if isinstance(item, Customer):
                    row["row_hash"] = item.content_hash()
                if loop.add(row, line) and on_progress:
                    # the binary offset: text-mode tell() is off while iterating
                    on_progress(binary.tell())
            loop.finish()
    finally:
        if reject_fh is not None:
            reject_fh.close()
    if reject_fh is None and reject_file.exists():
        reject_file.unlink()  # an old rejects file would describe a run that is gone
    report.rejects_file = str(reject_file) if reject_fh is not None else None
    report.seconds = round(time.perf_counter() - started, 3)
    if on_progress:
        on_progress(path.stat().st_size)
    return report
