"""`/api/v1/events`: customer events in, one or a batch, idempotent by `event_id`.

By default the rules run before the answer (200). A client that sends `Prefer:
respond-async` (RFC 7240) gets its events stored — deduplicated, conflicts reported,
unsubscribes applied — and a 202 at once; the event processor that `crmflow api` runs
applies the rules shortly after, in arrival order. `GET /events/backlog` says how many
stored events still wait.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from starlette.concurrency import run_in_threadpool

from crmflow.api.problems import responses
from crmflow.api.security import RuntimeDep, permit
from crmflow.domain import Event
from crmflow.ingest_report import IngestReport
from crmflow.services import events as service
from crmflow.services.errors import Conflict
from crmflow.services.keys import Principal

router = APIRouter(prefix="/events", tags=["events"])

RESPOND_ASYNC = "respond-async"
PreferHeader = Annotated[
    str | None,
    Header(
        description="`respond-async`: store the events and answer 202 at once; the event "
        "processor runs them through the rules shortly after (see `GET /events/backlog`)",
    ),
]
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": IngestReport,
        "description": "Stored (`Prefer: respond-async`); the rules run shortly after: "
        "`unprocessed` counts the events waiting for them",
    }
}


def wants_async(prefer: str | None) -> bool:
    """Whether a `Prefer` header (RFC 7240: comma-separated preferences, each maybe with
    `;` parameters) asks for `respond-async`."""
    if not prefer:
        return False
    return any(
        p.split(";", 1)[0].split("=", 1)[0].strip().lower() == RESPOND_ASYNC
        for p in prefer.split(",")
    )


def _accepted(response: Response, asynchronous: bool) -> None:
    if asynchronous:
        response.status_code = 202
        response.headers["Preference-Applied"] = RESPOND_ASYNC


EXAMPLE = {
    "event_id": "pos-20261120-0001",
    "customer_id": "C1",
    "type": "purchase",
    "occurred_at": "2026-11-20T10:00:00+08:00",
    "properties": {"amount": 268.0, "store": "SH-01"},
}


@router.post("", response_model=IngestReport, responses=ACCEPTED | responses(409, 503))
async def post_event(
    event: Annotated[Event, Body(examples=[EXAMPLE])],
    who: Annotated[Principal, permit("events.write")],
    rt: RuntimeDep,
    response: Response,
    prefer: PreferHeader = None,
) -> IngestReport:
    """Store one event and run it through the active rules (with `Prefer: respond-async`:
    store it, answer 202, and leave the rules to the event processor). The same `event_id`
    again with the same content has no second effect; with other content it is refused
    (409), as is an event of an erased customer."""
    asynchronous = wants_async(prefer)
    report = await run_in_threadpool(
        lambda: service.store_events(rt, [event], process=not asynchronous)
    )
    if report.conflicts:
        c = report.faults[0]
        raise Conflict(
            f"event_id {c.event_id!r} is stored already with another "
            f"{', '.join(c.differs)}: an event id names one event"
        )
    if report.rejected:  # valid, yet refused by the store: its customer was erased
        raise Conflict(report.faults[0].reason)
    _accepted(response, asynchronous)
    return report


@router.post("/batch", response_model=IngestReport, responses=ACCEPTED | responses(503))
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
    response: Response,
    prefer: PreferHeader = None,
) -> IngestReport:
    """Store a batch of events (at most `api_max_batch`, default 1,000), as `crmflow events
    import` does. Idempotent by `event_id`. With `Prefer: respond-async` they are stored
    and answered with 202 at once, and the event processor runs them through the rules in
    arrival order shortly after: the fast way to send many events."""
    asynchronous = wants_async(prefer)
    report = await run_in_threadpool(
        lambda: service.store_events(rt, events, process=not asynchronous)
    )
    _accepted(response, asynchronous)
    return report


@router.get("/backlog", response_model=service.Backlog)
async def get_backlog(
    who: Annotated[Principal, permit("events.backlog")], rt: RuntimeDep
) -> service.Backlog:
    """How many stored events still wait for the rules, since when, and whether an event
    processor is running to apply them."""
    return await run_in_threadpool(service.backlog, rt)
