"""`crmflow schedules …`: the scheduled automations of a schedules file, as Temporal
Schedules — validate, preview, apply, list, trigger, backfill, pause, resume, runs, schema."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError

from automations.contracts import RunSummary
from automations.cron import next_runs
from automations.models import ScheduleBase, SchedulesFile
from crmflow import schedules as sched
from crmflow.cli import common
from rules.source import RuleFileError

schedules_app = typer.Typer(
    help="Scheduled automations: validate, preview, apply, list, trigger, backfill, pause, "
    "resume, runs, schema.",
    no_args_is_help=True,
)

FileOpt = Annotated[
    Path,
    typer.Option(
        "--file",
        "-f",
        envvar="CRMFLOW_SCHEDULES",
        dir_okay=False,
        help="The schedules file",
    ),
]
DEFAULT_FILE = Path("examples/schedules.yaml")
NameArg = Annotated[str, typer.Argument(help="A schedule's name in the file")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _fail(message: str) -> NoReturn:
    common.fail(message)
    raise AssertionError  # fail() exits


def _load(path: Path) -> SchedulesFile:
    if not path.exists():
        _fail(f"{path}: no such schedules file (give one with --file)")
    try:
        return sched.load_schedules(path)
    except RuleFileError as exc:
        for e in exc.errors:
            common.console.print(f"[red]error[/red] {e}", highlight=False, soft_wrap=True)
        _fail(f"{path}: {len(exc.errors)} problem(s); nothing was changed")


def _one(file: SchedulesFile, name: str) -> ScheduleBase:
    try:
        return file.get(name)
    except KeyError as exc:
        _fail(str(exc.args[0]))


def _temporal(work: Any) -> Any:
    from crmflow.cli.projects import run_temporal

    settings = common.load_settings()

    async def guarded(client: Client) -> Any:
        try:
            return await work(client, settings)
        except LookupError as exc:
            _fail(str(exc.args[0]))

    return run_temporal(settings, guarded)


def _summary(s: ScheduleBase) -> dict[str, Any]:
    return {
        "name": s.name,
        "automation": s.automation,
        "cron": s.cron,
        "timezone": s.zone,
        "overlap": s.overlap,
        "catchup_window": s.catchup_window,
        "paused": s.paused,
        "params": s.params.model_dump(),
    }


@schedules_app.command("validate")
def validate(file: FileOpt = DEFAULT_FILE, as_json: JsonFlag = False) -> None:
    """Check a schedules file: cron expressions, time zones, automations and parameters."""
    f = _load(file)
    if as_json:
        common.emit_json(
            {"ok": True, "file": str(file), "schedules": [_summary(s) for s in f.schedules]}
        )
        return
    for s in f.schedules:
        common.console.print(
            f"{s.name}: {s.automation} at {s.cron!r} ({s.zone})"
            + (" [paused]" if s.paused else ""),
            highlight=False,
        )
    common.console.print(f"{file}: {len(f.schedules)} schedule(s), all valid", highlight=False)


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
    file: FileOpt = DEFAULT_FILE,
    as_json: JsonFlag = False,
) -> None:
    """The next times a schedule runs, in its time zone (no Temporal needed)."""
    s = _one(_load(file), name)
    times = next_runs(s.cron, s.zone, datetime.now().astimezone(), next_)
    if as_json:
        common.emit_json(
            {"schedule": name, "timezone": s.zone, "next": [t.isoformat() for t in times]}
        )
        return
    common.console.print(f"{name}: {s.cron!r} in {s.zone}", highlight=False)
    for t in times:
        common.console.print(
            f"  {t:%a %Y-%m-%d %H:%M %Z}  ({t.astimezone().isoformat()})", highlight=False
        )


@schedules_app.command("apply")
def apply(
    file: FileOpt = DEFAULT_FILE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make the Temporal Schedules match the file: create, update, pause/resume, delete."""
    f = _load(file)

    async def work(client: Client, settings: Any) -> list[sched.Change]:
        return await sched.apply(client, f, settings.task_queue, dry_run=dry_run)

    changes: list[sched.Change] = _temporal(work)
    if as_json:
        common.emit_json({"dry_run": dry_run, "changes": [c.as_dict() for c in changes]})
        return
    verb = "would be " if dry_run else ""
    for c in changes:
        common.console.print(f"{c.schedule}: {verb}{c.action}", highlight=False)
    changed = sum(1 for c in changes if c.action != "unchanged")
    common.console.print(f"{changed} change(s){' (dry run)' if dry_run else ''}", highlight=False)


def _last_runs() -> dict[str, Any]:
    from store.automation_runs import last_runs

    engine = common.existing_engine(common.load_settings())
    with engine.connect() as conn:
        return last_runs(conn)


def _counts_text(counts: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in (counts or {}).items()) or "-"


@schedules_app.command("list")
def list_schedules(file: FileOpt = DEFAULT_FILE, as_json: JsonFlag = False) -> None:
    """Every schedule: when it runs next, its last run and what that run did."""
    f = _load(file)

    async def work(client: Client, _settings: Any) -> dict[str, dict[str, Any]]:
        return await sched.statuses(client, f)

    server = _temporal(work)
    last = _last_runs()
    rows = []
    for s in f.schedules:
        run = last.get(s.name)
        rows.append(
            {
                **_summary(s),
                "server": server.get(s.name, {}),
                "last_run": None
                if run is None
                else {
                    "run_date": run.run_date,
                    "attempt": run.attempt,
                    "status": run.status,
                    "counts": run.counts,
                    "started_at": run.started_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                },
            }
        )
    if as_json:
        common.emit_json(rows)
        return
    table = Table(
        "schedule", "automation", "cron (zone)", "state", "next run", "last run", "outcome"
    )
    for r in rows:
        srv = r["server"]
        state = (
            "not applied" if not srv.get("on_server") else "paused" if srv["paused"] else "active"
        )
        last_run = r["last_run"]
        table.add_row(
            r["name"],
            r["automation"],
            f"{r['cron']} ({r['timezone']})",
            state,
            (srv.get("next") or ["-"])[0],
            f"{last_run['run_date']} #{last_run['attempt']}" if last_run else "-",
            f"{last_run['status']}: {_counts_text(last_run['counts'])}" if last_run else "-",
        )
    common.console.print(table)


@schedules_app.command("runs")
def runs(
    name: NameArg,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    file: FileOpt = DEFAULT_FILE,
    as_json: JsonFlag = False,
) -> None:
    """A schedule's recent runs: run date, attempt, outcome and counts; next runs."""
    from store.automation_runs import recent_runs

    s = _one(_load(file), name)

    async def work(client: Client, _settings: Any) -> dict[str, Any]:
        return sched.status_of(await sched.describe_or_none(client, name))

    server = _temporal(work)
    engine = common.existing_engine(common.load_settings())
    with engine.connect() as conn:
        found = recent_runs(conn, s.name, limit)
    data = [
        {
            "run_date": r.run_date,
            "attempt": r.attempt,
            "status": r.status,
            "as_of": r.as_of.isoformat(),
            "started_at": r.started_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "step": r.step,
            "counts": r.counts,
            "error": r.error,
            "workflow_id": r.workflow_id,
        }
        for r in found
    ]
    if as_json:
        common.emit_json({"schedule": name, "server": server, "runs": data})
        return
    table = Table("run date", "#", "status", "started", "took", "counts")
    for r, row in zip(data, found, strict=True):
        took = (
            f"{(row.finished_at - row.started_at).total_seconds():.1f} s"
            if row.finished_at
            else "-"
        )
        status = r["status"] + (f" ({r['error'][:80]})" if r["error"] else "")
        table.add_row(
            r["run_date"],
            str(r["attempt"]),
            status,
            f"{row.started_at:%Y-%m-%d %H:%M:%S}",
            took,
            _counts_text(r["counts"]),
        )
    common.console.print(table)
    nxt = ", ".join(server.get("next") or []) or "-"
    common.console.print(f"next: {nxt}", highlight=False)


@schedules_app.command("trigger")
def trigger(
    name: NameArg,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run and print it")] = False,
    file: FileOpt = DEFAULT_FILE,
    as_json: JsonFlag = False,
) -> None:
    """Run a schedule now (as of now; its overlap policy applies)."""
    _one(_load(file), name)

    async def work(client: Client, _settings: Any) -> dict[str, Any]:
        wid = await sched.trigger(client, name)
        out: dict[str, Any] = {"schedule": name, "workflow_id": wid}
        if wait and wid:
            try:
                handle = client.get_workflow_handle(wid, result_type=RunSummary)
                done = await handle.result()
            except WorkflowFailureError as exc:
                out["error"] = str(exc.cause or exc)
            else:
                out["run"] = done.model_dump()
        return out

    data = _temporal(work)
    if as_json:
        common.emit_json(data)
    else:
        common.console.print(f"{name}: started {data['workflow_id']}", highlight=False)
        if "run" in data:
            run = data["run"]
            common.console.print(
                f"{run['automation']} {run['run_date']} #{run['attempt']}: {run['status']}; "
                f"{_counts_text(run['counts'])}",
                highlight=False,
                soft_wrap=True,
            )
    if "error" in data:
        _fail(f"{name}: the run failed: {data['error']}")


@schedules_app.command("backfill")
def backfill(
    name: NameArg,
    from_: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD) or time")],
    to: Annotated[str, typer.Option("--to", help="Last day (YYYY-MM-DD, inclusive) or time")],
    file: FileOpt = DEFAULT_FILE,
    as_json: JsonFlag = False,
) -> None:
    """Run every time the schedule would have fired between two dates, each as of its own
    time (days missed while nothing ran)."""
    s = _one(_load(file), name)
    try:
        start = sched.parse_when(from_, s.zone, end=False)
        end = sched.parse_when(to, s.zone, end=True)
    except ValueError as exc:
        _fail(str(exc))
    if end < start:
        _fail(f"--to {to} is before --from {from_}")
    times = sched.runs_between(s, start, end)
    if len(times) > 1000:
        _fail(f"{len(times)} runs between {from_} and {to}: at most 1,000 at a time")

    async def work(client: Client, _settings: Any) -> None:
        await sched.backfill(client, s, start, end)

    _temporal(work)
    data = {"schedule": name, "runs": [t.isoformat() for t in times]}
    if as_json:
        common.emit_json(data)
        return
    common.console.print(
        f"{name}: {len(times)} run(s) queued, one after the other:", highlight=False
    )
    for t in times:
        common.console.print(f"  {t:%Y-%m-%d %H:%M %Z}", highlight=False)


@schedules_app.command("pause")
def pause(
    name: NameArg,
    note: Annotated[
        str, typer.Option(help="Why (shown in list and the Temporal UI)")
    ] = "paused with crmflow schedules pause",
    file: FileOpt = DEFAULT_FILE,
) -> None:
    """Stop a schedule's runs until `resume` (a running run finishes)."""
    s = _one(_load(file), name)
    _temporal(lambda client, _s: sched.pause(client, name, note))
    hint = "" if s.paused else " (the file says paused: false, so the next apply resumes it)"
    common.console.print(f"{name}: paused{hint}", highlight=False)


@schedules_app.command("resume")
def resume(name: NameArg, file: FileOpt = DEFAULT_FILE) -> None:
    """Let a paused schedule run again."""
    s = _one(_load(file), name)
    _temporal(
        lambda client, _s: sched.resume(client, name, "resumed with crmflow schedules resume")
    )
    hint = " (the file says paused: true, so the next apply pauses it)" if s.paused else ""
    common.console.print(f"{name}: resumed{hint}", highlight=False)
