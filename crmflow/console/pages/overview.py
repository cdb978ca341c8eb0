"""The console's overview (`/console/`): members by tier, the points liability and what
expires in the next 30 days, customer events per day, journeys with entries and conversions,
projects by health and automation runs that failed or are retrying — each panel a link to
its page, and shown only to a role that may read that area.

Projects live in Temporal, which may be slow or away: their panel is a fragment
(`/console/overview/projects`) the page loads after it is shown (htmx), so the store's
panels never wait for Temporal; without script the panel is a link to the projects page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import get_runtime
from crmflow.console.charts import bar_chart, column_chart
from crmflow.console.web import Viewer, page, render
from crmflow.services import overview as service
from crmflow.services.errors import Unavailable

router = APIRouter()

TIER_COLOURS = ["#1f5fbf", "#2f7d6d", "#8a5a00", "#6b4fa3", "#b42318", "#4a5263"]


@router.get("/", response_class=HTMLResponse)
async def overview(
    request: Request, viewer: Annotated[Viewer, page("health.read")]
) -> HTMLResponse:
    rt = get_runtime(request)
    panels = service.panels_for(viewer.principal.role)
    data = await run_in_threadpool(service.overview, rt, panels)
    tiers_svg = events_svg = None
    if data.members is not None and data.members.tiers:
        tiers_svg = bar_chart(
            [(t.tier, t.members) for t in data.members.tiers],
            title="Members by tier",
            unit="members",
            colours=TIER_COLOURS,
        )
    if data.events is not None:
        events_svg = column_chart(
            [(d.day, d.events) for d in data.events.days],
            title=f"Customer events per day, last {len(data.events.days)} days (UTC)",
            unit="events",
        )
    return render(
        request,
        viewer,
        "overview/index.html",
        title="Overview",
        data=data,
        tiers_svg=tiers_svg,
        events_svg=events_svg,
        show_projects=viewer.may("projects.read"),
    )


@router.get("/overview/projects", response_class=HTMLResponse)
async def projects_panel(
    request: Request, viewer: Annotated[Viewer, page("projects.read")]
) -> HTMLResponse:
    """The projects panel alone (the overview loads it after the page is shown)."""
    panel = error = None
    try:
        panel = await service.project_health(get_runtime(request))
    except Unavailable as exc:
        error = str(exc)
    health_svg = None
    if panel is not None and panel.by_health:
        colours = {"red": "#b42318", "amber": "#8a5a00", "green": "#1b7f3b"}
        health_svg = bar_chart(
            list(panel.by_health.items()),
            title="Projects by health",
            unit="projects",
            colours=[colours.get(k, "#4a5263") for k in panel.by_health],
        )
    return render(
        request,
        viewer,
        "overview/_projects.html",
        panel=panel,
        error=error,
        health_svg=health_svg,
    )
