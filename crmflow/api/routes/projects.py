"""`/api/v1/projects`: rollout projects, over `crmflow.services.projects`.

Reads need `projects.read`, changes `projects.write`. Whoever acts in a change is the key's
bound team member (`person`), or the key's name when it has none — never a name sent in the
body, so a key cannot act as someone else. A sign-off needs a bound person: the gate is signed
in that person's name and role.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from crmflow.api.security import RuntimeDep, permit
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
from crmflow.services import projects as service
from crmflow.services.errors import Refused
from crmflow.services.keys import Principal
from projects.state import RiskChange, RiskInput

router = APIRouter(prefix="/projects", tags=["projects"])

Name = Annotated[
    str, Path(min_length=1, max_length=200, description="The project's name (or its id)")
]
Ident = Annotated[str, Path(min_length=1, max_length=100, description="An id from the template")]
RiskId = Annotated[str, Path(min_length=1, max_length=20, description="A risk's id, e.g. R1")]
Short = Annotated[str, Field(min_length=1, max_length=100)]
Text = Annotated[str | None, Field(None, max_length=2000)]
Day = Annotated[
    date | None,
    Field(
        None,
        ge=date(2000, 1, 1),
        le=date(2100, 12, 31),
        description="The day it happened (default: today on the team's clock)",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Override = Annotated[
    str | None,
    Field(
        None,
        max_length=2000,
        description="The project manager's reason for setting a control aside (checking an "
        "item of another role, starting a stage before its dependencies finished)",
    ),
]


class CheckBody(_Body):
    item: Short = Field(description="The checklist item's id")
    note: Text = None
    override: Override = None


class DoneBody(_Body):
    milestone: Short = Field(description="The milestone's id")
    note: Text = None


class SignOffBody(_Body):
    gate: Short = Field(description="The gate's id")
    comment: Text = None
    role: str | None = Field(
        None, max_length=100, description="The role signed for, when the person holds several"
    )


class StageBody(_Body):
    on: Day = None
    override: Override = None


class ReasonBody(_Body):
    reason: Text = None


class CommentBody(_Body):
    comment: Text = None


class RiskBody(RiskInput):
    """A new risk: a severity, or probability and impact to derive it from."""

    owner: str = Field(min_length=1, max_length=200, description="A team member's name or e-mail")
    mitigation: str | None = Field(None, max_length=2000)
    stage: str | None = Field(None, max_length=100)


class RiskPatch(RiskChange):
    """The risk's fields to change; those left out stay."""

    owner: str | None = Field(None, min_length=1, max_length=200)
    mitigation: str | None = Field(None, max_length=2000)
    comment: str | None = Field(None, max_length=2000)


def person(who: Principal) -> str:
    """The key's team member, for what only a person may do (sign a gate)."""
    if who.person is None:
        raise Refused("this key is not bound to a project team member")
    return who.person


Reader = Annotated[Principal, permit("projects.read")]
Writer = Annotated[Principal, permit("projects.write")]


@router.get("", response_model=list[service.ProjectRow])
async def list_projects(who: Reader, rt: RuntimeDep) -> list[service.ProjectRow]:
    """Every project (its newest run), by name; running ones with their health."""
    return await service.list_projects(rt)


@router.post("", response_model=service.CreatedProject, status_code=201)
async def create_project(
    spec: service.ProjectSpec, who: Writer, rt: RuntimeDep
) -> service.CreatedProject:
    """Check the template, team and holidays (the YAML files' content as JSON), compute the
    plan and start the project. 409 when a project by that name exists."""
    return await service.create(rt, spec)


@router.get("/{name}", response_model=service.ProjectStatus)
async def project_status(name: Name, who: Reader, rt: RuntimeDep) -> service.ProjectStatus:
    """Plan against actual per stage and milestone, health with its reasons, due next."""
    return await service.status(rt, name)


@router.get(
    "/{name}/gantt.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}, "description": "The Gantt chart"}},
)
async def project_gantt(name: Name, who: Reader, rt: RuntimeDep) -> Response:
    """The plan, the actual progress and the baseline as an SVG drawing."""
    svg = await service.gantt_svg(rt, name)
    return Response(svg, media_type="image/svg+xml")


@router.post("/{name}/check", response_model=service.Change)
async def check_item(name: Name, body: CheckBody, who: Writer, rt: RuntimeDep) -> service.Change:
    """Check off a checklist item."""
    inp = CheckInput(item=body.item, by=who.by, note=body.note, override=body.override)
    return await service.check(rt, name, inp)


@router.post("/{name}/done", response_model=service.Change)
async def milestone_done(name: Name, body: DoneBody, who: Writer, rt: RuntimeDep) -> service.Change:
    """Mark a milestone done."""
    inp = DoneInput(milestone=body.milestone, by=who.by, note=body.note)
    return await service.done(rt, name, inp)


@router.post("/{name}/signoff", response_model=service.Change)
async def sign_gate(name: Name, body: SignOffBody, who: Writer, rt: RuntimeDep) -> service.Change:
    """Sign a gate as the key's team member (refused unless they hold a role it still
    needs, or for a key bound to nobody)."""
    inp = SignOffInput(gate=body.gate, by=person(who), comment=body.comment, role=body.role)
    return await service.signoff(rt, name, inp)


@router.post("/{name}/stages/{stage}/start", response_model=service.Change)
async def start_stage(
    name: Name, stage: Ident, who: Writer, rt: RuntimeDep, body: StageBody | None = None
) -> service.Change:
    """Record that a stage started (stages with checklist items start by themselves)."""
    inp = StageInput(
        stage=stage,
        by=who.by,
        on=body.on if body else None,
        override=body.override if body else None,
    )
    return await service.start_stage(rt, name, inp)


@router.post("/{name}/stages/{stage}/finish", response_model=service.Change)
async def finish_stage(
    name: Name, stage: Ident, who: Writer, rt: RuntimeDep, body: StageBody | None = None
) -> service.Change:
    """Record that a stage finished (stages with checklist items finish by themselves)."""
    inp = StageInput(
        stage=stage,
        by=who.by,
        on=body.on if body else None,
        override=body.override if body else None,
    )
    return await service.finish_stage(rt, name, inp)


@router.post("/{name}/risks", response_model=service.Change)
async def add_risk(name: Name, body: RiskBody, who: Writer, rt: RuntimeDep) -> service.Change:
    """Add a risk to the register."""
    risk = RiskInput.model_validate(body.model_dump())
    return await service.add_risk(rt, name, RiskAddInput(risk=risk, by=who.by))


@router.patch("/{name}/risks/{risk_id}", response_model=service.Change)
async def update_risk(
    name: Name, risk_id: RiskId, body: RiskPatch, who: Writer, rt: RuntimeDep
) -> service.Change:
    """Change a risk's fields."""
    change = RiskChange.model_validate(body.model_dump(exclude_unset=True))
    inp = RiskUpdateInput(risk_id=risk_id, change=change, by=who.by)
    return await service.update_risk(rt, name, inp)


@router.post("/{name}/risks/{risk_id}/close", response_model=service.Change)
async def close_risk(
    name: Name, risk_id: RiskId, who: Writer, rt: RuntimeDep, body: CommentBody | None = None
) -> service.Change:
    """Close a risk."""
    inp = RiskCloseInput(risk_id=risk_id, by=who.by, comment=body.comment if body else None)
    return await service.close_risk(rt, name, inp)


@router.post("/{name}/rebaseline", response_model=service.Change)
async def rebaseline(
    name: Name, who: Writer, rt: RuntimeDep, body: ReasonBody | None = None
) -> service.Change:
    """Replan from actual dates and keep it as the next baseline (earlier ones stay)."""
    inp = RebaselineInput(by=who.by, reason=body.reason if body else None)
    return await service.rebaseline(rt, name, inp)


@router.post("/{name}/close", response_model=service.Change)
async def close_project(
    name: Name, who: Writer, rt: RuntimeDep, body: ReasonBody | None = None
) -> service.Change:
    """Close the project early (a project manager or the sponsor); its workflow ends."""
    inp = CloseInput(by=who.by, reason=body.reason if body else None)
    return await service.close(rt, name, inp)
