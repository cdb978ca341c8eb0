"""`/api/v1/events`: customer events in, one or a batch, idempotent by `event_id`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from starlette.concurrency import run_in_threadpool

from crmflow.api.problems import responses
from crmflow.api.security import RuntimeDep, permit
from crmflow.domain import Event
from crmflow.ingest_report import IngestReport
from crmflow.services import events as service
from crmflow.services.errors import Conflict
from crmflow.services.keys import Principal

router = APIRouter(prefix="/events", tags=["events"])

EXAMPLE = {
    "event_id": "pos-20261120-0001",
    "customer_id": "C1",
    "type": "purchase",
    "occurred_at": "2026-11-20T10:00:00+08:00",
    "properties": {"amount": 268.0, "store": "SH-01"},
}


@router.post("", response_model=IngestReport, responses=responses(409, 503))
async def post_event(
    event: Annotated[Event, Body(examples=[EXAMPLE])],
    who: Annotated[Principal, permit("events.write")],
    rt: RuntimeDep,
) -> IngestReport:
    """Store one event and run it through the active rules. The same `event_id` again with
    the same content has no second effect; with other content it is refused (409)."""
    report = await run_in_threadpool(service.store_events, rt, [event])
    if report.conflicts:
        c = report.faults[0]
        raise Conflict(
            f"event_id {c.event_id!r} is stored already with another "
            f"{', '.join(c.differs)}: an event id names one event"
        )
    return report


@router.post("/batch", response_model=IngestReport, responses=responses(503))
async def post_events(
    events: Annotated[
        list[Event],
        Body(
            description="Events to store: a batch with an invalid event is refused whole "
            "(422, nothing stored); ids that conflict are counted in `conflicts` and listed in "
            "`faults` with their position in the list",
            examples=[[EXAMPLE]],
        ),
    ],
    who: Annotated[Principal, permit("events.write")],
    rt: RuntimeDep,
) -> IngestReport:
    """Store a batch of events (at most `api_max_batch`, default 1,000), as `crmflow events
    import` does. Idempotent by `event_id`."""
    return await run_in_threadpool(service.store_events, rt, events)
