"""The console's automations pages: `/console/automations` lists the schedules of the
schedules file with their next and last run and the recorded runs of all of them (counts and
errors); `/console/automations/{name}` is one schedule with its state on the server and its
runs. A Trigger button (only for roles that may `schedules.write`) runs a schedule now, as
`crmflow schedules trigger` and the API do.

The runs come from the store, so both pages still show them, and say so, when Temporal does
not answer (then the next runs and the server's state are missing, not the page).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from crmflow.api.security import get_runtime
from crmflow.console.web import Viewer, done, form, page, refused, render, url
from crmflow.services import overview as views
from crmflow.services import schedules as service
from crmflow.services.errors import NotFound, ServiceError

router = APIRouter()

Name = Annotated[str, PathParam(min_length=1, max_length=100)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


def in_zone(at: datetime | None, zone: str) -> str:
    """A time as the schedule's zone reads it (its cron is written in that zone)."""
    if at is None:
        return "-"
    try:
        return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
    except (KeyError, ValueError):
        return at.strftime("%Y-%m-%d %H:%M UTC")


def duration(start: datetime, end: datetime | None) -> str:
    if end is None:
        return "-"
    seconds = int((end - start).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


@router.get("/automations", response_class=HTMLResponse)
async def automations(
    request: Request, viewer: Annotated[Viewer, page("schedules.read")], offset: Offset = 0
) -> HTMLResponse:
    rt = get_runtime(request)
    board = await views.schedules_board(rt, rt.settings.schedules_file, offset=offset)
    return render(
        request,
        viewer,
        "automations/list.html",
        title="Automations",
        board=board,
        file=rt.settings.schedules_file,
        in_zone=in_zone,
        duration=duration,
    )


@router.get("/automations/{name}", response_class=HTMLResponse)
async def schedule(
    request: Request,
    name: Name,
    viewer: Annotated[Viewer, page("schedules.read")],
    offset: Offset = 0,
) -> Response:
    rt = get_runtime(request)
    try:
        detail = await views.schedule_detail(rt, rt.settings.schedules_file, name, offset=offset)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ServiceError as exc:  # the file does not load: the list page says why
        return refused(request, url("automations"), str(exc))
    return render(
        request,
        viewer,
        "automations/detail.html",
        title=name,
        detail=detail,
        s=detail.schedule,
        in_zone=in_zone,
        duration=duration,
    )


@router.post("/automations/{name}/trigger")
async def trigger(
    request: Request,
    name: Name,
    viewer: Annotated[Viewer, form("schedules.write")],
    back: Annotated[str, Form(max_length=20)] = "",
) -> RedirectResponse:
    """Run the schedule now, as of now (its overlap policy applies)."""
    rt = get_runtime(request)
    to = url(f"automations/{name}") if back == "detail" else url("automations")
    try:
        started = await service.trigger(rt, rt.settings.schedules_file, name)
    except ServiceError as exc:
        return refused(request, to, f"{name} was not triggered: {exc}")
    if started.workflow_id is None:
        return refused(
            request,
            to,
            f"{name} was not started: a run is still going and its overlap policy skips another",
        )
    return done(
        request,
        to,
        f"{name} started now (workflow {started.workflow_id}); its run shows here once a "
        "worker has taken it",
    )
