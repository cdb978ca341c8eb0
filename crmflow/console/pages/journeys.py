"""Journeys in the console: the list, one journey drawn as a graph with per-node counts, its
variants against the holdout and its versions, pause/resume, and the enrollments at a node.

Reads go through `crmflow.services.journey_views` (over `crmflow.services.journeys`);
pause and resume are the same service calls as `crmflow journeys pause` and the API's.
"""

from __future__ import annotations

from typing import Annotated, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import get_runtime
from crmflow.console.journey_graph import journey_svg
from crmflow.console.web import Viewer, done, error_page, form, page, refused, render, url
from crmflow.services import journey_views as views
from crmflow.services import journeys as service
from crmflow.services.errors import NotFound, ServiceError
from rules.source import NAME_PATTERN

router = APIRouter()

Name = Annotated[str, PathParam(pattern=NAME_PATTERN, description="The journey's name")]
NodeId = Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]
Version = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Read = Annotated[Viewer, page("journeys.read")]
Write = Annotated[Viewer, form("journeys.write")]
STATUS_TONES = {
    "active": "blue",
    "completed": "green",
    "converted": "green",
    "exited": "grey",
    "held_out": "grey",
    "failed": "red",
    "paused": "amber",
    "archived": "grey",
}


def enrollments_url(name: str, node: str | None = None, status: str | None = None) -> str:
    query = urlencode({k: v for k, v in (("node", node), ("status", status)) if v})
    return url(f"journeys/{name}/enrollments") + (f"?{query}" if query else "")


@router.get("/journeys", response_class=HTMLResponse)
async def journey_list(request: Request, viewer: Read) -> HTMLResponse:
    items = await run_in_threadpool(views.journey_list, get_runtime(request))
    return render(
        request, viewer, "journeys/list.html", title="Journeys", journeys=items, tones=STATUS_TONES
    )


@router.get("/journeys/{name}", response_class=HTMLResponse)
async def journey(
    request: Request, name: Name, viewer: Read, version: Version = None
) -> HTMLResponse:
    try:
        data = await run_in_threadpool(views.journey_page, get_runtime(request), name, version)
    except NotFound as exc:
        return error_page(request, 404, "Not found", str(exc))
    vs = data.version_stats
    counts = {n.node: n for n in vs.nodes} if vs is not None else {}
    graph = journey_svg(
        data.graph,
        counts,
        href=lambda node, status: enrollments_url(name, node, status),
        title=f"Journey {name}, version {data.version}, as a graph with counts per node",
    )
    not_sent = [
        (n.node, kind, why, count)
        for n in (vs.nodes if vs is not None else [])
        for kind, reasons in (("suppressed", n.suppressed_reasons), ("failed", n.failed_reasons))
        for why, count in reasons.items()
    ]
    per_version = {v.version: v for v in data.stats.versions}
    return render(
        request,
        viewer,
        "journeys/detail.html",
        title=f"Journey {name}",
        j=data.detail,
        data=data,
        vs=vs,
        graph=Markup(graph),  # built by journey_svg: every text in it is escaped
        not_sent=not_sent,
        per_version=per_version,
        small_sample=views.SMALL_SAMPLE,
        tones=STATUS_TONES,
        enrollments_url=enrollments_url,
    )


@router.get("/journeys/{name}/enrollments", response_class=HTMLResponse)
async def enrollments(
    request: Request,
    name: Name,
    viewer: Read,
    node: NodeId = None,
    status: Annotated[service.EnrollmentStatus | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    query = views.EnrollmentsPageQuery(node=node, status=status, page=page)
    try:
        data = await run_in_threadpool(views.enrollments_page, get_runtime(request), name, query)
    except NotFound as exc:
        return error_page(request, 404, "Not found", str(exc))

    def page_url(n: int) -> str:
        params = {"node": node, "status": status, "page": n if n > 1 else None}
        query = urlencode({k: v for k, v in params.items() if v})
        return url(f"journeys/{name}/enrollments") + (f"?{query}" if query else "")

    where = f" at {node}" if node else ""
    return render(
        request,
        viewer,
        "journeys/enrollments.html",
        title=f"Enrollments{where} · journey {name}",
        name=name,
        data=data,
        statuses=list(get_args(service.EnrollmentStatus)),
        page_url=page_url,
        all_steps=enrollments_url(name, None, status),
        tones=STATUS_TONES,
    )


async def _change(request: Request, name: str, status: str) -> RedirectResponse:
    """Pause or resume through the service (async: a scheduled journey's Temporal Schedule
    follows its status); its refusal, or a schedule Temporal could not take, is shown."""
    back = url(f"journeys/{name}")
    rt = get_runtime(request)
    pausing = status == "paused"
    try:
        change = await (service.pause(rt, name) if pausing else service.resume(rt, name))
    except ServiceError as exc:  # NotFound, Unavailable, ...: the service says why
        return refused(request, back, str(exc))
    verb = "paused" if pausing else "resumed"
    if change.schedule_problem:  # the status changed; its Temporal Schedule did not follow
        return refused(request, back, f"Journey {name} {verb}, but {change.schedule_problem}")
    said = "no new enrollments; running ones go on" if pausing else "new enrollments come in"
    extra = f" ({change.schedule})" if change.schedule else ""
    return done(request, back, f"Journey {name} {verb}: {said}{extra}.")


@router.post("/journeys/{name}/pause")
async def pause(request: Request, name: Name, viewer: Write) -> RedirectResponse:
    return await _change(request, name, "paused")


@router.post("/journeys/{name}/resume")
async def resume(request: Request, name: Name, viewer: Write) -> RedirectResponse:
    return await _change(request, name, "active")
