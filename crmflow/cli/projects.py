"""`crmflow project …`: rollout projects, one ProjectWorkflow each (id `project-<slug>`).

`create` validates the template, team and holiday files, computes the plan and starts the
project's workflow; `status`, `gantt` and `list` read it through queries and visibility; every
change (`check`, `done`, `signoff`, `risk …`, `rebaseline`, `start`, `finish`, `close`,
`migrate-check`) is an Update whose validator may refuse it: the reason is printed and the
command exits 1. The commands need a running Temporal and a worker: `crmflow up` (the
embedded dev server and a worker), or a cluster (CRMFLOW_TEMPORAL_ADDRESS) with
`crmflow worker` processes.
"""

from __future__ import annotations

import asyncio
import csv
import json
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from crmflow.cli import common
from crmflow.formats import describe_errors
from crmflow.settings import Settings
from crmflow.temporal import TemporalSetupError, connect
from projects.gantt import project_html, project_svg
from projects.health import StatusReport
from projects.migration_check import (
    MigrationReport,
    check_migration,
    load_mapping,
    render_html,
    terminal_summary,
)
from projects.models import load_holidays, load_team, load_template
from projects.state import ProjectRuleError, ProjectState, RiskChange, RiskInput, new_project
from rules.source import RuleFileError
from workflows.project import (
    WORKFLOW_TYPE,
    CheckInput,
    CloseInput,
    DoneInput,
    MigrationCheckInput,
    MigrationCheckResult,
    ProjectCarry,
    ProjectSnapshot,
    ProjectWorkflow,
    RebaselineInput,
    RiskAddInput,
    RiskCloseInput,
    RiskUpdateInput,
    SignOffInput,
    StageInput,
    project_slug,
    workflow_id,
)

project_app = typer.Typer(
    help="Rollout projects: create, status, gantt, check, done, signoff, risk, rebaseline, "
    "list, migrate-check.",
    no_args_is_help=True,
)
risk_app = typer.Typer(help="A project's risk register: add, update, close.", no_args_is_help=True)
project_app.add_typer(risk_app, name="risk")

ANSWER_SECONDS = 30.0  # how long a query or update may wait for a worker to answer
LIST_SECONDS = 10.0  # the same for each project's status in `list`
T = TypeVar("T")

NameArg = Annotated[str, typer.Argument(help="The project's name (as given to `create`)")]
AsOpt = Annotated[str, typer.Option("--as", help="Who acts: a team member's name or e-mail")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
InFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]


def fail(message: str) -> NoReturn:
    common.fail(message)
    raise AssertionError  # fail() exits


class Refused(Exception):
    """An update or query the project refused; the message is for the user."""


async def _client(settings: Settings) -> Client:
    try:
        return await connect(settings)
    except TemporalSetupError as exc:
        hint = " (start it with `crmflow up`)" if settings.embedded else ""
        raise TemporalSetupError(f"{exc}{hint}") from exc


def run_temporal(settings: Settings, work: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, run `work`, turn Temporal's errors into one clear line and exit 1."""

    async def main() -> T:
        client = await _client(settings)
        return await work(client)

    try:
        return asyncio.run(main())
    except TemporalSetupError as exc:
        fail(str(exc))
    except Refused as exc:
        fail(str(exc))


def _handle(client: Client, name: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(workflow_id(name))


def _not_found(name: str) -> Refused:
    return Refused(
        f"no project named {name!r} (workflow {workflow_id(name)}); "
        "`crmflow project list` shows the projects"
    )


async def _answer(name: str, settings: Settings, call: Awaitable[T]) -> T:
    """Await a query or update: refusals, unknown projects and silence become `Refused`."""
    try:
        return await asyncio.wait_for(call, ANSWER_SECONDS)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise Refused(
            f"no worker answered for project {name!r} within {ANSWER_SECONDS:.0f}s: is "
            f"`crmflow up` or `crmflow worker` running on task queue {settings.task_queue!r}? "
            "(a change sent now may still be applied once a worker picks it up: check "
            "`crmflow project status` before sending it again)"
        ) from None
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError):
            raise Refused(f"refused: {cause.message}") from None
        raise Refused(f"refused: {cause}") from None
    except WorkflowQueryFailedError as exc:
        raise Refused(f"project {name!r} could not answer: {exc}") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(name) from None
        if "already completed" in exc.message or exc.status == RPCStatusCode.FAILED_PRECONDITION:
            raise Refused(f"project {name!r} is over (its workflow has completed)") from None
        raise Refused(f"Temporal refused the call for project {name!r}: {exc.message}") from None


def _settings() -> Settings:
    settings: Settings = common.load_settings()
    return settings


def _update(name: str, update: Any, arg: Any) -> Any:
    settings = _settings()

    async def work(client: Client) -> Any:
        return await _answer(name, settings, _handle(client, name).execute_update(update, arg))

    return run_temporal(settings, work)


def _say(result: Any) -> None:
    common.console.print(str(result), highlight=False)


# --------------------------------------------------------------------------- create


def _params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--param {item!r}: expected key=value, e.g. --param legacy_system=false")
        out[key.strip()] = value.strip()
    return out


def _file_errors(exc: RuleFileError) -> NoReturn:
    for e in exc.errors:
        common.err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
    fail(f"{len(exc.errors)} problem(s) found")


def _plan_tables(state: ProjectState) -> list[Table]:
    plan = state.plan
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
        tg = next(t for _, t in state.template.gates() if t.id == g.id)
        gates.add_row(g.name, g.stage, g.at, str(g.due), tg.needs())
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
    try:
        slug = project_slug(name)
    except ValueError as exc:
        fail(str(exc))
    params = _params(param)
    try:
        tpl = load_template(template, params)
        members = load_team(team)
        calendar = load_holidays(holidays) if holidays else None
    except RuleFileError as exc:
        _file_errors(exc)
    try:
        state = new_project(
            slug, name, tpl, params, members, calendar, start_day, datetime.now(UTC)
        )
    except ProjectRuleError as exc:
        fail(str(exc))
    settings = _settings()

    async def work(client: Client) -> str:
        try:
            handle = await client.start_workflow(
                ProjectWorkflow.run,
                args=[state, None],
                id=workflow_id(name),
                task_queue=settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                memo={"name": name, "template": tpl.template},
            )
        except WorkflowAlreadyStartedError:
            raise Refused(
                f"a project named {name!r} exists already (workflow {workflow_id(name)})"
            ) from None
        return handle.id

    wf_id = run_temporal(settings, work)
    if as_json:
        common.emit_json(
            {
                "workflow_id": wf_id,
                "project_id": slug,
                "name": name,
                "plan": state.plan.model_dump(mode="json"),
            }
        )
        return
    console = common.console
    console.print(
        f"project {name!r} started as workflow {wf_id}: {state.plan.start} → "
        f"{state.plan.finish}, critical path {' → '.join(state.plan.critical_path)}",
        highlight=False,
    )
    for table in _plan_tables(state):
        console.print(table)


# --------------------------------------------------------------------------- status


def _d(value: Any) -> str:
    return "" if value is None else str(value)


_COLOUR = {"green": "green", "amber": "yellow", "red": "red"}


def _print_status(report: StatusReport, carry: ProjectCarry) -> None:
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
    if carry.closed_at:
        console.print(f"closed on {carry.closed_at.date()} by {carry.closed_by}", highlight=False)
    for r in report.health.reasons:
        console.print(f"  [{_COLOUR[r.status]}]● {r.status}[/] {r.message}", highlight=False)
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
        done = f"{m.done_at.date()} ({m.done_by})" if m.done_at else ""
        ms.add_row(m.name, str(m.due), _d(m.baseline_due), done, str(m.late_days or ""))
    console.print(ms)
    gates = Table("gate", "due", "passed", "signed by", "still needed", title="gates")
    for g in report.gates:
        gates.add_row(
            g.name,
            str(g.due),
            _d(g.passed_at.date() if g.passed_at else None),
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
    if carry.kpi_review is not None:
        kr = carry.kpi_review
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


async def _status(client: Client, name: str, settings: Settings) -> tuple[StatusReport, Any]:
    handle = _handle(client, name)
    report = await _answer(name, settings, handle.query(ProjectWorkflow.status, datetime.now(UTC)))
    snap = await _answer(name, settings, handle.query(ProjectWorkflow.extras))
    return report, snap


@project_app.command("status")
def status(name: NameArg, as_json: JsonFlag = False) -> None:
    """Plan against actual per stage and milestone, health with the reasons, due next."""
    settings = _settings()
    report, carry = run_temporal(settings, lambda c: _status(c, name, settings))
    if as_json:
        data = report.model_dump(mode="json")
        data["workflow_id"] = workflow_id(name)
        data["closed_at"] = carry.closed_at.isoformat() if carry.closed_at else None
        data["kpi_review"] = carry.kpi_review.model_dump(mode="json") if carry.kpi_review else None
        common.emit_json(data)
        return
    _print_status(report, carry)


async def _snapshot(client: Client, name: str, settings: Settings) -> ProjectSnapshot:
    return await _answer(name, settings, _handle(client, name).query(ProjectWorkflow.project))


@project_app.command("gantt")
def gantt(
    name: NameArg,
    out: Annotated[Path, typer.Option("--out", help="FILE.svg or FILE.html")],
) -> None:
    """Draw the plan, the actual progress and the baseline as SVG (or an HTML page)."""
    if out.suffix.lower() not in (".svg", ".html", ".htm"):
        fail(f"--out {out}: expected a .svg or .html file")
    settings = _settings()
    snap = run_temporal(settings, lambda c: _snapshot(c, name, settings))
    now = datetime.now(UTC)
    text = (
        project_svg(snap.state, now)
        if out.suffix.lower() == ".svg"
        else project_html(snap.state, now)
    )
    out.write_text(text, encoding="utf-8")
    common.console.print(f"wrote {out}", highlight=False)


# --------------------------------------------------------------------------- updates


@project_app.command("check")
def check(
    name: NameArg,
    item: Annotated[str, typer.Argument(help="Checklist item id")],
    by: AsOpt,
    note: Annotated[str | None, typer.Option(help="A note kept with the check")] = None,
) -> None:
    """Check off a checklist item."""
    _say(_update(name, ProjectWorkflow.check, CheckInput(item=item, by=by, note=note)))


@project_app.command("done")
def done(
    name: NameArg,
    milestone: Annotated[str, typer.Argument(help="Milestone id")],
    by: AsOpt,
    note: Annotated[str | None, typer.Option(help="A note kept with the milestone")] = None,
) -> None:
    """Mark a milestone done."""
    _say(_update(name, ProjectWorkflow.done, DoneInput(milestone=milestone, by=by, note=note)))


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
    _say(_update(name, ProjectWorkflow.signoff, inp))


@project_app.command("rebaseline")
def rebaseline(
    name: NameArg,
    by: AsOpt,
    reason: Annotated[str | None, typer.Option(help="Why the plan is re-baselined")] = None,
) -> None:
    """Replan from actual dates and keep it as the next baseline (earlier ones stay)."""
    _say(_update(name, ProjectWorkflow.rebaseline, RebaselineInput(by=by, reason=reason)))


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
) -> None:
    """Record that a stage started (stages with checklist items start by themselves)."""
    inp = StageInput(stage=stage, by=by, on=_on(on))
    _say(_update(name, ProjectWorkflow.start_stage, inp))


@project_app.command("finish")
def finish_stage(
    name: NameArg,
    stage: Annotated[str, typer.Argument(help="Stage id")],
    by: AsOpt,
    on: OnOpt = None,
) -> None:
    """Record that a stage finished (stages with checklist items finish by themselves)."""
    inp = StageInput(stage=stage, by=by, on=_on(on))
    _say(_update(name, ProjectWorkflow.finish_stage, inp))


@project_app.command("close")
def close(
    name: NameArg,
    by: AsOpt,
    reason: Annotated[str | None, typer.Option(help="Why the project is closed")] = None,
) -> None:
    """Close the project early (a project manager or the sponsor); its workflow ends."""
    _say(_update(name, ProjectWorkflow.close, CloseInput(by=by, reason=reason)))


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
    _say(_update(name, ProjectWorkflow.risk_add, RiskAddInput(risk=risk, by=by)))


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
    _say(_update(name, ProjectWorkflow.risk_update, inp))


@risk_app.command("close")
def risk_close(
    name: NameArg,
    risk_id: Annotated[str, typer.Argument(help="The risk's id, e.g. R1")],
    by: AsOpt,
    comment: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Close a risk."""
    inp = RiskCloseInput(risk_id=risk_id, by=by, comment=comment)
    _say(_update(name, ProjectWorkflow.risk_close, inp))


# --------------------------------------------------------------------------- list


async def _list(client: Client, settings: Settings) -> list[dict[str, Any]]:
    executions: list[WorkflowExecution] = []
    async for wf in client.list_workflows(f'WorkflowType="{WORKFLOW_TYPE}"'):
        executions.append(wf)
    latest: dict[str, WorkflowExecution] = {}
    for wf in executions:  # newest first; one row per project
        latest.setdefault(wf.id, wf)
    limit = asyncio.Semaphore(16)

    async def row(wf: WorkflowExecution) -> dict[str, Any]:
        memo = await wf.memo()
        out: dict[str, Any] = {
            "workflow_id": wf.id,
            "name": memo.get("name", wf.id.removeprefix("project-")),
            "template": memo.get("template"),
            "workflow_status": wf.status.name.lower() if wf.status else None,
            "started": wf.start_time.isoformat(),
            "health": None,
            "forecast_finish": None,
            "next_due": None,
        }
        if wf.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
            async with limit:
                try:
                    report: StatusReport = await asyncio.wait_for(
                        client.get_workflow_handle(wf.id).query(
                            ProjectWorkflow.status, datetime.now(UTC)
                        ),
                        LIST_SECONDS,
                    )
                except (TimeoutError, WorkflowQueryFailedError, RPCError):
                    out["health"] = "no answer (is a worker running?)"
                else:
                    out["health"] = report.health.status
                    out["forecast_finish"] = report.forecast_finish.isoformat()
                    if report.due_next:
                        d = report.due_next[0]
                        out["next_due"] = f"{d.due} {d.kind} {d.name}"
        return out

    rows = await asyncio.gather(*(row(wf) for wf in latest.values()))
    return sorted(rows, key=lambda r: str(r["name"]))


@project_app.command("list")
def list_projects(as_json: JsonFlag = False) -> None:
    """Projects (workflows of type ProjectWorkflow) with their health."""
    settings = _settings()
    rows = run_temporal(settings, lambda c: _list(c, settings))
    if as_json:
        common.emit_json(rows)
        return
    table = Table("project", "workflow", "status", "health", "forecast finish", "next due")
    for r in rows:
        health = r["health"] or ""
        colour = _COLOUR.get(health)
        table.add_row(
            str(r["name"]),
            r["workflow_id"],
            str(r["workflow_status"]),
            f"[{colour}]{health}[/]" if colour else health,
            _d(r["forecast_finish"]),
            _d(r["next_due"]),
        )
    common.console.print(table)


# --------------------------------------------------------------------------- migration check


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text ({exc})")
    except csv.Error as exc:
        fail(f"{path}: not readable as CSV ({exc})")


_CUSTOMER_FIELDS = {"name", "email", "phone", "timezone", "locale", "owner", "lifecycle_stage"}


def customer_rows(report: MigrationReport) -> list[dict[str, Any]]:
    """The migrated rows as customer-import rows: `customer_id` (or `external_id`) is the
    key, the customer fields are copied, everything else goes to `attributes`; migrated
    members are `member`s unless the mapping says otherwise."""
    out = []
    for row in report.rows:
        key = row.get("customer_id") or row.get("external_id")
        if key in (None, ""):
            fail("the mapping needs a customer_id or external_id target to import the rows")
        customer: dict[str, Any] = {"customer_id": str(key), "lifecycle_stage": "member"}
        attributes: dict[str, Any] = {}
        for k, v in row.items():
            is_key = k == "customer_id" or (k == "external_id" and not row.get("customer_id"))
            if is_key or v is None or v == "":
                continue
            if isinstance(v, Decimal):
                v = str(v)
            elif isinstance(v, date | datetime):
                v = v.isoformat()
            if k in _CUSTOMER_FIELDS:
                customer[k] = v
            else:
                attributes[k] = v
        attributes["migrated_from"] = report.source
        customer["attributes"] = attributes
        out.append(customer)
    return out


async def _record(
    client: Client, name: str, settings: Settings, report: MigrationReport
) -> tuple[ProjectSnapshot, MigrationCheckResult]:
    handle = _handle(client, name)
    snap = await _snapshot(client, name, settings)
    if snap.state.template.migration is None:
        raise Refused(f"project {name!r}: its template has no migration section")
    result: MigrationCheckResult = await _answer(
        name,
        settings,
        handle.execute_update(
            ProjectWorkflow.record_migration_check, MigrationCheckInput(summary=report.summary())
        ),
    )
    return snap, result


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
        mapped = load_mapping(mapping)
    except RuleFileError as exc:
        _file_errors(exc)
    rows = _read_csv(source)
    report = check_migration(rows, mapped, str(source), datetime.now(UTC))
    settings = _settings()
    snap, recorded = run_temporal(settings, lambda c: _record(c, name, settings, report))
    policy = snap.state.template.migration
    assert policy is not None
    passed, reasons = report.meets(policy.thresholds)
    summary = terminal_summary(report, policy.thresholds)
    if html is not None:
        html.write_text(render_html(report, policy.thresholds), encoding="utf-8")
    imported = None
    if do_import and passed:
        imported = _import_rows(report, settings, as_json)
    if as_json:
        summary["recorded"] = recorded.model_dump()
        summary["imported"] = imported
        common.emit_json(summary)
    else:
        _print_migration(summary, passed, reasons, html)
    if do_import and not passed:
        fail("not imported: the check does not meet the template's thresholds")
    if not passed:
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
        console.print("[bold green]PASS[/]: the check meets the template's thresholds")
    else:
        console.print("[bold red]FAIL[/]: " + "; ".join(reasons), highlight=False)
    if html is not None:
        console.print(f"wrote {html}", highlight=False)
    console.print("recorded in the project (the migration gate reads the latest check)")


def _import_rows(report: MigrationReport, settings: Settings, as_json: bool) -> dict[str, Any]:
    from crmflow.ingest import ImportError_, import_file

    customers = customer_rows(report)
    engine = common.migrated_engine(settings)
    with tempfile.TemporaryDirectory(prefix="crmflow-migration-") as tmp:
        path = Path(tmp) / "migrated-customers.jsonl"
        path.write_text(
            "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in customers), encoding="utf-8"
        )
        try:
            result = import_file(
                engine,
                path,
                "customers",
                phone_region=settings.default_phone_region,
                chunk_size=settings.import_chunk_size,
            )
        except ImportError_ as exc:
            fail(str(exc))
        finally:
            engine.dispose()
        result.rejects_file = None  # it was in a temporary folder: the lines are shown
        if not as_json:
            common.print_report(result)
        data = result.as_dict()
        data["source"] = report.source
        return data
