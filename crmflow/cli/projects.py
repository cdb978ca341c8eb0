"""`crmflow project …`: rollout projects, one ProjectWorkflow each (id `project-<slug>`).

`create` validates the template, team and holiday files, computes the plan and starts the
project's workflow; `status`, `gantt` and `list` read it through queries and visibility; every
change (`check`, `done`, `signoff`, `risk …`, `rebaseline`, `start`, `finish`, `close`,
`migrate-check`) is an Update whose validator may refuse it: the reason is printed and the
command exits 1. The commands need a running Temporal and a worker: `crmflow up` (the
embedded dev server and a worker), or a cluster (CRMFLOW_TEMPORAL_ADDRESS) with
`crmflow worker` processes.

A thin face over `crmflow.services.projects`: each command parses, calls one service and
prints; the service's typed errors become one line and exit 1 in `_run`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import typer
from pydantic import BaseModel, ValidationError
from rich.table import Table
from sqlalchemy import Engine

from crmflow.cli import common
from crmflow.contracts.projects import (
    CheckInput,
    CloseInput,
    DoneInput,
    RebaselineInput,
    RiskAddInput,
    RiskCloseInput,
    RiskUpdateInput,
    SignOffInput,
    StageInput,
)
from crmflow.domain import describe_errors
from crmflow.services import projects as service
from crmflow.services.errors import Invalid, ServiceError
from crmflow.services.projects import CreatedProject, MigrationOutcome, ProjectStatus
from crmflow.services.runtime import Runtime
from projects.migration_check import render_html
from projects.state import RiskChange, RiskInput
from store.db import make_engine

project_app = typer.Typer(
    help="Rollout projects: create, status, gantt, check, done, signoff, risk, rebaseline, "
    "list, migrate-check.",
    no_args_is_help=True,
)
risk_app = typer.Typer(help="A project's risk register: add, update, close.", no_args_is_help=True)
project_app.add_typer(risk_app, name="risk")

T = TypeVar("T")

NameArg = Annotated[str, typer.Argument(help="The project's name (as given to `create`)")]
AsOpt = Annotated[str, typer.Option("--as", help="Who acts: a team member's name or e-mail")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
InFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


def fail(message: str) -> NoReturn:
    common.fail(message)
    raise AssertionError  # fail() exits


def _problems(exc: ServiceError) -> NoReturn:
    """A service's refusal as one line (and, for problems in files, one line each)."""
    if isinstance(exc, service.ProjectRefused):
        fail(f"refused: {exc}")
    if isinstance(exc, Invalid) and any(p.field for p in exc.problems):
        for p in exc.problems:
            text = f"{p.field}: {p.reason}" if p.field else p.reason
            common.err.print(f"[red]{text}[/]", highlight=False, soft_wrap=True)
        fail(f"{len(exc.problems)} problem(s) found")
    fail(str(exc))


def _run(work: Callable[[Runtime], Coroutine[Any, Any, T]], engine: Engine | None = None) -> T:
    """Build the runtime, run one service call, turn its typed errors into exit 1."""
    settings = common.load_settings()
    # most commands only talk to Temporal: an engine is made (it connects lazily) but the
    # database is neither opened nor migrated, as before the service layer
    rt = Runtime(settings, engine if engine is not None else make_engine(settings.db_url))
    try:
        return asyncio.run(work(rt))
    except ServiceError as exc:
        _problems(exc)
    finally:
        rt.close()


def _say(change: service.Change) -> None:
    common.console.print(change.message, highlight=False)


def _update(
    name: str, call: Callable[[Runtime, str, Any], Coroutine[Any, Any, Any]], inp: BaseModel
) -> Any:
    return _run(lambda rt: call(rt, name, inp))


# --------------------------------------------------------------------------- create


def _params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--param {item!r}: expected key=value, e.g. --param legacy_system=false")
        out[key.strip()] = value.strip()
    return out


def _plan_tables(created: CreatedProject) -> list[Table]:
    plan = created.plan
    stages = Table("stage", "start", "finish", "days", "float", "depends on", title="plan")
    for s in plan.stages:
        name = f"[bold red]{s.name} ★[/]" if s.critical else s.name
        stages.add_row(
            name,
            str(s.start),
            str(s.finish),
            str(s.duration),
            str(s.total_float),
            ", ".join(f"{d.stage}+{d.lag}" if d.lag else d.stage for d in s.depends_on),
        )
    ms = Table("milestone", "stage", "due", "owner", title="milestones")
    for m in plan.milestones:
        ms.add_row(m.name, m.stage, str(m.due), m.owner)
    gates = Table("gate", "stage", "at", "due", "needs", title="gates")
    for g in plan.gates:
        gates.add_row(g.name, g.stage, g.at, str(g.due), created.gate_needs.get(g.id, ""))
    return [stages, ms, gates]


@project_app.command("create")
def create(
    template: InFile,
    name: Annotated[str, typer.Option("--name", help="The project's name")],
    start: Annotated[str, typer.Option("--start", help="Start date, YYYY-MM-DD")],
    team: Annotated[
        Path, typer.Option("--team", exists=True, dir_okay=False, help="The team file")
    ],
    holidays: Annotated[
        Path | None,
        typer.Option("--holidays", exists=True, dir_okay=False, help="A holiday calendar"),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="A template parameter, key=value (repeat the option)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compute the plan (working days, holidays, dependencies) and start the project."""
    try:
        start_day = date.fromisoformat(start)
    except ValueError:
        fail(f"--start {start!r} is not a date; expected YYYY-MM-DD")
    params = _params(param)
    try:
        spec = service.spec_from_files(name, start_day, template, team, holidays, dict(params))
    except ServiceError as exc:
        _problems(exc)
    created = _run(lambda rt: service.create(rt, spec))
    if as_json:
        common.emit_json(
            {
                "workflow_id": created.workflow_id,
                "project_id": created.project_id,
                "name": created.name,
                "plan": created.plan.model_dump(mode="json"),
                "warnings": created.warnings,
            }
        )
        return
    console = common.console
    plan = created.plan
    console.print(
        f"project {name!r} started as workflow {created.workflow_id}: {plan.start} → "
        f"{plan.finish}, critical path {' → '.join(plan.critical_path)}",
        highlight=False,
    )
    for table in _plan_tables(created):
        console.print(table)
    for warning in created.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


# --------------------------------------------------------------------------- status


def _d(value: Any) -> str:
    return "" if value is None else str(value)


def _day(at: datetime, tz: str) -> date:
    """The date of an action on the team's clock."""
    return at.astimezone(ZoneInfo(tz)).date()


_COLOUR = {"green": "green", "amber": "yellow", "red": "red"}


def _print_status(report: ProjectStatus) -> None:
    console = common.console
    colour = _COLOUR[report.health.status]
    base = (
        f", baseline {report.baseline} finish {report.baseline_finish}" if report.baseline else ""
    )
    console.print(
        f"[bold]{report.name}[/] ({report.project_id}) on {report.today}: "
        f"[bold {colour}]{report.health.status.upper()}[/]  forecast finish "
        f"{report.forecast_finish}{base}; open risks {report.open_risks}",
        highlight=False,
    )
    if report.closed_at:
        closed = _day(report.closed_at, report.timezone)
        console.print(f"closed on {closed} by {report.closed_by}", highlight=False)
    for r in report.health.reasons:
        console.print(f"  [{_COLOUR[r.status]}]● {r.status}[/] {r.message}", highlight=False)
    for warning in report.warnings:
        console.print(f"  [yellow]warning:[/] {warning}", highlight=False)
    stages = Table(
        "stage", "status", "plan", "baseline", "actual", "items", "float", title="stages"
    )
    for s in report.stages:
        stages.add_row(
            f"[bold red]{s.name} ★[/]" if s.critical else s.name,
            s.status,
            f"{s.planned_start} → {s.planned_finish}",
            f"{_d(s.baseline_start)} → {_d(s.baseline_finish)}",
            f"{_d(s.actual_start)} → {_d(s.actual_finish)}",
            f"{s.items_done}/{s.items_total}",
            str(s.total_float),
        )
    console.print(stages)
    ms = Table("milestone", "due", "baseline", "done", "late", title="milestones")
    for m in report.milestones:
        done = f"{_day(m.done_at, report.timezone)} ({m.done_by})" if m.done_at else ""
        ms.add_row(m.name, str(m.due), _d(m.baseline_due), done, str(m.late_days or ""))
    console.print(ms)
    gates = Table("gate", "due", "passed", "signed by", "still needed", title="gates")
    for g in report.gates:
        gates.add_row(
            g.name,
            str(g.due),
            _d(_day(g.passed_at, report.timezone) if g.passed_at else None),
            ", ".join(g.signed_by),
            ", ".join(f"{r} x{n}" for r, n in g.still_needed.items()),
        )
    console.print(gates)
    nxt = Table("due", "what", "stage", "owners", "late", title="due next")
    for d in report.due_next:
        nxt.add_row(
            str(d.due), f"{d.kind} {d.name}", d.stage, ", ".join(d.owners), str(d.late_days or "")
        )
    console.print(nxt)
    if report.kpi_review is not None:
        kr = report.kpi_review
        kpis = Table(
            "metric",
            "before",
            "after",
            "achieved",
            "target",
            "met",
            title=f"KPI review {kr.review_date} (go-live {kr.go_live})",
        )
        for k in kr.results:
            kpis.add_row(
                k.metric,
                _d(k.before),
                _d(k.after),
                _d(None if k.achieved is None else round(k.achieved, 4)),
                f"{k.compare} {k.direction} {k.target:g}",
                {True: "yes", False: "no", None: "?"}[k.met],
            )
        console.print(kpis)


@project_app.command("status")
def status(name: NameArg, as_json: JsonFlag = False) -> None:
    """Plan against actual per stage and milestone, health with the reasons, due next."""
    report = _run(lambda rt: service.status(rt, name))
    if as_json:
        common.emit_json(report.model_dump(mode="json"))
        return
    _print_status(report)


@project_app.command("gantt")
def gantt(
    name: NameArg,
    out: Annotated[Path, typer.Option("--out", help="FILE.svg or FILE.html")],
) -> None:
    """Draw the plan, the actual progress and the baseline as SVG (or an HTML page)."""
    if out.suffix.lower() not in (".svg", ".html", ".htm"):
        fail(f"--out {out}: expected a .svg or .html file")
    draw = service.gantt_svg if out.suffix.lower() == ".svg" else service.gantt_html
    text = _run(lambda rt: draw(rt, name))
    out.write_text(text, encoding="utf-8")
    common.console.print(f"wrote {out}", highlight=False)


# --------------------------------------------------------------------------- updates


OverrideOpt = Annotated[
    str | None,
    typer.Option(
        "--override",
        help="The project manager's reason for setting a control aside (kept in the project)",
    ),
]


@project_app.command("check")
def check(
    name: NameArg,
    item: Annotated[str, typer.Argument(help="Checklist item id")],
    by: AsOpt,
    note: Annotated[str | None, typer.Option(help="A note kept with the check")] = None,
    override: OverrideOpt = None,
) -> None:
    """Check off a checklist item (by a person holding its role; the project manager may
    check it for them, or start its stage early, with --override REASON)."""
    inp = CheckInput(item=item, by=by, note=note, override=override)
    _say(_update(name, service.check, inp))


@project_app.command("done")
def done(
    name: NameArg,
    milestone: Annotated[str, typer.Argument(help="Milestone id")],
    by: AsOpt,
    note: Annotated[str | None, typer.Option(help="A note kept with the milestone")] = None,
) -> None:
    """Mark a milestone done."""
    _say(_update(name, service.done, DoneInput(milestone=milestone, by=by, note=note)))


@project_app.command("signoff")
def signoff(
    name: NameArg,
    gate: Annotated[str, typer.Argument(help="Gate id")],
    by: AsOpt,
    comment: Annotated[str | None, typer.Option(help="Kept with the sign-off")] = None,
    role: Annotated[
        str | None, typer.Option(help="The role signed for, when the person holds several")
    ] = None,
) -> None:
    """Sign a gate (refused unless the person holds a role the gate still needs)."""
    inp = SignOffInput(gate=gate, by=by, comment=comment, role=role)
    _say(_update(name, service.signoff, inp))


@project_app.command("rebaseline")
def rebaseline(
    name: NameArg,
    by: AsOpt,
    reason: Annotated[str | None, typer.Option(help="Why the plan is re-baselined")] = None,
) -> None:
    """Replan from actual dates and keep it as the next baseline (earlier ones stay)."""
    _say(_update(name, service.rebaseline, RebaselineInput(by=by, reason=reason)))


OnOpt = Annotated[
    str | None, typer.Option("--on", help="The date it happened (default today), YYYY-MM-DD")
]


def _on(on: str | None) -> date | None:
    if on is None:
        return None
    try:
        return date.fromisoformat(on)
    except ValueError:
        fail(f"--on {on!r} is not a date; expected YYYY-MM-DD")


@project_app.command("start")
def start_stage(
    name: NameArg,
    stage: Annotated[str, typer.Argument(help="Stage id")],
    by: AsOpt,
    on: OnOpt = None,
    override: OverrideOpt = None,
) -> None:
    """Record that a stage started (stages with checklist items start by themselves); before
    the stages it depends on have finished only the project manager may, with --override."""
    inp = StageInput(stage=stage, by=by, on=_on(on), override=override)
    _say(_update(name, service.start_stage, inp))


@project_app.command("finish")
def finish_stage(
    name: NameArg,
    stage: Annotated[str, typer.Argument(help="Stage id")],
    by: AsOpt,
    on: OnOpt = None,
    override: OverrideOpt = None,
) -> None:
    """Record that a stage finished (stages with checklist items finish by themselves); one
    that had not started starts too, so before its dependencies only with --override."""
    inp = StageInput(stage=stage, by=by, on=_on(on), override=override)
    _say(_update(name, service.finish_stage, inp))


@project_app.command("close")
def close(
    name: NameArg,
    by: AsOpt,
    reason: Annotated[str | None, typer.Option(help="Why the project is closed")] = None,
) -> None:
    """Close the project early (a project manager or the sponsor); its workflow ends."""
    _say(_update(name, service.close, CloseInput(by=by, reason=reason)))


Level = Annotated[str | None, typer.Option(help="low, medium or high")]


@risk_app.command("add")
def risk_add(
    name: NameArg,
    title: Annotated[str, typer.Option(help="What could go wrong")],
    owner: Annotated[str, typer.Option(help="A team member who owns the risk")],
    by: AsOpt,
    severity: Annotated[str | None, typer.Option(help="low, medium, high or critical")] = None,
    probability: Level = None,
    impact: Level = None,
    mitigation: Annotated[str | None, typer.Option(help="What is done about it")] = None,
    stage: Annotated[str | None, typer.Option(help="The stage it belongs to")] = None,
) -> None:
    """Add a risk (a severity, or probability and impact)."""
    try:
        risk = RiskInput.model_validate(
            {
                "title": title,
                "owner": owner,
                "severity": severity,
                "probability": probability,
                "impact": impact,
                "mitigation": mitigation,
                "stage": stage,
            }
        )
    except ValidationError as exc:
        fail(describe_errors(exc))
    _say(_update(name, service.add_risk, RiskAddInput(risk=risk, by=by)))


@risk_app.command("update")
def risk_update(
    name: NameArg,
    risk_id: Annotated[str, typer.Argument(help="The risk's id, e.g. R1")],
    by: AsOpt,
    title: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    severity: Annotated[str | None, typer.Option(help="low, medium, high or critical")] = None,
    probability: Level = None,
    impact: Level = None,
    mitigation: Annotated[str | None, typer.Option()] = None,
    comment: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Change a risk's fields (those not given stay)."""
    try:
        change = RiskChange.model_validate(
            {
                "title": title,
                "owner": owner,
                "severity": severity,
                "probability": probability,
                "impact": impact,
                "mitigation": mitigation,
                "comment": comment,
            }
        )
    except ValidationError as exc:
        fail(describe_errors(exc))
    inp = RiskUpdateInput(risk_id=risk_id, change=change, by=by)
    _say(_update(name, service.update_risk, inp))


@risk_app.command("close")
def risk_close(
    name: NameArg,
    risk_id: Annotated[str, typer.Argument(help="The risk's id, e.g. R1")],
    by: AsOpt,
    comment: Annotated[
        str | None,
        typer.Option("--comment", "--reason", help="Why (needed for a high or critical risk)"),
    ] = None,
) -> None:
    """Close a risk (a high or critical one: its owner or the project manager, with a reason)."""
    inp = RiskCloseInput(risk_id=risk_id, by=by, comment=comment)
    _say(_update(name, service.close_risk, inp))


# --------------------------------------------------------------------------- list


@project_app.command("list")
def list_projects(as_json: JsonFlag = False) -> None:
    """Projects (workflows of type ProjectWorkflow) with their health."""
    rows = _run(service.list_projects)
    if as_json:
        common.emit_json([r.model_dump(mode="json") for r in rows])
        return
    table = Table("project", "workflow", "status", "health", "forecast finish", "next due")
    for r in rows:
        health = r.health or ""
        colour = _COLOUR.get(health)
        table.add_row(
            r.name,
            r.workflow_id,
            str(r.workflow_status),
            f"[{colour}]{health}[/]" if colour else health,
            _d(r.forecast_finish),
            _d(r.next_due),
        )
    common.console.print(table)


# --------------------------------------------------------------------------- migration check


@project_app.command("migrate-check")
def migrate_check(
    name: NameArg,
    source: Annotated[
        Path, typer.Option("--source", exists=True, dir_okay=False, help="Legacy rows (CSV)")
    ],
    mapping: Annotated[
        Path, typer.Option("--mapping", exists=True, dir_okay=False, help="The mapping file")
    ],
    html: Annotated[Path | None, typer.Option("--html", help="Write the report here")] = None,
    do_import: Annotated[
        bool,
        typer.Option("--import", help="Import the mapped rows as customers when the check passes"),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check legacy data against the mapping and the template's thresholds; record the result
    in the project (the migration gate waits for a passing one); optionally import it."""
    try:
        rows, mapped = service.read_migration_input(source, mapping)
        sha256 = service.source_sha256(source)
    except ServiceError as exc:
        _problems(exc)
    # the import writes customers: only then is the database opened (and migrated)
    engine = common.migrated_engine(common.load_settings()) if do_import else None
    outcome: MigrationOutcome = _run(
        lambda rt: service.migration_check(
            rt,
            name,
            rows,
            mapped,
            str(source),
            import_rows=do_import,
            now=datetime.now(UTC),
            sha256=sha256,
        ),
        engine,
    )
    summary = outcome.summary
    if html is not None:
        page = render_html(outcome.report, outcome.thresholds, (outcome.passed, outcome.reasons))
        html.write_text(page, encoding="utf-8")
    imported = None
    if outcome.imported is not None:
        if not as_json:
            common.print_report(outcome.imported)
        imported = outcome.imported.as_dict()
    if as_json:
        summary["recorded"] = outcome.recorded.model_dump()
        summary["imported"] = imported
        rec = outcome.reconciliation
        summary["reconciliation"] = rec.model_dump(mode="json") if rec is not None else None
        common.emit_json(summary)
    else:
        _print_migration(summary, outcome.passed, outcome.reasons, html)
    if do_import and outcome.imported is None:
        fail("not imported: the check does not meet the template's migration policy")
    if not outcome.passed:
        raise typer.Exit(1)


def _print_migration(
    summary: dict[str, Any], passed: bool, reasons: list[str], html: Path | None
) -> None:
    console = common.console
    table = Table("figure", "value", title=f"migration check: {summary['source']}")
    for key, value in summary.items():
        if key in ("passed", "reasons", "source"):
            continue
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        table.add_row(key, _d(shown))
    console.print(table)
    if passed:
        console.print("[bold green]PASS[/]: the check meets the template's migration policy")
    else:
        console.print("[bold red]FAIL[/]: " + "; ".join(reasons), highlight=False)
    if html is not None:
        console.print(f"wrote {html}", highlight=False)
    console.print("recorded in the project (the migration gate reads the latest check)")
