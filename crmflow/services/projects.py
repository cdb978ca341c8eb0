"""Rollout projects: one ProjectWorkflow each (id `project-<slug>`), read and changed here.

`create` checks the template, team and holidays (files or models), computes the plan and
starts the workflow. `status`, `snapshot` and the Gantt read the project through queries,
`list_projects` through visibility. Every change is the workflow's Update of that name: its
validator applies the project's rules, and a refusal comes back as `ProjectRefused` with the
rule's reason. Temporal's errors are told apart by type and status code, never by message
text: an unknown project is `NotFound`, one whose workflow has ended is `Refused`, silence
from the workers is `Unavailable`.

The acting person (`by`) is a parameter: the CLI takes it from `--as`, the API from the key's
bound team member. Nothing here knows which face calls.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import time
from collections.abc import Awaitable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
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

from crmflow.contracts.projects import (
    WORKFLOW_TYPE,
    CheckInput,
    CloseInput,
    DoneInput,
    KpiReviewRecord,
    MigrationCheckInput,
    MigrationCheckResult,
    ProjectChange,
    ProjectSnapshot,
    RebaselineInput,
    RiskAddInput,
    RiskCloseInput,
    RiskUpdateInput,
    SignOffInput,
    StageInput,
    project_slug,
    workflow_id,
)
from crmflow.domain import Customer, describe_errors
from crmflow.ingest import ChunkLoop
from crmflow.ingest_report import IngestReport, RowFault
from crmflow.services.errors import (
    Conflict,
    FieldProblem,
    Invalid,
    NotFound,
    Refused,
    ServiceError,
    Unavailable,
)
from crmflow.services.runtime import Runtime
from projects.gantt import project_html, project_svg
from projects.health import StatusReport
from projects.migration_check import (
    MappingFile,
    MigrationReport,
    check_migration,
    load_mapping,
    terminal_summary,
)
from projects.models import (
    HolidayCalendar,
    MigrationThresholds,
    Scalar,
    Team,
    Template,
    check_template,
    load_holidays,
    load_team,
    load_template,
)
from projects.plan import Plan, calendar_warnings
from projects.state import ProjectRuleError, new_project
from rules.source import SourceError, YamlDoc
from store.models import CustomerRow
from workflows.project import ProjectWorkflow

ANSWER_SECONDS = 30.0  # how long a query or update may wait for a worker to answer
LIST_SECONDS = 10.0  # the same for each project's status in `list_projects`
T = TypeVar("T")


class ProjectRefused(Refused):
    """The project's rules refused a change: the reason is the Update validator's."""


# --------------------------------------------------------------------------- models


class ProjectSpec(BaseModel):
    """What a project is created from: the same models the YAML files load into."""

    name: str = Field(min_length=1, max_length=200, description="The project's name")
    start: date = Field(description="The first working day of the plan")
    template: Template
    team: Team
    holidays: HolidayCalendar | None = None
    params: dict[str, Scalar] = Field(
        default_factory=dict, description="Template parameters (text is read as YAML)"
    )


class CreatedProject(BaseModel):
    workflow_id: str
    project_id: str
    name: str
    plan: Plan
    gate_needs: dict[str, str] = Field(
        default_factory=dict, description="gate id -> the sign-offs it needs"
    )
    warnings: list[str] = Field(
        default_factory=list, description="e.g. a plan that runs past the holiday calendar"
    )


class ProjectRow(BaseModel):
    """A project as listed: visibility's record and, while it runs, its health."""

    workflow_id: str
    name: str
    template: str | None
    workflow_status: str | None
    started: datetime
    health: str | None = None
    forecast_finish: date | None = None
    next_due: str | None = None


class ProjectStatus(StatusReport):
    """The `status` query with what the workflow keeps beside the state."""

    workflow_id: str
    closed_at: datetime | None = None
    closed_by: str | None = None
    close_reason: str | None = None
    kpi_review: KpiReviewRecord | None = None


class Change(BaseModel):
    """An accepted change: what the workflow recorded, and its own words for it."""

    workflow_id: str
    message: str
    change: ProjectChange | None = Field(
        None, description="the update's typed result (None from a project started before it)"
    )


class Reconciliation(BaseModel):
    """The migrated rows against the store after an import: counts and amounts."""

    rows_migrated: int = Field(description="rows the check mapped (and the import was given)")
    rows_found: int = Field(description="of those, customers found in the store")
    missing: list[str] = Field(default_factory=list, description="the first ids not found")
    amount_field: str | None = None
    amount_migrated: Decimal | None = None
    amount_found: Decimal | None = Field(None, description="the field's sum in the store")
    numbers_as_text: int = Field(0, description="amounts stored as text, not numbers")
    matches: bool


class MigrationOutcome(BaseModel):
    """A migration check: the report, its verdict, what the project recorded, and the
    import when one was asked for and the check passed, reconciled against the store."""

    report: MigrationReport
    thresholds: MigrationThresholds
    passed: bool
    reasons: list[str]
    summary: dict[str, Any]
    recorded: MigrationCheckResult
    imported: IngestReport | None = None
    reconciliation: Reconciliation | None = None


# --------------------------------------------------------------------------- errors


def _not_found(name: str) -> NotFound:
    wf = _safe_id(name)
    return NotFound(
        f"no project named {name!r}"
        + (f" (workflow {wf})" if wf else "")
        + "; `crmflow project list` shows the projects"
    )


def _safe_id(name: str) -> str | None:
    try:
        return workflow_id(name)
    except ValueError:
        return None


def _handle(client: Client, name: str) -> WorkflowHandle[Any, Any]:
    wf = _safe_id(name)
    if wf is None:  # a name with no letters or digits names no project
        raise _not_found(name)
    return client.get_workflow_handle(wf)


def _silent(rt: Runtime, name: str) -> Unavailable:
    return Unavailable(
        f"no worker answered for project {name!r} within {ANSWER_SECONDS:.0f}s: is "
        f"`crmflow up` or `crmflow worker` running on task queue {rt.settings.task_queue!r}? "
        "(a change sent now may still be applied once a worker picks it up: check "
        "`crmflow project status` before sending it again)"
    )


async def _why_not_found(client: Client, name: str) -> ServiceError:
    """Temporal answers NOT_FOUND both for no such workflow and for one that has ended:
    describe() tells them apart."""
    try:
        desc = await _handle(client, name).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return _not_found(name)
        return Unavailable(f"Temporal did not describe project {name!r}: {exc.message}")
    if desc.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        return _over(name)
    return _not_found(name)


def _over(name: str) -> Refused:
    return Refused(f"project {name!r} is over (its workflow has completed)")


async def _answer(rt: Runtime, client: Client, name: str, call: Awaitable[T]) -> T:
    """Await a query or update; Temporal's errors become the service's typed errors."""
    try:
        return await asyncio.wait_for(call, ANSWER_SECONDS)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise _silent(rt, name) from None
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
        raise ProjectRefused(reason) from None
    except WorkflowQueryFailedError as exc:
        raise Refused(f"project {name!r} could not answer: {exc}") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise await _why_not_found(client, name) from None
        if exc.status == RPCStatusCode.FAILED_PRECONDITION:
            raise _over(name) from None
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise Unavailable(
                f"Temporal did not answer for project {name!r}: {exc.message}"
            ) from None
        raise Refused(f"Temporal refused the call for project {name!r}: {exc.message}") from None


# --------------------------------------------------------------------------- create


def _rule_problems(exc: SourceError) -> Invalid:
    return Invalid(
        [FieldProblem(f"{e.file}:{e.line}" if e.line else e.file, e.message) for e in exc.errors]
    )


def spec_from_files(
    name: str,
    start: date,
    template: Path,
    team: Path,
    holidays: Path | None = None,
    params: dict[str, Scalar] | None = None,
) -> ProjectSpec:
    """Read and check the three files; every problem is named with its file and line."""
    _slug(name)
    try:
        tpl = load_template(template, params or {})
        members = load_team(team)
        calendar = load_holidays(holidays) if holidays else None
    except SourceError as exc:
        raise _rule_problems(exc) from None
    return ProjectSpec(
        name=name, start=start, template=tpl, team=members, holidays=calendar, params=params or {}
    )


def _slug(name: str) -> str:
    try:
        return project_slug(name)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _checked(template: Template, params: dict[str, Scalar]) -> Template:
    """The checks that span a template (dependencies, ids, parameters), for a template that
    came as a model rather than a file."""
    doc = YamlDoc("template", template.model_dump(mode="json"), {}, "")
    try:
        return check_template(doc, params)
    except SourceError as exc:
        raise _rule_problems(exc) from None


async def create(rt: Runtime, spec: ProjectSpec, now: datetime | None = None) -> CreatedProject:
    """Compute the plan and start the project's workflow; `Conflict` when one by that name
    exists (a project that failed may be created again)."""
    slug = _slug(spec.name)
    template = _checked(spec.template, spec.params)
    try:
        state = new_project(
            slug,
            spec.name,
            template,
            spec.params,
            spec.team,
            spec.holidays,
            spec.start,
            now or datetime.now(UTC),
        )
    except ProjectRuleError as exc:
        raise Invalid(str(exc)) from None
    client = await rt.temporal()
    wf = workflow_id(spec.name)
    try:
        await client.start_workflow(
            ProjectWorkflow.run,
            args=[state, None],
            id=wf,
            task_queue=rt.settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            memo={"name": spec.name, "template": template.template},
        )
    except WorkflowAlreadyStartedError:
        raise Conflict(f"a project named {spec.name!r} exists already (workflow {wf})") from None
    except RPCError as exc:
        raise Unavailable(f"Temporal did not start project {spec.name!r}: {exc.message}") from None
    needs = {g.id: g.needs() for _, g in template.gates()}
    return CreatedProject(
        workflow_id=wf,
        project_id=slug,
        name=spec.name,
        plan=state.plan,
        gate_needs={g.id: needs[g.id] for g in state.plan.gates},
        warnings=calendar_warnings(state.calendar, state.plan.start, state.plan.finish),
    )


# --------------------------------------------------------------------------- reads


async def status(rt: Runtime, name: str, now: datetime | None = None) -> ProjectStatus:
    """Plan against actual, health with its reasons, what is due next; closing and KPI review."""
    client = await rt.temporal()
    handle = _handle(client, name)
    report: StatusReport = await _answer(
        rt, client, name, handle.query(ProjectWorkflow.status, now or datetime.now(UTC))
    )
    carry = await _answer(rt, client, name, handle.query(ProjectWorkflow.extras))
    return ProjectStatus.model_validate(
        {
            **report.model_dump(),
            "workflow_id": handle.id,
            "closed_at": carry.closed_at,
            "closed_by": carry.closed_by,
            "close_reason": carry.close_reason,
            "kpi_review": carry.kpi_review,
        }
    )


async def snapshot(rt: Runtime, name: str) -> ProjectSnapshot:
    """The whole project: state, what is kept beside it, the workflow's time."""
    client = await rt.temporal()
    snap: ProjectSnapshot = await _answer(
        rt, client, name, _handle(client, name).query(ProjectWorkflow.project)
    )
    return snap


async def gantt_svg(rt: Runtime, name: str, now: datetime | None = None) -> str:
    """Plan, actual progress and baseline as an SVG document."""
    snap = await snapshot(rt, name)
    return project_svg(snap.state, now or datetime.now(UTC))


async def gantt_html(rt: Runtime, name: str, now: datetime | None = None) -> str:
    """The Gantt as a self-contained HTML page."""
    snap = await snapshot(rt, name)
    return project_html(snap.state, now or datetime.now(UTC))


async def list_projects(rt: Runtime) -> list[ProjectRow]:
    """Every project (newest run of each), by name; running ones with their health."""
    client = await rt.temporal()
    latest: dict[str, WorkflowExecution] = {}
    try:
        async for wf in client.list_workflows(f'WorkflowType="{WORKFLOW_TYPE}"'):
            latest.setdefault(wf.id, wf)  # newest first: one row per project
    except RPCError as exc:
        raise Unavailable(f"Temporal did not list the projects: {exc.message}") from None
    limit = asyncio.Semaphore(16)

    async def row(wf: WorkflowExecution) -> ProjectRow:
        memo = await wf.memo()
        out = ProjectRow(
            workflow_id=wf.id,
            name=str(memo.get("name", wf.id.removeprefix("project-"))),
            template=memo.get("template"),
            workflow_status=wf.status.name.lower() if wf.status else None,
            started=wf.start_time,
        )
        if wf.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
            return out
        async with limit:
            try:
                report: StatusReport = await asyncio.wait_for(
                    client.get_workflow_handle(wf.id).query(
                        ProjectWorkflow.status, datetime.now(UTC)
                    ),
                    LIST_SECONDS,
                )
            except (TimeoutError, WorkflowQueryFailedError, RPCError):
                out.health = "no answer (is a worker running?)"
                return out
        out.health = report.health.status
        out.forecast_finish = report.forecast_finish
        if report.due_next:
            d = report.due_next[0]
            out.next_due = f"{d.due} {d.kind} {d.name}"
        return out

    rows = await asyncio.gather(*(row(wf) for wf in latest.values()))
    return sorted(rows, key=lambda r: r.name)


# --------------------------------------------------------------------------- changes


async def _change(rt: Runtime, name: str, update: Any, inp: BaseModel) -> Change:
    client = await rt.temporal()
    handle = _handle(client, name)
    said = await _answer(rt, client, name, handle.execute_update(update, inp))
    if isinstance(said, ProjectChange):
        return Change(workflow_id=handle.id, message=said.message, change=said)
    return Change(workflow_id=handle.id, message=str(said))


async def check(rt: Runtime, name: str, inp: CheckInput) -> Change:
    """Check off a checklist item."""
    return await _change(rt, name, ProjectWorkflow.check, inp)


async def done(rt: Runtime, name: str, inp: DoneInput) -> Change:
    """Mark a milestone done."""
    return await _change(rt, name, ProjectWorkflow.done, inp)


async def signoff(rt: Runtime, name: str, inp: SignOffInput) -> Change:
    """Sign a gate as `inp.by` (refused unless they hold a role the gate still needs)."""
    return await _change(rt, name, ProjectWorkflow.signoff, inp)


async def start_stage(rt: Runtime, name: str, inp: StageInput) -> Change:
    return await _change(rt, name, ProjectWorkflow.start_stage, inp)


async def finish_stage(rt: Runtime, name: str, inp: StageInput) -> Change:
    return await _change(rt, name, ProjectWorkflow.finish_stage, inp)


async def add_risk(rt: Runtime, name: str, inp: RiskAddInput) -> Change:
    return await _change(rt, name, ProjectWorkflow.risk_add, inp)


async def update_risk(rt: Runtime, name: str, inp: RiskUpdateInput) -> Change:
    return await _change(rt, name, ProjectWorkflow.risk_update, inp)


async def close_risk(rt: Runtime, name: str, inp: RiskCloseInput) -> Change:
    return await _change(rt, name, ProjectWorkflow.risk_close, inp)


async def rebaseline(rt: Runtime, name: str, inp: RebaselineInput) -> Change:
    """Replan from actual dates and keep it as the next baseline."""
    return await _change(rt, name, ProjectWorkflow.rebaseline, inp)


async def close(rt: Runtime, name: str, inp: CloseInput) -> Change:
    """Close the project early; its workflow ends."""
    return await _change(rt, name, ProjectWorkflow.close, inp)


# --------------------------------------------------------------------------- migration


def read_migration_input(source: Path, mapping: Path) -> tuple[list[dict[str, str]], MappingFile]:
    """The legacy rows (CSV) and the mapping file, or `Invalid` naming what is wrong."""
    try:
        mapped = load_mapping(mapping)
    except SourceError as exc:
        raise _rule_problems(exc) from None
    try:
        with source.open(encoding="utf-8-sig", newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    except UnicodeDecodeError as exc:
        raise Invalid(f"{source}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise Invalid(f"{source}: not readable as CSV ({exc})") from None
    except OSError as exc:
        raise Invalid(f"{source}: cannot read the file ({exc})") from None
    return rows, mapped


def source_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (the migration check records it)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise Invalid(f"{path}: cannot read the file ({exc})") from None
    return digest.hexdigest()


def _number(v: Decimal) -> int | float:
    """A mapped number as a JSON number: whole numbers as int, the rest as float (the
    shortest float that reads back as the same decimal for amounts of up to 15 digits)."""
    return int(v) if v == v.to_integral_value() else float(v)


_CUSTOMER_FIELDS = {"name", "email", "phone", "timezone", "locale", "owner", "lifecycle_stage"}


def customer_rows(report: MigrationReport) -> list[dict[str, Any]]:
    """The migrated rows as customer rows: `customer_id` (or `external_id`) is the key, the
    customer fields are copied, everything else goes to `attributes`; migrated members are
    `member`s unless the mapping says otherwise."""
    out = []
    for row in report.rows:
        key = row.get("customer_id") or row.get("external_id")
        if key in (None, ""):
            raise Invalid(
                "the mapping needs a customer_id or external_id target to import the rows"
            )
        customer: dict[str, Any] = {"customer_id": str(key), "lifecycle_stage": "member"}
        attributes: dict[str, Any] = {}
        for k, v in row.items():
            is_key = k == "customer_id" or (k == "external_id" and not row.get("customer_id"))
            if is_key or v is None or v == "":
                continue
            if isinstance(v, Decimal):
                v = _number(v)
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


def import_customers(rt: Runtime, rows: list[dict[str, Any]], source: str) -> IngestReport:
    """Validate customer rows as the customer import does and upsert them through its chunk
    loop (one transaction per chunk); bad rows are counted and the first few reported by
    number."""
    started = time.perf_counter()
    report = IngestReport(kind="customers", source=source)
    context = {"phone_region": rt.settings.default_phone_region}
    with ChunkLoop(rt.engine, report, chunk_size=rt.settings.import_chunk_size) as loop:
        for number, raw in enumerate(rows, start=1):
            report.received += 1
            try:
                item = Customer.model_validate(raw, context=context)
            except ValidationError as exc:
                report.rejected += 1
                report.fault(RowFault(at=number, problem="rejected", reason=describe_errors(exc)))
                continue
            row = item.model_dump()
            row["row_hash"] = item.content_hash()
            loop.add(row, number)
        loop.finish()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


async def record_migration_check(
    rt: Runtime, name: str, inp: MigrationCheckInput
) -> MigrationCheckResult:
    """Record a check's figures in the project (its migration gate reads the latest)."""
    client = await rt.temporal()
    handle = _handle(client, name)
    result: MigrationCheckResult = await _answer(
        rt, client, name, handle.execute_update(ProjectWorkflow.record_migration_check, inp)
    )
    return result


async def migration_check(
    rt: Runtime,
    name: str,
    rows: list[dict[str, str]],
    mapping: MappingFile,
    source: str,
    *,
    import_rows: bool = False,
    now: datetime | None = None,
    sha256: str | None = None,
) -> MigrationOutcome:
    """Check legacy rows against the mapping and the template's migration policy (its
    thresholds, and the file it names), record the result in the project and, when asked
    and the check passes, import the rows as customers, reconcile them against the store and
    record that too (the gate reads the latest record)."""
    snap = await snapshot(rt, name)
    policy = snap.state.template.migration
    if policy is None:
        raise Refused(f"project {name!r}: its template has no migration section")
    report = check_migration(rows, mapping, source, now or datetime.now(UTC))
    report.source_sha256 = sha256
    recorded = await record_migration_check(rt, name, MigrationCheckInput(summary=report.summary()))
    passed, reasons = report.passes(policy)
    imported = reconciled = None
    if import_rows and passed:
        customers = customer_rows(report)
        imported = await asyncio.to_thread(import_customers, rt, customers, report.source)
        reconciled = await asyncio.to_thread(reconcile, rt, report, customers)
        summary = report.summary().model_copy(
            update={"target_rows": reconciled.rows_found, "amount_target": reconciled.amount_found}
        )
        recorded = await record_migration_check(rt, name, MigrationCheckInput(summary=summary))
        passed, reasons = recorded.passed, recorded.failures
        if reconciled.numbers_as_text:
            passed = False
            reasons = [
                *reasons,
                f"{reconciled.numbers_as_text} {reconciled.amount_field} values are stored as "
                "text, not numbers",
            ]
    figures = terminal_summary(report, policy.thresholds)
    figures["passed"], figures["reasons"] = passed, reasons
    if reconciled is not None:
        figures["rows_in_store"] = reconciled.rows_found
        figures["amount_in_store"] = (
            str(reconciled.amount_found) if reconciled.amount_found is not None else None
        )
    return MigrationOutcome(
        report=report,
        thresholds=policy.thresholds,
        passed=passed,
        reasons=reasons,
        summary=figures,
        recorded=recorded,
        imported=imported,
        reconciliation=reconciled,
    )


def reconcile(
    rt: Runtime, report: MigrationReport, customers: list[dict[str, Any]]
) -> Reconciliation:
    """Read the imported customers back: how many of the migrated rows the store holds, and
    the sum of the amount field there against the mapped sum."""
    ids = [str(c["customer_id"]) for c in customers]
    field = report.amount_field
    found: dict[str, Any] = {}
    with rt.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for cid, attributes in conn.execute(
                select(CustomerRow.customer_id, CustomerRow.attributes).where(
                    CustomerRow.customer_id.in_(chunk)
                )
            ):
                found[cid] = attributes or {}
    amount = None
    as_text = 0
    if field is not None:
        amount = Decimal(0)
        for attributes in found.values():
            value = attributes.get(field)
            if isinstance(value, str):
                as_text += 1
            if value not in (None, ""):
                amount += Decimal(str(value))
    missing = [i for i in ids if i not in found]
    matches = not missing and len(found) == report.rows_out and as_text == 0
    if field is not None and report.amount_mapped is not None and amount is not None:
        matches = matches and abs(amount - report.amount_mapped) <= Decimal("0.005")
    return Reconciliation(
        rows_migrated=report.rows_out,
        rows_found=len(found),
        missing=missing[:20],
        amount_field=field,
        amount_migrated=report.amount_mapped,
        amount_found=amount,
        numbers_as_text=as_text,
        matches=matches,
    )
