"""`crmflow journeys …`: validate, deploy, change the status of, list, enter, report on,
simulate and dispatch journeys — thin over `crmflow.services.journeys`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from crmflow.cli import common
from crmflow.domain import describe_errors
from crmflow.services import journeys as service
from crmflow.services.errors import NotFound, ServiceError
from crmflow.services.journeys import (
    EventEntryInfo,
    InvalidJourney,
    JourneyFile,
    JourneySummary,
    SegmentEntryInfo,
    SegmentRunInfo,
)
from crmflow.services.runtime import Runtime
from journeys.models import Journey

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
NameArg = Annotated[str, typer.Argument(help="The journey's name")]


@contextmanager
def _runtime(*, migrate: bool = False, database: bool = True) -> Iterator[Runtime]:
    """A runtime for one command; a service's error becomes `error: …` and exit code 1.
    `database=False`: the engine is made but never opened (a file-only command)."""
    from store.db import make_engine

    settings = common.load_settings()
    if not database:
        engine = make_engine(settings.db_url)
    elif migrate:
        engine = common.migrated_engine(settings)
    else:
        engine = common.existing_engine(settings)
    rt = Runtime(settings, engine)
    try:
        yield rt
    except ServiceError as exc:
        common.fail(str(exc))
    finally:
        rt.close()


def _print_problems(exc: InvalidJourney) -> None:
    for e in exc.errors:
        common.err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)


def _entry_text(entry: Any) -> str:
    if isinstance(entry, EventEntryInfo):
        return f"on event {entry.event}" + (" (with a condition)" if entry.when else "")
    if isinstance(entry, SegmentEntryInfo):
        return f"segment on schedule {entry.schedule!r}" if entry.schedule else "segment once"
    return "by a rule's enroll_journey"


@journeys_app.command("validate")
def validate(
    file: FileArg,
    program: ProgramOpt = None,
    events: EventsOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a journey file; every problem with its line and node."""
    try:
        data: JourneySummary = service.validate(
            None, JourneyFile(path=file, program=program), events or None
        )
    except InvalidJourney as exc:
        if as_json:
            common.emit_json({"ok": False, "errors": [e.__dict__ for e in exc.errors]})
        else:
            _print_problems(exc)
            common.err.print(f"{len(exc.errors)} problem(s) found")
        raise typer.Exit(1) from exc
    except ServiceError as exc:
        common.fail(str(exc))
    if as_json:
        common.emit_json(data.model_dump(mode="json"))
        return
    kinds = ", ".join(f"{n} {t}" for t, n in data.node_types.items())
    common.console.print(
        f"ok: journey {data.journey!r}, entered {_entry_text(data.entry)}; "
        f"{len(data.nodes)} nodes ({kinds}); channels: {', '.join(data.channels) or 'none'}"
        f"; programme {data.program}",
        highlight=False,
    )


def _segment_line(seg: SegmentRunInfo) -> str:
    return (
        f"segment: {seg.matched} of {seg.customers} customers match; "
        f"{seg.queued} enrollment(s) queued (a worker's dispatcher starts them)"
    )


@journeys_app.command("deploy")
def deploy(file: FileArg, program: ProgramOpt = None, as_json: JsonFlag = False) -> None:
    """Validate a journey file and store it as a new version: new enrollments use it,
    running ones finish on the version they started with."""
    source = JourneyFile(path=file, program=program)
    try:
        service.validate(None, source)  # before touching the database, as always
    except InvalidJourney as exc:
        _print_problems(exc)
        common.fail(f"{len(exc.errors)} problem(s) found; nothing deployed")
    except ServiceError as exc:
        common.fail(str(exc))
    with _runtime(migrate=True) as rt:
        report = asyncio.run(service.deploy(rt, source))
    if report.schedule_problem:
        common.fail(report.schedule_problem)
    if as_json:
        common.emit_json(report.model_dump(mode="json", exclude_none=True))
        return
    what = "deployed" if report.new else "already deployed; made active"
    common.console.print(
        f"journey {report.journey!r} version {report.version} {what}", highlight=False
    )
    if report.segment is not None:
        common.console.print(_segment_line(report.segment), highlight=False)
    if report.schedule is not None:
        common.console.print(report.schedule, highlight=False)


@journeys_app.command("enter")
def enter(
    name: Annotated[str, typer.Argument(help="A journey entered by a segment")],
    run: Annotated[str | None, typer.Option(help="Run key (default: now, to the minute)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a journey's segment now and queue everyone in it (once per run key)."""
    with _runtime() as rt:
        data = service.enter(rt, name, run)
    if as_json:
        common.emit_json(data.model_dump(mode="json"))
        return
    refused = sum(data.refused.values())
    why = "; ".join(f"{n} {reason}" for reason, n in sorted(data.refused.items()))
    common.console.print(
        f"segment of {name!r} (run {data.run}): {data.matched} of {data.customers} "
        f"customers match; {data.queued} enrollment(s) queued to start"
        + (f", {refused} not started ({why})" if refused else ""),
        highlight=False,
    )


def _set_status(name: str, status: str) -> None:
    with _runtime() as rt:
        try:
            change = asyncio.run(service.set_status(rt, name, status))
        except NotFound as exc:
            common.fail(f"{exc} (crmflow journeys list)")
    common.console.print(f"journey {name!r}: {change.before} -> {status}", highlight=False)
    if change.schedule_problem:
        common.fail(change.schedule_problem)
    if change.schedule is not None:
        common.console.print(change.schedule, highlight=False)


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
    with _runtime() as rt:
        items = service.list_journeys(rt)
    if as_json:
        # deployed_at as Python writes it (`+00:00`), as this command always printed it
        common.emit_json(
            [{**i.model_dump(mode="json"), "deployed_at": i.deployed_at.isoformat()} for i in items]
        )
        return
    from rich.table import Table

    table = Table("journey", "status", "version", "deployed", "enrollments")
    for i in items:
        table.add_row(
            i.journey,
            i.status,
            i.version,
            i.deployed_at.isoformat()[:19],
            ", ".join(f"{k} {v}" for k, v in sorted(i.enrollments.items())) or "none",
        )
    common.console.print(table)


@journeys_app.command("dispatch")
def dispatch(as_json: JsonFlag = False) -> None:
    """Hand pending journey commands to Temporal once (workers do this continuously)."""
    from crmflow.temporal import exit_skipping_finalizers

    with _runtime() as rt:
        report = asyncio.run(service.dispatch(rt))
    if as_json:
        common.emit_json(report.model_dump(mode="json"))
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


@journeys_app.command("stats")
def stats_cmd(
    name: NameArg,
    as_json: JsonFlag = False,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", dir_okay=False, help="Also draw the funnel to this .svg file"),
    ] = None,
) -> None:
    """Per version and node: entered, waiting, sent, suppressed (why), failed, ended; goal
    conversions per variant and for the holdout, with the uplift."""
    from crmflow.cli.journey_reports import (
        ChartError,
        chart_problem,
        stats_renderables,
        write_chart,
    )

    if chart is not None and (problem := chart_problem(chart)) is not None:
        common.fail(problem)
    with _runtime() as rt:
        data = service.stats(rt, name)
    if chart is not None:
        try:
            write_chart(data, chart)
        except (ChartError, OSError) as exc:
            common.fail(f"cannot write the chart: {exc}")
        # with --json, stdout holds the JSON alone
        (common.err if as_json else common.console).print(f"wrote {chart}", highlight=False)
    if as_json:
        common.emit_json(data.model_dump(mode="json"))
        return
    for part in stats_renderables(data):
        common.console.print(part)


@journeys_app.command("enrollments")
def enrollments_cmd(
    name: NameArg,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only enrollments with this status: active, completed, converted, exited, "
            "held_out, failed",
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Only enrollments now at this node")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Who is where: customer, node, since when, status, variant, version."""
    from crmflow.cli.journey_reports import enrollments_table
    from store.journey_stats import ENROLLMENT_STATUSES

    if status is not None and status not in ENROLLMENT_STATUSES:
        common.fail(f"--status must be one of {', '.join(ENROLLMENT_STATUSES)}, not {status!r}")
    if limit < 1:
        common.fail("--limit must be at least 1")
    if limit > service.MAX_ENROLLMENTS:
        common.fail(f"--limit must be at most {service.MAX_ENROLLMENTS}")
    try:
        query = service.EnrollmentsQuery.model_validate(
            {"status": status, "node": node, "limit": limit}
        )
    except ValidationError as exc:
        common.fail(describe_errors(exc))
    with _runtime() as rt:
        data = service.enrollments(rt, name, query)
    if as_json:
        common.emit_json(data.model_dump(mode="json"))
        return
    which = f"{status} " if status else ""
    where = f" at {node}" if node else ""
    title = (
        f"journey {name}: {len(data.enrollments)} of {data.total} {which}enrollments{where}, "
        "latest move first"
    )
    common.console.print(enrollments_table(data.enrollments, title))


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
        MAX_DAYS,
        SimulationError,
        load_customer,
        load_events,
    )
    from crmflow.temporal import exit_skipping_finalizers

    settings = common.load_settings()
    # the face reads the files and options; the service runs the simulation
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
        if until is not None and not 0 < until <= MAX_DAYS:
            raise SimulationError(f"--until must be more than 0 and at most {MAX_DAYS} days")
        person = load_customer(customer, settings.default_phone_region)
        happened = load_events(events, person["customer_id"]) if events else []
        options = service.SimulationOptions(
            customer=person,
            events=happened,
            start=when,
            until_days=until,
            quiet_hours=quiet_hours,
            no_quiet_hours=no_quiet_hours,
        )
    except SimulationError as exc:
        common.fail(escape(str(exc)))
    except ValidationError as exc:
        common.fail(escape(describe_errors(exc)))
    with _runtime(database=False) as rt:
        try:
            report = asyncio.run(
                service.simulate(
                    rt, JourneyFile(path=file, program=program), options, rules_dir=rules
                )
            )
        except ServiceError as exc:
            common.fail(escape(str(exc)))
    if as_json:
        common.emit_json(report.model_dump(mode="json"))
    else:
        from crmflow.cli.simulate_report import print_report

        print_report(report, common.console)
    code = 1 if report.outcome == "failed" else 0
    if sys.stdout is sys.__stdout__:
        # run as the program (not in process by a test runner): leave without finalisation,
        # which the SDK's threads can crash (see exit_skipping_finalizers)
        exit_skipping_finalizers(code)
    if code:
        raise typer.Exit(code)


# --------------------------------------------------------------------------- preview, test-send

NodeArg = Annotated[str, typer.Argument(help="A message node of the journey")]
CustomerOpt = Annotated[
    str, typer.Option("--customer", help="Render the message for this customer (their id)")
]
LocaleOpt = Annotated[
    str | None,
    typer.Option("--locale", help="Render the variant for this locale instead of theirs"),
]


@journeys_app.command("preview")
def preview_cmd(
    name: NameArg,
    node: NodeArg,
    customer: CustomerOpt,
    locale: LocaleOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Render a message of a deployed journey as the customer would get it now (subject,
    text, HTML, the variant, the unsubscribe link). Changes nothing."""
    from rich.markup import escape

    from crmflow.services import journey_preview

    try:
        req = journey_preview.PreviewRequest(
            journey=name, node=node, customer_id=customer, locale=locale
        )
    except ValidationError as exc:
        common.fail(escape(describe_errors(exc)))
    with _runtime() as rt:
        shown = journey_preview.preview(rt, req)
    if as_json:
        common.emit_json(shown.model_dump(mode="json"))
        return
    out = common.console
    variant = shown.variant or "default"
    out.print(
        f"journey {shown.journey} (version {shown.version}), node {shown.node}, "
        f"{shown.channel} to {shown.customer_id} <{shown.address or 'no address'}>; "
        f"locale {shown.locale or '-'}, variant {variant}",
        highlight=False,
        markup=False,
    )
    if shown.held_back:
        common.err.print(f"a real send would be held back: {shown.held_back}", highlight=False)
    for label, part in (("subject", shown.subject), ("text", shown.text), ("html", shown.html)):
        if part is None:
            continue
        if label == "subject":
            out.print(f"subject: {part}", highlight=False, markup=False)
        else:
            out.print(f"--- {label} ---", highlight=False, markup=False)
            out.print(part.rstrip("\n"), highlight=False, markup=False)
    link = f"unsubscribe: {shown.unsubscribe_url}"
    out.print(link, highlight=False, markup=False, soft_wrap=True)


@journeys_app.command("test-send")
def test_send_cmd(
    name: NameArg,
    node: NodeArg,
    customer: CustomerOpt,
    to: Annotated[str, typer.Option("--to", help="Send the test here (an e-mail address, …)")],
    locale: LocaleOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Send a message of a deployed journey, rendered for the customer, to ADDRESS as a test
    (subject "[TEST] …"): through the configured channel (e-mail over SMTP when set up, else
    the outbox), outside every cap, limit and statistic; nothing is recorded for the journey."""
    from rich.markup import escape

    from crmflow.services import journey_preview

    try:
        req = journey_preview.SendTestRequest(
            journey=name, node=node, customer_id=customer, locale=locale, to=to
        )
    except ValidationError as exc:
        common.fail(escape(describe_errors(exc)))
    with _runtime() as rt:
        sent = asyncio.run(journey_preview.send_test(rt, req))
    if as_json:
        common.emit_json(sent.model_dump(mode="json"))
        return
    common.console.print(
        f"test of {sent.journey}/{sent.node} for {sent.customer_id} sent to {sent.to} "
        f"via {sent.via} ({sent.provider_message_id}): {sent.subject or ''}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- deliveries


@journeys_app.command("deliveries")
def deliveries_cmd(
    name: NameArg,
    customer: Annotated[
        str | None, typer.Option("--customer", help="Only this customer's messages")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only these: sent, suppressed, failed, sending, retrying"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many messages")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """A journey's messages, newest first, with every attempt: when, how it ended, how long
    it took and what the provider answered (the key of a failed one goes to `resend`)."""
    from rich.markup import escape

    from crmflow.services import journey_deliveries as deliveries

    try:
        query = deliveries.DeliveriesQuery.model_validate(
            {"customer_id": customer, "status": status, "limit": limit}
        )
    except ValidationError as exc:
        common.fail(escape(describe_errors(exc)))
    with _runtime() as rt:
        data = deliveries.deliveries(rt, name, query)
    if as_json:
        common.emit_json(data.model_dump(mode="json"))
        return
    out = common.console
    if not data.deliveries:
        out.print(f"journey {name}: no messages", highlight=False)
    for d in data.deliveries:
        why = f" ({d.reason})" if d.reason else ""
        again = f", re-sends {d.resend_of}" if d.resend_of else ""
        out.print(
            f"{d.key}  {d.customer_id}  {d.node}  {d.channel}  {d.status}{why}{again}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        for a in d.attempts:
            took = f"{a.latency_ms} ms" if a.latency_ms is not None else "-"
            out.print(
                f"    #{a.attempt} {a.at:%Y-%m-%d %H:%M:%S} {a.outcome} {took}: {a.response or ''}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


@journeys_app.command("resend")
def resend_cmd(
    key: Annotated[str, typer.Argument(help="The failed delivery's key (`journeys deliveries`)")],
    as_json: JsonFlag = False,
) -> None:
    """Send a message whose delivery failed again, once, on purpose: rendered for the
    customer as the node is deployed now, checked for consent and an address, recorded as a
    delivery of its own (with its attempt) that names the one it re-sends."""
    from crmflow.cli.app import _cli_principal
    from crmflow.services import journey_deliveries as deliveries

    with _runtime() as rt:
        sent = asyncio.run(deliveries.resend(rt, key, by=_cli_principal().actor))
    if as_json:
        common.emit_json(sent.model_dump(mode="json"))
        return
    common.console.print(
        f"re-sent {sent.resend_of} to {sent.customer_id} via {sent.via} as {sent.key} "
        f"({sent.provider_message_id})",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
