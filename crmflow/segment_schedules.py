"""Temporal Schedules for journeys entered by a segment on a cron expression: one schedule
per journey (`journey-segment:<name>`), made to match the deployed journey and its status."""

from __future__ import annotations

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from crmflow.contracts.journeys import segment_schedule_id
from journeys.models import Journey, SegmentEntry


def _schedule(journey: Journey, task_queue: str, paused: bool) -> Schedule:
    entry = journey.entry
    assert isinstance(entry, SegmentEntry) and entry.schedule is not None
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "SegmentEntryWorkflow",
            journey.journey,
            id=f"segment-entry:{journey.journey}",
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[entry.schedule], time_zone_name=entry.timezone),
        state=ScheduleState(paused=paused, note=f"journey {journey.journey} segment entry"),
    )


async def sync_schedule(client: Client, task_queue: str, journey: Journey, status: str) -> str:
    """Create, update, pause or delete the journey's schedule; returns what was done."""
    sid = segment_schedule_id(journey.journey)
    entry = journey.entry
    wanted = isinstance(entry, SegmentEntry) and entry.schedule is not None
    handle = client.get_schedule_handle(sid)
    if not wanted or status == "archived":
        try:
            await handle.delete()
            return "schedule deleted"
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "no schedule"
            raise
    schedule = _schedule(journey, task_queue, paused=status != "active")
    try:
        await client.create_schedule(sid, schedule)
        return f"schedule {sid} created"
    except ScheduleAlreadyRunningError:

        def replace(_input: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await handle.update(replace)
        return f"schedule {sid} updated"
