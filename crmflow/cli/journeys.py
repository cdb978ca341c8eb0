"""`crmflow journeys …`: validate a journey file and publish the journey file's JSON Schema."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from crmflow.cli import common
from journeys.models import EventEntry, Journey, MessageNode, SegmentEntry
from journeys.validate import LoadedJourney, load_journey
from rules.source import RuleFileError
from store.journeys import deployed

journeys_app = typer.Typer(
    help="Customer journeys: validate, deploy, pause, resume, archive, list, dispatch, schema.",
    no_args_is_help=True,
)

FileArg = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="A journey file (.yaml)"),
]
ProgramOpt = Annotated[
    Path | None,
    typer.Option(
        "--program",
        exists=True,
        dir_okay=False,
        help="Programme file (default: program.yaml beside the journey's folder or its parent)",
    ),
]
EventsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        help="A known event type (repeat the option); when given, other event types are errors",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _entry(journey: Journey) -> dict[str, Any]:
    entry = journey.entry
    if isinstance(entry, EventEntry):
        return {"kind": "event", "event": entry.event, "when": entry.when is not None}
    if isinstance(entry, SegmentEntry):
        return {"kind": "segment", "schedule": entry.schedule, "once": entry.once}
    return {"kind": "rule"}


def _entry_text(entry: dict[str, Any]) -> str:
    if entry["kind"] == "event":
        return f"on event {entry['event']}" + (" (with a condition)" if entry["when"] else "")
    if entry["kind"] == "segment":
        return f"segment on schedule {entry['schedule']!r}" if entry["schedule"] else "segment once"
    return "by a rule's enroll_journey"


def summary(loaded: LoadedJourney) -> dict[str, Any]:
    """What `validate` reports about a valid journey."""
    j = loaded.journey
    used = sorted({n.channel for n in j.nodes.values() if isinstance(n, MessageNode)})
    return {
        "ok": True,
        "file": loaded.path,
        "program": loaded.program_path,
        "journey": j.journey,
        "entry": _entry(j),
        "start": j.start,
        "nodes": {nid: node.type for nid, node in j.nodes.items()},
        "node_types": dict(Counter(node.type for node in j.nodes.values())),
        "channels": used,
        "goal": j.goal.model_dump(mode="json", exclude_none=True) if j.goal else None,
    }


@journeys_app.command("validate")
def validate(
    file: FileArg,
    program: ProgramOpt = None,
    events: EventsOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a journey file; every problem with its line and node."""
    try:
        loaded = load_journey(file, program, events or None)
    except RuleFileError as exc:
        if as_json:
            common.emit_json({"ok": False, "errors": [e.__dict__ for e in exc.errors]})
        else:
            for e in exc.errors:
                common.err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
            common.err.print(f"{len(exc.errors)} problem(s) found")
        raise typer.Exit(1) from exc
    data = summary(loaded)
    if as_json:
        common.emit_json(data)
        return
    kinds = ", ".join(f"{n} {t}" for t, n in data["node_types"].items())
    common.console.print(
        f"ok: journey {data['journey']!r}, entered {_entry_text(data['entry'])}; "
        f"{len(data['nodes'])} nodes ({kinds}); channels: {', '.join(data['channels']) or 'none'}"
        f"; programme {data['program']}",
        highlight=False,
    )


NameArg = Annotated[str, typer.Argument(help="The journey's name")]


@journeys_app.command("deploy")
def deploy(file: FileArg, program: ProgramOpt = None, as_json: JsonFlag = False) -> None:
    """Validate a journey file and store it as a new version: new enrollments use it,
    running ones finish on the version they started with."""
    from store.journeys import deploy_journey

    try:
        loaded = load_journey(file, program, None)
    except RuleFileError as exc:
        for e in exc.errors:
            common.err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
        common.fail(f"{len(exc.errors)} problem(s) found; nothing deployed")
    j = loaded.journey
    engine = common.migrated_engine(common.load_settings())
    with engine.begin() as conn:
        version, created = deploy_journey(
            conn, j.journey, j.definition(), file.read_text(encoding="utf-8"), str(file)
        )
    data: dict[str, Any] = {"journey": j.journey, "version": version, "new": created}
    entry = j.entry
    if isinstance(entry, SegmentEntry) and entry.once:
        data["segment"] = _enter(engine, j.journey, "once")
    elif isinstance(entry, SegmentEntry):
        with engine.connect() as conn:
            status = deployed(conn, j.journey)[0].status
        data["schedule"] = _sync_schedule(j, status)
    if as_json:
        common.emit_json(data)
        return
    what = "deployed" if created else "already deployed; made active"
    common.console.print(f"journey {j.journey!r} version {version} {what}", highlight=False)
    if "segment" in data:
        seg = data["segment"]
        common.console.print(
            f"segment: {seg['matched']} of {seg['customers']} customers match; "
            f"{seg['queued']} enrollment(s) queued (a worker's dispatcher starts them)",
            highlight=False,
        )
    if "schedule" in data:
        common.console.print(data["schedule"], highlight=False)


def _fail(message: str) -> NoReturn:
    common.fail(message)
    raise typer.Exit(1)  # (fail exits; this line tells the type checker so)


def _enter(engine: Any, name: str, run: str) -> dict[str, Any]:
    from crmflow.segments import SegmentError, enter_segment

    try:
        return enter_segment(engine, name, run).__dict__
    except SegmentError as exc:
        _fail(str(exc))


def _sync_schedule(journey: Journey, status: str) -> str:
    """Make the journey's Temporal Schedule match it (needs a reachable Temporal)."""
    import asyncio

    from crmflow.segment_schedules import sync_schedule
    from crmflow.temporal import TemporalSetupError, connect

    settings = common.load_settings()

    async def run() -> str:
        client = await connect(settings)
        return await sync_schedule(client, settings.task_queue, journey, status)

    try:
        return asyncio.run(run())
    except TemporalSetupError as exc:
        _fail(
            f"the journey is stored, but its segment schedule needs Temporal: {exc}. "
            "Deploy again (or change its status) once Temporal is up (`crmflow up`)."
        )


@journeys_app.command("enter")
def enter(
    name: Annotated[str, typer.Argument(help="A journey entered by a segment")],
    run: Annotated[str | None, typer.Option(help="Run key (default: now, to the minute)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a journey's segment now and queue everyone in it (once per run key)."""
    from store.db import utcnow

    engine = common.existing_engine(common.load_settings())
    data = _enter(engine, name, run or utcnow().strftime("%Y%m%dT%H%M"))
    if as_json:
        common.emit_json(data)
        return
    common.console.print(
        f"segment of {name!r} (run {data['run']}): {data['matched']} of {data['customers']} "
        f"customers match; {data['queued']} enrollment(s) queued",
        highlight=False,
    )


def _set_status(name: str, status: str) -> None:
    from store.journeys import set_status

    engine = common.existing_engine(common.load_settings())
    with engine.begin() as conn:
        before = set_status(conn, name, status)
    if before is None:
        common.fail(f"no journey {name!r} is deployed (crmflow journeys list)")
    common.console.print(f"journey {name!r}: {before} -> {status}", highlight=False)
    with engine.connect() as conn:
        journey = Journey.model_validate(deployed(conn, name)[0].definition)
    entry = journey.entry
    if isinstance(entry, SegmentEntry) and entry.schedule is not None:
        common.console.print(_sync_schedule(journey, status), highlight=False)


@journeys_app.command("pause")
def pause(name: NameArg) -> None:
    """Stop new enrollments; running enrollments go on."""
    _set_status(name, "paused")


@journeys_app.command("resume")
def resume(name: NameArg) -> None:
    """Let new enrollments in again."""
    _set_status(name, "active")


@journeys_app.command("archive")
def archive(name: NameArg) -> None:
    """Retire a journey: no new enrollments, and it listens to no new events."""
    _set_status(name, "archived")


@journeys_app.command("list")
def list_journeys(as_json: JsonFlag = False) -> None:
    """Deployed journeys: status, active version, enrollments by status."""
    from sqlalchemy import func, select

    from store.journeys import deployed
    from store.models import EnrollmentRow

    engine = common.existing_engine(common.load_settings())
    with engine.connect() as conn:
        counts: dict[str, dict[str, int]] = {}
        for name, status, n in conn.execute(
            select(EnrollmentRow.journey, EnrollmentRow.status, func.count()).group_by(
                EnrollmentRow.journey, EnrollmentRow.status
            )
        ):
            counts.setdefault(name, {})[status] = n
        rows: list[dict[str, Any]] = [
            {
                "journey": d.name,
                "status": d.status,
                "version": d.version,
                "deployed_at": d.deployed_at.isoformat(),
                "enrollments": counts.get(d.name, {}),
            }
            for d in deployed(conn)
        ]
    if as_json:
        common.emit_json(rows)
        return
    from rich.table import Table

    table = Table("journey", "status", "version", "deployed", "enrollments")
    for r in rows:
        table.add_row(
            r["journey"],
            r["status"],
            r["version"],
            r["deployed_at"][:19],
            ", ".join(f"{k} {v}" for k, v in sorted(r["enrollments"].items())) or "none",
        )
    common.console.print(table)


@journeys_app.command("dispatch")
def dispatch(as_json: JsonFlag = False) -> None:
    """Hand pending journey commands to Temporal once (workers do this continuously)."""
    import asyncio

    from crmflow.dispatch import dispatch_once
    from crmflow.temporal import TemporalSetupError, connect, exit_skipping_finalizers

    settings = common.load_settings()
    engine = common.existing_engine(settings)

    async def run() -> Any:
        client = await connect(settings)
        return await dispatch_once(client, engine, settings.task_queue)

    try:
        report = asyncio.run(run())
    except TemporalSetupError as exc:
        common.fail(f"{exc} (start one with `crmflow up`)")
    data = report.__dict__
    if as_json:
        common.emit_json(data)
    else:
        common.console.print(
            f"{report.commands} command(s): {report.started} enrollment(s) started, "
            f"{report.signalled} signal(s); skipped: {report.skipped or 'none'}",
            highlight=False,
        )
    exit_skipping_finalizers(0)


@journeys_app.command("schema")
def schema(out: Annotated[Path | None, typer.Option(help="Write to this file")] = None) -> None:
    """Print the JSON Schema of journey files for editors."""
    doc = Journey.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "crmflow journey file"
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        common.console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


# --------------------------------------------------------------------------- reports

ReportNameArg = Annotated[str, typer.Argument(help="The journey's name")]


@journeys_app.command("stats")
def stats_cmd(
    name: ReportNameArg,
    as_json: JsonFlag = False,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", dir_okay=False, help="Also draw the funnel to this .svg file"),
    ] = None,
) -> None:
    """Per version and node: entered, waiting, sent, suppressed (why), failed, ended; goal
    conversions per variant and for the holdout, with the uplift."""
    from crmflow.cli.journey_reports import stats_command

    stats_command(name, as_json=as_json, chart=chart)


@journeys_app.command("enrollments")
def enrollments_cmd(
    name: ReportNameArg,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only enrollments with this status: active, completed, converted, exited, "
            "held_out, failed",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Who is where: customer, node, since when, status, variant, version."""
    from crmflow.cli.journey_reports import enrollments_command

    enrollments_command(name, status=status, limit=limit, as_json=as_json)


# --------------------------------------------------------------------------- simulation


@journeys_app.command("simulate")
def simulate_cmd(
    file: FileArg,
    customer: Annotated[
        Path,
        typer.Option(
            "--customer",
            exists=True,
            dir_okay=False,
            help="The customer: one JSON object in the customer import format",
        ),
    ],
    events: Annotated[
        Path | None,
        typer.Option(
            "--events",
            exists=True,
            dir_okay=False,
            help="Their events (JSON Lines, the event import format), each signalled at its "
            "occurred_at",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="When the enrollment starts, ISO 8601 with a zone (default: the first "
            "event's time, else now)",
        ),
    ] = None,
    until: Annotated[
        float | None,
        typer.Option(
            "--until",
            help="Stop this many simulated days after the start (default: when the journey "
            "ends, at most 400 days)",
        ),
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            exists=True,
            file_okay=False,
            help="Deploy this rules folder in the simulation (update nodes and branches on "
            "rule facts need it)",
        ),
    ] = None,
    program: ProgramOpt = None,
    quiet_hours: Annotated[
        str | None,
        typer.Option("--quiet-hours", help="Quiet hours on the customer's clock, e.g. 21:00-08:00"),
    ] = None,
    no_quiet_hours: Annotated[
        bool, typer.Option("--no-quiet-hours", help="Simulate without quiet hours")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a journey for one customer on the time-skipping test server (a throwaway database,
    the outbox channel only: nothing is sent): the path taken and every message with its
    simulated send time. A 90-day journey takes seconds."""
    from datetime import datetime

    from rich.markup import escape

    from crmflow.simulate import (
        SimulationError,
        load_customer,
        load_events,
        print_report,
        quiet_hours_overrides,
        simulate,
    )
    from crmflow.temporal import exit_skipping_finalizers

    settings = common.load_settings()
    try:
        when = None
        if start is not None:
            try:
                when = datetime.fromisoformat(start)
            except ValueError as exc:
                raise SimulationError(
                    f"--start {start!r}: expected ISO 8601 with a zone, such as "
                    "2026-12-01T09:00:00+08:00"
                ) from exc
        person = load_customer(customer, settings.default_phone_region)
        happened = load_events(events, person["customer_id"]) if events else []
        report = simulate(
            file,
            person,
            happened,
            settings=settings,
            overrides=quiet_hours_overrides(quiet_hours, no_quiet_hours),
            start=when,
            until_days=until,
            rules_dir=rules,
            program=program,
        )
    except SimulationError as exc:
        common.fail(escape(str(exc)))
    if as_json:
        common.emit_json(report.model_dump(mode="json"))
    else:
        print_report(report, common.console)
    code = 1 if report.outcome == "failed" else 0
    if sys.stdout is sys.__stdout__:
        # run as the program (not in process by a test runner): leave without finalisation,
        # which the SDK's threads can crash (see exit_skipping_finalizers)
        exit_skipping_finalizers(code)
    if code:
        raise typer.Exit(code)
