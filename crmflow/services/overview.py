"""What the console shows at a glance — the overview — and the read model of its
automations page, as a service: settings and an engine in, pydantic models out.

The overview is a set of panels, each computed only when asked for (the face asks for the
panels the caller's role may read): members by tier, the points liability and what expires
soon, customer events per day, journeys with entries and conversions, automation runs that
failed or are retrying (all from the store, a handful of grouped statements), and projects
by health (from Temporal, separately: it may be slow or away, and the store's panels must
not wait for it or fail with it).

The automations page reads the schedules file and Temporal through `crmflow.services.
schedules`; when Temporal does not answer it still shows the file's schedules and the runs
the store recorded, and says why the server's side is missing (`temporal_error`).

Every figure keeps its one definition, `store.kpi`'s: members by tier, the liability (live
lots), customer-made events, a journey's conversions (the goal event within the goal window
after entry, whatever the enrollment's state: the journey stats' definition) over the
enrollments outside the holdout; projects' health is the project workflow's own report.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from crmflow.services import projects as projects_service
from crmflow.services import schedules as schedules_service
from crmflow.services.errors import Invalid, Unavailable
from crmflow.services.journeys import list_journeys
from crmflow.services.permissions import Role, allowed
from crmflow.services.runtime import Runtime
from crmflow.services.schedules import LastRun, RunRecord, ScheduleInfo, ServerState
from store import overview as store
from store.automation_runs import last_runs
from store.db import utcnow
from store.kpi import JourneyFigures, journey_conversions, tier_distribution

EXPIRING_DAYS = 30
# each store panel and the permission that shows it (projects: "projects.read", a panel of
# its own read from Temporal by `project_health`)
PANELS: dict[str, str] = {
    "members": "customers.read",
    "points": "points.read",
    "events": "customers.read",
    "journeys": "journeys.read",
    "automations": "schedules.read",
}
EVENT_DAYS = 30
TROUBLE_DAYS = 30
TROUBLE_LISTED = 10
RUNS_PAGE = 50


# --------------------------------------------------------------------------- models


class TierCount(BaseModel):
    tier: str
    members: int


class MembersPanel(BaseModel):
    tiers: list[TierCount] = Field(description="customers per tier, largest first")
    with_tier: int


class PointsPanel(BaseModel):
    liability: float = Field(description="points live lots still hold (owed to members)")
    expiring: float = Field(description="of those, points whose lot expires within the window")
    expiring_members: int = Field(description="members holding points that expire soon")
    within_days: int


class DayCount(BaseModel):
    day: date
    events: int


class EventsPanel(BaseModel):
    days: list[DayCount] = Field(description="every UTC day of the window, oldest first")
    total: int


class JourneyLine(BaseModel):
    journey: str
    status: str
    version: str
    entries: int = Field(description="enrollments, the holdout's included")
    held_out: int
    active: int = Field(description="enrollments still in the journey")
    converted: int = Field(
        description="enrollments outside the holdout whose customer reached the goal in time"
    )
    conversion_rate: float | None = Field(
        None, description="converted / enrollments outside the holdout (None: none yet)"
    )
    held_out_converted: int = Field(0, description="holdout enrollments that reached the goal")


class JourneysPanel(BaseModel):
    journeys: list[JourneyLine]


class TroubledRun(BaseModel):
    schedule: str
    automation: str
    run_date: str
    attempt: int
    status: str = Field(description="failed, or running (a retry)")
    started_at: datetime
    step: str | None
    error: str | None


class AutomationsPanel(BaseModel):
    failed: int
    retrying: int
    since: datetime
    runs: list[TroubledRun] = Field(description="the newest of them")


class Overview(BaseModel):
    """The overview's store panels; a panel not asked for is None."""

    as_of: datetime
    members: MembersPanel | None = None
    points: PointsPanel | None = None
    events: EventsPanel | None = None
    journeys: JourneysPanel | None = None
    automations: AutomationsPanel | None = None


class ProjectsPanel(BaseModel):
    total: int
    by_health: dict[str, int] = Field(
        description="running projects by health (green, amber, red, or no answer); "
        "projects that are over as `closed`"
    )
    attention: list[projects_service.ProjectRow] = Field(
        description="running projects whose health is red or amber, red first"
    )


# --------------------------------------------------------------------------- the overview


def _journey_line(item: Any, figures: JourneyFigures | None) -> JourneyLine:
    counts: dict[str, int] = item.enrollments
    f = figures or JourneyFigures(item.journey)
    return JourneyLine(
        journey=item.journey,
        status=item.status,
        version=item.version,
        entries=f.enrolled + f.held_out,
        held_out=f.held_out,
        active=counts.get("active", 0),
        converted=f.converted,
        conversion_rate=f.conversion_rate,
        held_out_converted=f.held_out_converted,
    )


def panels_for(role: Role) -> list[str]:
    """The store panels `role` may see."""
    return [name for name, action in PANELS.items() if allowed(role, action)]


def overview(rt: Runtime, panels: Collection[str], now: datetime | None = None) -> Overview:
    """The store's panels of the overview that are in `panels` (see `PANELS`)."""
    at = now or utcnow()
    out = Overview(as_of=at)
    wanted = set(panels)
    with rt.engine.connect() as conn:
        if "members" in wanted:
            tiers = tier_distribution(conn)
            out.members = MembersPanel(
                tiers=[TierCount(tier=t, members=n) for t, n in tiers.items()],
                with_tier=sum(tiers.values()),
            )
        if "points" in wanted:
            liability, expiring, holders = store.points_outlook(conn, at, EXPIRING_DAYS)
            out.points = PointsPanel(
                liability=liability,
                expiring=expiring,
                expiring_members=holders,
                within_days=EXPIRING_DAYS,
            )
        if "events" in wanted:
            last = at.date()
            first = last - timedelta(days=EVENT_DAYS - 1)
            counted = store.events_per_day(conn, first, last)
            days = [first + timedelta(days=i) for i in range(EVENT_DAYS)]
            out.events = EventsPanel(
                days=[DayCount(day=d, events=counted.get(d, 0)) for d in days],
                total=sum(counted.values()),
            )
        if "automations" in wanted:
            since = at - timedelta(days=TROUBLE_DAYS)
            failed, retrying, rows = store.troubled_runs(conn, since, TROUBLE_LISTED)
            out.automations = AutomationsPanel(
                failed=failed,
                retrying=retrying,
                since=since,
                runs=[
                    TroubledRun(
                        schedule=r.schedule,
                        automation=r.automation,
                        run_date=r.run_date,
                        attempt=r.attempt,
                        status=r.status,
                        started_at=r.started_at,
                        step=r.step,
                        error=r.error,
                    )
                    for r in rows
                ],
            )
    if "journeys" in wanted:
        with rt.engine.connect() as conn:
            figures = journey_conversions(conn)
        out.journeys = JourneysPanel(
            journeys=[_journey_line(j, figures.get(j.journey)) for j in list_journeys(rt)]
        )
    return out


_HEALTH_ORDER = {"red": 0, "amber": 1, "green": 2}


async def project_health(rt: Runtime) -> ProjectsPanel:
    """Projects by health, as the project workflows report it; `Unavailable` when Temporal
    does not answer."""
    rows = await projects_service.list_projects(rt)
    by_health: Counter[str] = Counter()
    for p in rows:
        if p.workflow_status != "running":
            by_health["closed"] += 1
        else:
            by_health[p.health if p.health in _HEALTH_ORDER else "no answer"] += 1
    attention = sorted(
        (p for p in rows if p.workflow_status == "running" and p.health in ("red", "amber")),
        key=lambda p: (_HEALTH_ORDER[p.health or ""], p.name),
    )
    order = ["red", "amber", "green", "no answer", "closed"]
    return ProjectsPanel(
        total=len(rows),
        by_health={k: by_health[k] for k in order if by_health[k]},
        attention=attention,
    )


# --------------------------------------------------------------------------- automations


class ScheduleLine(ScheduleInfo):
    """A schedule of the file, what the server says of it (None: Temporal did not answer)
    and its last recorded run."""

    server: ServerState | None = None
    last_run: LastRun | None = None


class ListedRun(RunRecord):
    schedule: str
    automation: str


class RunsPage(BaseModel):
    total: int
    offset: int
    limit: int
    runs: list[ListedRun] = Field(description="newest first")


class SchedulesBoard(BaseModel):
    schedules: list[ScheduleLine]
    file_problems: list[str] = Field(
        default_factory=list, description="why the schedules file does not load"
    )
    temporal_error: str | None = Field(None, description="why the server's side is missing")
    runs: RunsPage


class ScheduleDetail(BaseModel):
    schedule: ScheduleLine
    temporal_error: str | None = None
    runs: RunsPage


def _record(r: Any) -> ListedRun:
    return ListedRun(
        schedule=r.schedule,
        automation=r.automation,
        **schedules_service.run_record(r).model_dump(),
    )


def _last(r: Any) -> LastRun | None:
    return schedules_service.last_run(r)


def _last_runs(rt: Runtime) -> dict[str, Any]:
    with rt.engine.connect() as conn:
        return last_runs(conn)


def _runs_page(rt: Runtime, schedule: str | None, offset: int, limit: int) -> RunsPage:
    limit = max(1, min(limit, schedules_service.MAX_RUNS_LISTED))
    offset = max(0, offset)
    with rt.engine.connect() as conn:
        total, rows = store.runs_page(conn, schedule, limit, offset)
    return RunsPage(total=total, offset=offset, limit=limit, runs=[_record(r) for r in rows])


async def schedules_board(
    rt: Runtime, path: Path, *, offset: int = 0, limit: int = RUNS_PAGE
) -> SchedulesBoard:
    """Every schedule of the file with its next and last run, and the recorded runs of all
    schedules (newest first, a page of them). A file that does not load leaves the schedules
    out and says why (`file_problems`): the recorded runs are still worth reading."""
    runs = await asyncio.to_thread(_runs_page, rt, None, offset, limit)
    try:
        infos = schedules_service.validate(path)
    except Invalid as exc:
        problems = [f"{p.field}: {p.reason}" if p.field else p.reason for p in exc.problems]
        return SchedulesBoard(schedules=[], file_problems=problems, runs=runs)
    temporal_error = None
    try:
        listed = await schedules_service.list_schedules(rt, path)
        lines = [ScheduleLine(**s.model_dump()) for s in listed]
    except Unavailable as exc:
        temporal_error = str(exc)
        last = await asyncio.to_thread(_last_runs, rt)
        lines = [ScheduleLine(**i.model_dump(), last_run=_last(last.get(i.name))) for i in infos]
    return SchedulesBoard(schedules=lines, temporal_error=temporal_error, runs=runs)


async def schedule_detail(
    rt: Runtime, path: Path, name: str, *, offset: int = 0, limit: int = RUNS_PAGE
) -> ScheduleDetail:
    """One schedule of the file, its state on the server and its recorded runs (a page);
    `NotFound` for a name the file does not have."""
    found = schedules_service.one(schedules_service.load(path), name)
    line = ScheduleLine(**schedules_service.info(found).model_dump())
    temporal_error = None
    try:
        line.server = (await schedules_service.runs(rt, path, name, limit=1)).server
    except Unavailable as exc:
        temporal_error = str(exc)
    page = await asyncio.to_thread(_runs_page, rt, name, offset, limit)
    if page.runs and offset == 0:
        line.last_run = _last(page.runs[0])
    return ScheduleDetail(schedule=line, temporal_error=temporal_error, runs=page)
