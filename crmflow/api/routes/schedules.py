"""`/api/v1/schedules`: the scheduled automations of the schedules file, as Temporal
Schedules — list, runs, preview, trigger, backfill, pause, resume (`crmflow schedules …`).

Applying a file stays with the CLI (`crmflow schedules apply`): the file on the server is
the source of truth, and it is changed where it is deployed, not over HTTP.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from crmflow.api.security import RuntimeDep, permit
from crmflow.services import schedules as service
from crmflow.services.keys import Principal

router = APIRouter(prefix="/schedules", tags=["schedules"])

Name = Annotated[
    str, PathParam(min_length=1, max_length=100, description="A schedule's name in the file")
]
WAIT_SECONDS = 60


class Note(BaseModel):
    note: str | None = Field(
        None, max_length=500, description="Why (shown in the list and the Temporal UI)"
    )


@router.get("", response_model=list[service.ScheduleStatus])
async def list_schedules(
    who: Annotated[Principal, permit("schedules.read")], rt: RuntimeDep
) -> list[service.ScheduleStatus]:
    """Every schedule of the file: its state on the server, next runs and its last run."""
    return await service.list_schedules(rt, rt.settings.schedules_file)


@router.get("/{name}/runs", response_model=service.ScheduleRuns)
async def schedule_runs(
    name: Name,
    who: Annotated[Principal, permit("schedules.read")],
    rt: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=service.MAX_RUNS_LISTED)] = 20,
) -> service.ScheduleRuns:
    """A schedule's recent runs, newest first: run date, attempt, outcome and counts."""
    return await service.runs(rt, rt.settings.schedules_file, name, limit)


@router.get("/{name}/preview", response_model=service.Preview)
async def preview(
    name: Name,
    who: Annotated[Principal, permit("schedules.read")],
    rt: RuntimeDep,
    count: Annotated[int, Query(ge=1, le=100, alias="next")] = 5,
) -> service.Preview:
    """The next times a schedule runs: the Temporal server's own times when it has the
    schedule (`source: server`), else croniter's from the file with a note saying why."""
    return await service.preview_runs(rt, rt.settings.schedules_file, name, count)


@router.post("/{name}/trigger", response_model=service.TriggerResult)
async def trigger(
    name: Name,
    who: Annotated[Principal, permit("schedules.write")],
    rt: RuntimeDep,
    wait_seconds: Annotated[
        int,
        Query(
            ge=0,
            le=WAIT_SECONDS,
            description="Wait this long for the run to finish and give its summary (0: no)",
        ),
    ] = 0,
) -> service.TriggerResult:
    """Run a schedule now, as of now; its overlap policy applies (`workflow_id` is null when
    the run was skipped)."""
    return await service.trigger(
        rt, rt.settings.schedules_file, name, wait=wait_seconds > 0, timeout=wait_seconds or None
    )


@router.post("/{name}/backfill", response_model=service.BackfillResult)
async def backfill(
    name: Name,
    when: service.BackfillRange,
    who: Annotated[Principal, permit("schedules.write")],
    rt: RuntimeDep,
) -> service.BackfillResult:
    """Run every time the schedule would have fired between two days (at most 1,000 runs),
    one after the other, each as of its own time."""
    return await service.backfill(rt, rt.settings.schedules_file, name, when)


@router.post("/{name}/pause", response_model=service.PauseResult)
async def pause(
    name: Name,
    who: Annotated[Principal, permit("schedules.write")],
    rt: RuntimeDep,
    body: Annotated[Note | None, Body()] = None,
) -> service.PauseResult:
    """Stop a schedule's runs until resumed (a running run finishes). The next apply of the
    file sets it as the file says."""
    note = (body.note if body else None) or f"paused by {who.name} through the API"
    return await service.pause(rt, rt.settings.schedules_file, name, note)


@router.post("/{name}/resume", response_model=service.PauseResult)
async def resume(
    name: Name,
    who: Annotated[Principal, permit("schedules.write")],
    rt: RuntimeDep,
    body: Annotated[Note | None, Body()] = None,
) -> service.PauseResult:
    """Let a paused schedule run again."""
    note = (body.note if body else None) or f"resumed by {who.name} through the API"
    return await service.resume(rt, rt.settings.schedules_file, name, note)
