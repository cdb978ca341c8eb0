"""What every CLI module shares: the consoles, failing with a message, settings, engines,
JSON output. The bottom of the CLI: it imports no other CLI module."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import Engine

from crmflow.domain import describe_errors
from crmflow.ingest_report import IngestReport
from crmflow.services.errors import ServiceError
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.db import make_engine
from store.migrate import current_revision, head_revision, upgrade

console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def file_problems(invalid: type[Exception], as_json: bool = False) -> Iterator[None]:
    """Map a service's errors to the CLI's: a file's problems (`invalid`, whose `errors` are
    file:line problems) one per line, or as JSON; any other as `error: …`; exit code 1."""
    try:
        yield
    except invalid as exc:
        errors = list(getattr(exc, "errors", []))
        if as_json:
            emit_json({"ok": False, "errors": [dict(e.__dict__) for e in errors]})
        else:
            for e in errors:
                err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
            err.print(f"{len(errors)} problem(s) found")
        raise typer.Exit(1) from exc
    except ServiceError as exc:
        fail(str(exc))


@contextmanager
def runtime(*, write: bool) -> Iterator[Runtime]:
    """A runtime on the configured database for one command (migrated first when the command
    writes; otherwise it must exist); a service's error becomes `error: …` and exit code 1;
    closed at the end."""
    settings = load_settings()
    engine = migrated_engine(settings) if write else existing_engine(settings)
    rt = Runtime(settings, engine)
    try:
        yield rt
    except ServiceError as exc:
        fail(str(exc))
    finally:
        rt.close()


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"bad settings (CRMFLOW_* variables or crmflow.toml): {describe_errors(exc)}")


def migrated_engine(settings: Settings) -> Engine:
    """An engine on a schema at head (migrations are applied when behind)."""
    engine = make_engine(settings.db_url)
    try:
        upgrade(engine)
    except Exception as exc:  # the database itself is unreachable or refuses
        fail(f"cannot prepare the database at {engine.url!r}: {exc}")
    return engine


def existing_engine(settings: Settings) -> Engine:
    """An engine for read commands: never creates or migrates anything."""
    engine = make_engine(settings.db_url)
    try:
        rev = current_revision(engine)
    except Exception as exc:
        fail(f"cannot open the database at {engine.url!r}: {exc}")
    if rev != head_revision():
        fail(
            f"the database at {engine.url!r} is at schema {rev or 'none'}, not "
            f"{head_revision()}: run `crmflow migrate` (or import some data) first"
        )
    return engine


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def print_report(report: IngestReport) -> None:
    """An import's report in the words of every face (`IngestReport`)."""
    updated = f", {report.updated} updated" if report.kind == "customers" else ""
    conflicts = f", {report.conflicts} conflicts" if report.kind == "events" else ""
    console.print(
        f"{report.source}: {report.received} received: {report.stored} stored{updated}, "
        f"{report.duplicates} duplicates{conflicts}, {report.rejected} rejected, "
        f"in {report.seconds:.2f}s",
        highlight=False,
        soft_wrap=True,  # one line, however long the path: scripts grep it
    )
    if report.kind == "events" and (report.processed or report.unprocessed):
        waiting = (
            f", {report.unprocessed} waiting for a rules version" if report.unprocessed else ""
        )
        version = f" ({report.rules_version})" if report.rules_version else ""
        console.print(
            f"  {report.processed} processed by the rules{version}, "
            f"{report.rules_fired} rules fired{waiting}",
            highlight=False,
            soft_wrap=True,
        )
    for f in report.faults:
        err.print(f"  line {f.at}: {f.problem}: {f.reason}", highlight=False, soft_wrap=True)
    at_fault = report.rejected + report.conflicts
    if at_fault > len(report.faults):
        err.print(f"  … and {at_fault - len(report.faults)} more")
    if report.rejects_file:
        err.print(
            f"  rejected and conflicting rows written to {report.rejects_file}", highlight=False
        )


def masked_url(url: str) -> str:
    """A database URL with its password hidden (`***`)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: show nothing of it
        return "<unreadable URL>"


def minute(at: datetime | None, missing: str = "-") -> str:
    """A moment to the minute, as the CLI's tables show it (`missing` for none)."""
    return at.strftime("%Y-%m-%d %H:%M") if at is not None else missing
