"""Read models of rollout projects for the console: the portfolio (one row per project:
health, forecast finish against the baseline, what is due next, gates waiting for sign-off
and for which roles) and one project's page (status, Gantt, checklists by stage, milestones,
risks, and which gates the viewing person may sign).

Each project is read with one query of its workflow (`project`: the whole state); status,
health and the Gantt are then computed here by the same pure functions the workflow's
`status` query and `crmflow project gantt` use, so the figures are the CLI's and the API's.
The portfolio lists projects through visibility (cheap) and queries only the projects on the
page asked for, a few at a time, each within `LIST_SECONDS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, Field
from temporalio.client import WorkflowExecution, WorkflowQueryFailedError
from temporalio.service import RPCError

from crmflow.contracts.projects import WORKFLOW_TYPE, ProjectSnapshot, workflow_id
from crmflow.services import projects as service
from crmflow.services.errors import Unavailable
from crmflow.services.runtime import Runtime
from journeys.timing import zone
from projects.gantt import project_svg
from projects.health import DueItem, GateStatus, StageStatus, late_days, status_report
from projects.models import Person
from projects.state import ItemState, Override, ProjectState, Risk, gate_blockers, still_needed
from workflows.project import ProjectWorkflow

PAGE_SIZE = 25


class WaitingGate(BaseModel):
    """A gate that has not passed and is waiting for signatures: nothing else holds it up,
    or someone has signed it already."""

    id: str
    name: str
    stage: str
    due: date
    late_days: int
    needs: dict[str, int] = Field(description="role -> sign-offs still needed")
    signed_by: list[str]


class PortfolioRow(BaseModel):
    workflow_id: str
    project_id: str
    name: str
    template: str | None
    workflow_status: str | None
    started: datetime
    answered: bool = Field(False, description="the project's workflow answered its query")
    problem: str | None = None
    health: str | None = None
    baseline_finish: date | None = None
    forecast_finish: date | None = None
    days_late: int | None = Field(
        None, description="working days the forecast finish is past the baseline (<0: early)"
    )
    next_due: DueItem | None = None
    waiting: list[WaitingGate] = Field(default_factory=list)
    open_risks: int = 0


class Portfolio(BaseModel):
    rows: list[PortfolioRow]
    total: int
    page: int
    pages: int


class ItemView(BaseModel):
    id: str
    title: str
    owner: str
    required: bool
    due: date
    late_days: int
    state: ItemState


class GateView(GateStatus):
    roles: list[str]
    blockers: list[str] = Field(description="what must happen before it can be signed")
    may_sign_as: list[str] = Field(
        default_factory=list, description="roles the viewing person could sign it for"
    )


class StageView(BaseModel):
    status: StageStatus
    items: list[ItemView]


class ProjectPage(BaseModel):
    status: service.ProjectStatus
    days_late: int | None
    gantt_svg: str
    stages: list[StageView]
    gates: list[GateView]
    risks: list[Risk]
    overrides: list[Override] = Field(
        default_factory=list, description="controls the project manager set aside, and why"
    )
    team: list[Person]
    me: Person | None = Field(description="the viewing person, when on the project's team")
    open: bool = Field(description="changes are still accepted (not closed, not complete)")


# --------------------------------------------------------------------------- pure parts


def _days_late(state: ProjectState, baseline: date | None, forecast: date) -> int | None:
    if baseline is None:
        return None
    cal = state.work_calendar()
    if forecast >= baseline:
        return late_days(cal, baseline, forecast)
    return -late_days(cal, forecast, baseline)


def waiting_gates(state: ProjectState, now: datetime) -> list[WaitingGate]:
    """Gates not passed that only wait for people (no blockers) or have a sign-off already."""
    cal = state.work_calendar()
    today = state.today(now)
    out = []
    for g in state.plan.gates:
        gs = state.gates[g.id]
        if gs.passed_at is not None or (gate_blockers(state, g.id) and not gs.sign_offs):
            continue
        out.append(
            WaitingGate(
                id=g.id,
                name=g.name,
                stage=g.stage,
                due=g.due,
                late_days=late_days(cal, g.due, today),
                needs=still_needed(state, g.id),
                signed_by=[f"{s.person} ({s.role})" for s in gs.sign_offs],
            )
        )
    return sorted(out, key=lambda w: (w.due, w.id))


def portfolio_row(row: PortfolioRow, snap: ProjectSnapshot, now: datetime) -> PortfolioRow:
    """`row` with the figures of the project's state at `now`."""
    state = snap.state
    report = status_report(state, now, k=1)
    return row.model_copy(
        update={
            "answered": True,
            "health": report.health.status,
            "baseline_finish": report.baseline_finish,
            "forecast_finish": report.forecast_finish,
            "days_late": _days_late(state, report.baseline_finish, report.forecast_finish),
            "next_due": report.due_next[0] if report.due_next else None,
            "waiting": waiting_gates(state, now),
            "open_risks": report.open_risks,
        }
    )


def may_sign_as(state: ProjectState, gate_id: str, me: Person | None) -> list[str]:
    """The roles `me` could sign the gate for: ones it still needs that they hold, unless
    they signed it already (the workflow's own rules; blockers are shown apart)."""
    gs = state.gates[gate_id]
    if me is None or gs.passed_at is not None:
        return []
    if any(s.email == me.email for s in gs.sign_offs):
        return []
    return [r for r in still_needed(state, gate_id) if r in me.roles]


def page_of(
    snap: ProjectSnapshot, workflow_id: str, person: str | None, now: datetime
) -> ProjectPage:
    """One project's page at `now`, as seen by `person` (a team member's name, or None)."""
    state, carry = snap.state, snap.carry
    report = status_report(state, now)
    me = state.team.person(person) if person else None
    tz = zone(state.team.timezone)

    def local(at: datetime | None) -> datetime | None:
        """Times as the team reads them (its "today" is on that clock too)."""
        return at.astimezone(tz) if at is not None else None

    for m in report.milestones:
        m.done_at = local(m.done_at)
    for g in report.gates:
        g.passed_at = local(g.passed_at)
    status = service.ProjectStatus.model_validate(
        {
            **report.model_dump(),
            "workflow_id": workflow_id,
            "closed_at": local(carry.closed_at),
            "closed_by": carry.closed_by,
            "close_reason": carry.close_reason,
            "kpi_review": carry.kpi_review,
        }
    )
    cal = state.work_calendar()
    today = state.today(now)
    stages = [
        StageView(
            status=st,
            items=[
                ItemView(
                    id=i.id,
                    title=i.title,
                    owner=i.owner,
                    required=i.required,
                    due=i.due,
                    late_days=0 if state.items[i.id].checked else late_days(cal, i.due, today),
                    state=state.items[i.id].model_copy(update={"at": local(state.items[i.id].at)}),
                )
                for i in state.plan.items
                if i.stage == st.id
            ],
        )
        for st in report.stages
    ]
    planned = {g.id: g for g in state.plan.gates}
    gates = [
        GateView(
            **g.model_dump(),
            roles=list(planned[g.id].roles),
            blockers=[] if g.passed_at else gate_blockers(state, g.id),
            may_sign_as=may_sign_as(state, g.id, me),
        )
        for g in report.gates
    ]
    # the workflow's own test of "complete": every stage finished and the KPI review held
    complete = all(state.stages[s.id].actual_finish is not None for s in state.plan.stages) and (
        state.template.kpis is None or carry.kpi_review is not None
    )
    return ProjectPage(
        status=status,
        days_late=_days_late(state, report.baseline_finish, report.forecast_finish),
        gantt_svg=project_svg(state, now),
        stages=stages,
        gates=gates,
        risks=sorted(state.risks, key=lambda r: (r.status != "open", r.id)),
        overrides=[o.model_copy(update={"at": local(o.at)}) for o in state.overrides],
        team=list(state.team.people),
        me=me,
        open=carry.closed_at is None and not complete,
    )


# --------------------------------------------------------------------------- services


async def project(
    rt: Runtime, name: str, person: str | None, now: datetime | None = None
) -> ProjectPage:
    """One project as its console page shows it to `person`; the service's typed errors
    (`NotFound`, `Unavailable`, `Refused`) as `crmflow.services.projects` raises them."""
    snap = await service.snapshot(rt, name)
    return page_of(snap, workflow_id(name), person, now or datetime.now(UTC))


async def portfolio(rt: Runtime, page: int = 1, now: datetime | None = None) -> Portfolio:
    """Every project (newest run of each) by name, `PAGE_SIZE` a page; running ones on the
    page with their figures (or why they did not answer)."""
    client = await rt.temporal()
    latest: dict[str, WorkflowExecution] = {}
    try:
        async for wf in client.list_workflows(f'WorkflowType="{WORKFLOW_TYPE}"'):
            latest.setdefault(wf.id, wf)  # newest first: one row per project
    except RPCError as exc:
        raise Unavailable(f"Temporal did not list the projects: {exc.message}") from None
    rows = []
    for wf in latest.values():
        memo: Mapping[str, Any] = await wf.memo()
        rows.append(
            PortfolioRow(
                workflow_id=wf.id,
                project_id=wf.id.removeprefix("project-"),
                name=str(memo.get("name", wf.id.removeprefix("project-"))),
                template=memo.get("template"),
                workflow_status=wf.status.name.lower() if wf.status else None,
                started=wf.start_time,
            )
        )
    rows.sort(key=lambda r: (r.name.casefold(), r.workflow_id))
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    at = now or datetime.now(UTC)
    limit = asyncio.Semaphore(8)

    async def figures(row: PortfolioRow) -> PortfolioRow:
        if row.workflow_status != "running":
            return row
        async with limit:
            try:
                snap: ProjectSnapshot = await asyncio.wait_for(
                    client.get_workflow_handle(row.workflow_id).query(ProjectWorkflow.project),
                    service.LIST_SECONDS,
                )
            except TimeoutError:
                return row.model_copy(update={"problem": "no answer (is a worker running?)"})
            except (WorkflowQueryFailedError, RPCError) as exc:
                return row.model_copy(update={"problem": f"could not answer: {exc}"})
        return portfolio_row(row, snap, at)

    done = await asyncio.gather(*(figures(r) for r in shown))
    return Portfolio(rows=list(done), total=len(rows), page=page, pages=pages)
