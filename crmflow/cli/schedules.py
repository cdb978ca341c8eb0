"""`crmflow schedules …`: the scheduled automations of a schedules file, as Temporal
Schedules — validate, preview, apply, list, trigger, backfill, pause, resume, runs, schema.

A thin face over `crmflow.services.schedules`: parse the options, call the service, print.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import typer
from rich.table import Table

from automations.models import SchedulesFile
from crmflow.cli import common
from crmflow.schedules import parse_when
from crmflow.services import schedules as service
from crmflow.services.errors import Invalid, ServiceError, Unavailable
from crmflow.services.runtime import Runtime
from store.db import make_engine

schedules_app = typer.Typer(
    help="Scheduled automations: validate, preview, apply, list, trigger, backfill, pause, "
    "resume, runs, schema.",
    no_args_is_help=True,
)

FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        dir_okay=False,
        help="The schedules file [default: the schedules_file setting, examples/schedules.yaml]",
        show_default=False,
    ),
]
NameArg = Annotated[str, typer.Argument(help="A schedule's name in the file")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
T = TypeVar("T")


def _file(given: Path | None) -> Path:
    """`--file`, else the `schedules_file` setting (`CRMFLOW_SCHEDULES_FILE`)."""
    return given if given is not None else common.load_settings().schedules_file


@contextmanager
def _errors(passthrough: tuple[type[ServiceError], ...] = ()) -> Iterator[None]:
    """The one place a service's error becomes a message and exit code 1 (but the errors
    in `passthrough`, which the caller handles)."""
    try:
        yield
    except passthrough:
        raise
    except service.SchedulesFileInvalid as exc:
        for p in exc.problems:
            common.console.print(
                f"[red]error[/red] {p.field}: {p.reason}", highlight=False, soft_wrap=True
            )
        common.fail(str(exc))
    except Invalid as exc:
        hint = " (give one with --file)" if exc.problems[0].field == "file" else ""
        common.fail(f"{exc.problems[0].reason}{hint}" if hint else str(exc))
    except ServiceError as exc:
        common.fail(str(exc))


def _run(
    work: Callable[[Runtime], Coroutine[Any, Any, T]],
    *,
    db: bool = False,
    passthrough: tuple[type[ServiceError], ...] = (),
) -> T:
    """Run an async service call on a fresh runtime. Only the commands that read the store
    (`db`) check the database; the others need no database at all."""
    settings = common.load_settings()
    engine = common.existing_engine(settings) if db else make_engine(settings.db_url)
    rt = Runtime(settings, engine)
    try:
        with _errors(passthrough):
            return asyncio.run(work(rt))
    finally:
        rt.close()


def _list_offline(file: Path, reason: str, as_json: bool) -> None:
    """`list` without Temporal: the file's schedules and croniter's next run, saying so."""
    with _errors():
        found = service.validate(file)
        nxt = {s.name: service.preview(file, s.name, 1).next for s in found}
    note = f"Temporal did not answer ({reason}): next runs are croniter's, not the server's"
    if as_json:
        common.emit_json(
            [
                _plain(
                    {
                        **s.model_dump(exclude={"warnings"}),
                        "server": None,
                        "last_run": None,
                        "next_croniter": nxt[s.name],
                        "note": note,
                    }
                )
                for s in found
            ]
        )
        return
    table = Table("schedule", "automation", "cron (zone)", "state", "next run (croniter)")
    for s in found:
        table.add_row(
            s.name,
            s.automation,
            f"{s.cron} ({s.timezone})",
            "unknown",
            nxt[s.name][0].isoformat() if nxt[s.name] else "-",
        )
    common.console.print(table)
    common.console.print(f"[yellow]note[/yellow] {note}", highlight=False, soft_wrap=True)


def _plain(data: Any) -> Any:
    """A model's dump for `--json`: times as ISO 8601 with their own offset, as before."""
    if isinstance(data, datetime):
        return data.isoformat()
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def _counts_text(counts: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in (counts or {}).items()) or "-"


def ui_link(workflow_id: str | None) -> str | None:
    """The workflow's page in the embedded dev server's Web UI (None with a cluster of
    one's own, whose UI address crmflow does not know)."""
    settings = common.load_settings()
    if workflow_id is None or not settings.embedded:
        return None
    ns = quote(settings.temporal_namespace, safe="")
    return (
        f"http://127.0.0.1:{settings.embedded_ui_port}/namespaces/{ns}/workflows/"
        f"{quote(workflow_id, safe='')}"
    )


def _print_link(workflow_id: str | None) -> None:
    link = ui_link(workflow_id)
    if link:
        common.console.print(f"  Web UI: {link}", highlight=False, soft_wrap=True)


def _retry_text(r: service.Retrying) -> str:
    """`retrying automation_step (attempt 3 of 20, next 12:00:05): <last error>`."""
    of = f" of {r.maximum_attempts}" if r.maximum_attempts else ""
    nxt = f", next {r.next_attempt_at.astimezone():%H:%M:%S}" if r.next_attempt_at else ""
    return f"retrying {r.activity} (attempt {r.attempt}{of}{nxt}): {r.last_error or '?'}"


def _wait_text(w: service.Waiting) -> str:
    return (
        f"waiting: no worker has started its {w.task} since "
        f"{w.since.astimezone():%Y-%m-%d %H:%M:%S} (is a worker polling task queue "
        f"{w.task_queue!r}?)"
    )


def _outcome(
    status: str,
    error: str | None,
    retrying: service.Retrying | None,
    waiting: service.Waiting | None = None,
) -> str:
    """A run's status with why it failed, what it is retrying or what it waits for."""
    if retrying is not None:
        return _retry_text(retrying)
    if waiting is not None:
        return _wait_text(waiting)
    return status + (f": {error}" if error else "")


@schedules_app.command("validate")
def validate(file: FileOpt = None, as_json: JsonFlag = False) -> None:
    """Check a schedules file: cron expressions, time zones, automations and parameters; warn
    of cron times that daylight-saving changes skip or repeat in the schedule's zone."""
    file = _file(file)
    with _errors():
        found = service.validate(file)
    if as_json:
        common.emit_json(
            {"ok": True, "file": str(file), "schedules": [s.model_dump() for s in found]}
        )
        return
    for s in found:
        common.console.print(
            f"{s.name}: {s.automation} at {s.cron!r} ({s.timezone})"
            + (" [paused]" if s.paused else ""),
            highlight=False,
        )
        for w in s.warnings:
            common.console.print(f"  [yellow]warning[/yellow] {w}", highlight=False, soft_wrap=True)
    warned = sum(len(s.warnings) for s in found)
    common.console.print(
        f"{file}: {len(found)} schedule(s), all valid"
        + (f"; {warned} warning(s)" if warned else ""),
        highlight=False,
    )


@schedules_app.command("schema")
def schema(out: Annotated[Path | None, typer.Option(help="Write to this file")] = None) -> None:
    """The JSON Schema of the schedules file, for editors."""
    text = json.dumps(SchedulesFile.model_json_schema(), indent=2) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        typer.echo(text, nl=False)


@schedules_app.command("preview")
def preview(
    name: NameArg,
    next_: Annotated[int, typer.Option("--next", min=1, max=100, help="How many")] = 5,
    after: Annotated[
        str | None,
        typer.Option("--from", help="From this day (YYYY-MM-DD) or time in the schedule's zone"),
    ] = None,
    file: FileOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """The next times a schedule runs, in its time zone: the Temporal server's own times when
    it answers and has the schedule, else croniter's from the file (with a note)."""
    file = _file(file)
    with _errors():
        s = service.one(service.load(file), name)
        start = None
        if after is not None:
            try:
                start = parse_when(after, s.zone, end=False)
            except ValueError as exc:
                raise Invalid(str(exc), field="from") from None
    p = _run(lambda rt: service.preview_runs(rt, file, name, next_, start))
    if as_json:
        common.emit_json(_plain(p.model_dump()))
        return
    source = "the Temporal server" if p.source == "server" else "croniter (from the file)"
    common.console.print(f"{name}: {p.cron!r} in {p.timezone}, from {source}", highlight=False)
    for t in p.next:
        common.console.print(
            f"  {t:%a %Y-%m-%d %H:%M %Z}  ({t.astimezone().isoformat()})", highlight=False
        )
    if p.note:
        common.console.print(f"[yellow]note[/yellow] {p.note}", highlight=False, soft_wrap=True)
    for d in p.differs:
        common.console.print(f"[yellow]differs[/yellow] {d}", highlight=False, soft_wrap=True)


@schedules_app.command("apply")
def apply(
    file: FileOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make the Temporal Schedules match the file: create, update, pause/resume, delete."""
    file = _file(file)
    result = _run(lambda rt: service.apply(rt, file, dry_run=dry_run))
    if as_json:
        common.emit_json(result.model_dump())
        return
    verb = "would be " if dry_run else ""
    for c in result.changes:
        common.console.print(f"{c.schedule}: {verb}{c.action}", highlight=False)
    changed = sum(1 for c in result.changes if c.action != "unchanged")
    common.console.print(f"{changed} change(s){' (dry run)' if dry_run else ''}", highlight=False)


@schedules_app.command("list")
def list_schedules(file: FileOpt = None, as_json: JsonFlag = False) -> None:
    """Every schedule: when it runs next, its last run and what that run did."""
    file = _file(file)
    with _errors():
        service.load(file)  # before the database is checked, as before
    try:
        rows = _run(
            lambda rt: service.list_schedules(rt, file), db=True, passthrough=(Unavailable,)
        )
    except Unavailable as exc:
        _list_offline(file, str(exc), as_json)
        return
    if as_json:
        common.emit_json([_plain(r.model_dump(exclude_unset=True)) for r in rows])
        return
    table = Table(
        "schedule", "automation", "cron (zone)", "state", "next run", "last run", "outcome"
    )
    for r in rows:
        srv = r.server
        state = "not applied" if not srv.on_server else "paused" if srv.paused else "active"
        last = r.last_run
        table.add_row(
            r.name,
            r.automation,
            f"{r.cron} ({r.timezone})",
            state,
            srv.next[0].isoformat() if srv.next else "-",
            f"{last.run_date} #{last.attempt}" if last else "-",
            f"{last.status}: {_counts_text(last.counts)}" if last else "-",
        )
    common.console.print(table)
    # why a last run failed, or what it is retrying: below the table, whole
    for r in rows:
        last = r.last_run
        if last is not None and (last.error or last.retrying or last.waiting):
            common.console.print(
                f"{r.name} {last.run_date} #{last.attempt}: "
                + _outcome(last.status, last.error, last.retrying, last.waiting),
                highlight=False,
                soft_wrap=True,
            )


@schedules_app.command("runs")
def runs(
    name: NameArg,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    file: FileOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """A schedule's recent runs: run date, attempt, outcome and counts; next runs."""
    file = _file(file)
    with _errors():
        service.one(service.load(file), name)  # before the database is checked, as before
    found = _run(lambda rt: service.runs(rt, file, name, limit), db=True)
    if as_json:
        common.emit_json(_plain(found.model_dump(exclude_unset=True)))
        return
    table = Table("run date", "#", "status", "started", "took", "counts")
    for r in found.runs:
        took = f"{(r.finished_at - r.started_at).total_seconds():.1f} s" if r.finished_at else "-"
        table.add_row(
            r.run_date,
            str(r.attempt),
            r.status,
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            took,
            _counts_text(r.counts),
        )
    common.console.print(table)
    for r in found.runs:
        if r.error or r.retrying or r.waiting:
            common.console.print(
                f"{r.run_date} #{r.attempt}: " + _outcome(r.status, r.error, r.retrying, r.waiting),
                highlight=False,
                soft_wrap=True,
            )
    for f in found.unrecorded:
        what = _outcome(f.status, None, f.retrying, f.waiting)
        common.console.print(
            f"not recorded yet: {f.workflow_id}: {what}", highlight=False, soft_wrap=True
        )
        _print_link(f.workflow_id)
    nxt = ", ".join(t.isoformat() for t in found.server.next) or "-"
    common.console.print(f"next: {nxt}", highlight=False)


@schedules_app.command("trigger")
def trigger(
    name: NameArg,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run and print it")] = False,
    file: FileOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a schedule now (as of now; its overlap policy applies)."""
    file = _file(file)
    data = _run(lambda rt: service.trigger(rt, file, name, wait=wait))
    if as_json:
        common.emit_json(_plain(data.model_dump(exclude_unset=True)))
    else:
        common.console.print(f"{name}: started {data.workflow_id}", highlight=False)
        _print_link(data.workflow_id)
        if data.run is not None:
            run = data.run
            common.console.print(
                f"{run.automation} {run.run_date} #{run.attempt}: {run.status}; "
                f"{_counts_text(run.counts)}",
                highlight=False,
                soft_wrap=True,
            )
    if data.error is not None:
        common.fail(f"{name}: the run failed: {data.error}")


@schedules_app.command("backfill")
def backfill(
    name: NameArg,
    from_: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD) or time")],
    to: Annotated[str, typer.Option("--to", help="Last day (YYYY-MM-DD, inclusive) or time")],
    file: FileOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Run every time the schedule would have fired between two dates, each as of its own
    time (days missed while nothing ran)."""
    file = _file(file)
    when = service.BackfillRange(from_=from_, to=to)
    data = _run(lambda rt: service.backfill(rt, file, name, when))
    if as_json:
        common.emit_json(_plain(data.model_dump()))
        return
    common.console.print(
        f"{name}: {len(data.runs)} run(s) queued, one after the other:", highlight=False
    )
    for t in data.runs:
        common.console.print(f"  {t:%Y-%m-%d %H:%M %Z}", highlight=False)


@schedules_app.command("pause")
def pause(
    name: NameArg,
    note: Annotated[
        str, typer.Option(help="Why (shown in list and the Temporal UI)")
    ] = "paused with crmflow schedules pause",
    file: FileOpt = None,
) -> None:
    """Stop a schedule's runs until `resume` (a running run finishes)."""
    file = _file(file)
    done = _run(lambda rt: service.pause(rt, file, name, note))
    hint = (
        "" if done.file_paused else " (the file says paused: false, so the next apply resumes it)"
    )
    common.console.print(f"{name}: paused{hint}", highlight=False)


@schedules_app.command("resume")
def resume(name: NameArg, file: FileOpt = None) -> None:
    """Let a paused schedule run again."""
    file = _file(file)
    done = _run(lambda rt: service.resume(rt, file, name))
    hint = " (the file says paused: true, so the next apply pauses it)" if done.file_paused else ""
    common.console.print(f"{name}: resumed{hint}", highlight=False)
