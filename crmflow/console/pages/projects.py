"""The console's rollout projects: the portfolio and one project's page (Gantt, stages with
their checklists, milestones, gates with sign-off, risks), over `crmflow.services.projects`
(changes) and `crmflow.services.project_views` (what the pages show).

Reading needs `projects.read`, changing `projects.write`. Whoever acts is the signed-in
user's team member (`person`) or, without one, the user's name — as for an API key; a
sign-off needs a person, and its Sign off button is shown only to one who holds a role the
gate still needs. The project's own rules (the workflow's Update validators) decide; their
refusal comes back as the page's notice. When Temporal or the workers do not answer, the
page says so (503) instead of failing.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from crmflow.api.security import get_runtime
from crmflow.console.web import Viewer, done, form, page, refused, render, url
from crmflow.contracts.projects import (
    CheckInput,
    DoneInput,
    RiskAddInput,
    RiskCloseInput,
    SignOffInput,
    project_slug,
)
from crmflow.services import project_views as views
from crmflow.services import projects as service
from crmflow.services.errors import NotFound, ServiceError, Unavailable
from crmflow.services.runtime import Runtime
from projects.models import SEVERITIES
from projects.state import RiskInput

router = APIRouter()

Name = Annotated[str, Path(min_length=1, max_length=200, description="The project's id")]
Ident = Annotated[str, Path(min_length=1, max_length=100, description="An id from the template")]
RiskId = Annotated[str, Path(min_length=1, max_length=20, description="A risk's id, e.g. R1")]
Note = Annotated[str, Form(max_length=2000)]
Level = Literal["", "low", "medium", "high"]


def _project_url(name: str) -> str:
    try:
        return url(f"projects/{project_slug(name)}")
    except ValueError:
        return url("projects")


def _unavailable(request: Request, viewer: Viewer, exc: ServiceError, title: str) -> HTMLResponse:
    return render(
        request,
        viewer,
        "projects/unavailable.html",
        status_code=503,
        title=title,
        problem=str(exc),
    )


async def _change(
    request: Request, name: str, call: Awaitable[service.Change], anchor: str = ""
) -> RedirectResponse:
    """Await a change; back to the project's page with the workflow's words for it, or its
    refusal (or why Temporal did not answer) as the notice."""
    back = _project_url(name) + anchor
    try:
        said = await call
    except ServiceError as exc:
        return refused(request, back, str(exc))
    return done(request, back, said.message)


def _rt(request: Request) -> Runtime:
    return get_runtime(request)


# --------------------------------------------------------------------------- pages


@router.get("/projects", response_class=HTMLResponse)
async def portfolio(
    request: Request,
    viewer: Annotated[Viewer, page("projects.read")],
    page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> Response:
    try:
        found = await views.portfolio(_rt(request), page_number)
    except Unavailable as exc:
        return _unavailable(request, viewer, exc, "Projects")
    return render(request, viewer, "projects/list.html", title="Projects", portfolio=found)


@router.get("/projects/{name}", response_class=HTMLResponse)
async def project(
    request: Request, name: Name, viewer: Annotated[Viewer, page("projects.read")]
) -> Response:
    try:
        found = await views.project(_rt(request), name, viewer.principal.person)
    except NotFound as exc:
        return render(
            request, viewer, "error.html", status_code=404, title="Not found", message=str(exc)
        )
    except Unavailable as exc:
        return _unavailable(request, viewer, exc, name)
    except ServiceError as exc:  # the project could not answer (its workflow is over)
        return render(request, viewer, "error.html", status_code=409, title=name, message=str(exc))
    return render(
        request,
        viewer,
        "projects/detail.html",
        title=found.status.name,
        p=found,
        severities=SEVERITIES,
        levels=("low", "medium", "high"),
        # changes are made by a team member: say so instead of offering controls that the
        # project's rules would refuse
        can_change=viewer.may("projects.write") and found.me is not None and found.open,
    )


# --------------------------------------------------------------------------- changes


@router.post("/projects/{name}/items/{item}/check")
async def check_item(
    request: Request,
    name: Name,
    item: Ident,
    viewer: Annotated[Viewer, form("projects.write")],
    note: Note = "",
    override: Note = "",
) -> Response:
    inp = CheckInput(
        item=item,
        by=viewer.principal.by,
        note=note.strip() or None,
        override=override.strip() or None,
    )
    return await _change(request, name, service.check(_rt(request), name, inp), "#stages")


@router.post("/projects/{name}/milestones/{milestone}/done")
async def milestone_done(
    request: Request,
    name: Name,
    milestone: Ident,
    viewer: Annotated[Viewer, form("projects.write")],
    note: Note = "",
) -> Response:
    inp = DoneInput(milestone=milestone, by=viewer.principal.by, note=note.strip() or None)
    return await _change(request, name, service.done(_rt(request), name, inp), "#milestones")


@router.post("/projects/{name}/gates/{gate}/signoff")
async def sign_gate(
    request: Request,
    name: Name,
    gate: Ident,
    viewer: Annotated[Viewer, form("projects.write")],
    role: Annotated[str, Form(max_length=100)] = "",
    comment: Note = "",
) -> Response:
    person = viewer.principal.person
    if person is None:  # a gate is signed in a person's name, never a user's
        return refused(
            request,
            _project_url(name) + "#gates",
            f"user {viewer.principal.name!r} is not bound to a project team member, so it "
            "cannot sign gates",
        )
    inp = SignOffInput(
        gate=gate, by=person, role=role.strip() or None, comment=comment.strip() or None
    )
    return await _change(request, name, service.signoff(_rt(request), name, inp), "#gates")


@router.post("/projects/{name}/risks")
async def add_risk(
    request: Request,
    name: Name,
    viewer: Annotated[Viewer, form("projects.write")],
    title: Annotated[str, Form(min_length=1, max_length=200)],
    owner: Annotated[str, Form(min_length=1, max_length=200)],
    severity: Annotated[str, Form(max_length=20)] = "",
    probability: Annotated[Level, Form()] = "",
    impact: Annotated[Level, Form()] = "",
    mitigation: Note = "",
    stage: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    fields: dict[str, Any] = {
        "title": title.strip(),
        "owner": owner,
        "severity": severity or None,
        "probability": probability or None,
        "impact": impact or None,
        "mitigation": mitigation.strip() or None,
        "stage": stage or None,
    }
    back = _project_url(name) + "#risks"
    if fields["severity"] not in (None, *SEVERITIES):
        return refused(request, back, f"severity must be one of {', '.join(SEVERITIES)}")
    try:
        risk = RiskInput.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return refused(request, back, f"the risk was not added: {problems}")
    inp = RiskAddInput(risk=risk, by=viewer.principal.by)
    return await _change(request, name, service.add_risk(_rt(request), name, inp), "#risks")


@router.post("/projects/{name}/risks/{risk_id}/close")
async def close_risk(
    request: Request,
    name: Name,
    risk_id: RiskId,
    viewer: Annotated[Viewer, form("projects.write")],
    reason: Annotated[str, Form(min_length=1, max_length=2000)],
) -> Response:
    inp = RiskCloseInput(risk_id=risk_id, by=viewer.principal.by, comment=reason.strip())
    return await _change(request, name, service.close_risk(_rt(request), name, inp), "#risks")
