"""`/api/v1/journeys`: journeys — list and show, validate and deploy YAML text, pause,
resume and archive, stats and the funnel chart, who is where, and a simulation
(`crmflow journeys …`, over the same service)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services import journey_deliveries
from crmflow.services import journeys as service
from crmflow.services.journey_charts import funnel_svg
from crmflow.services.journey_deliveries import DeliveryList
from crmflow.services.keys import Principal
from crmflow.simulate import SimulationReport
from rules.source import NAME_PATTERN
from store.journey_stats import JourneyStats

router = APIRouter(prefix="/journeys", tags=["journeys"])

Name = Annotated[str, PathParam(pattern=NAME_PATTERN, description="The journey's name")]
Read = Annotated[Principal, permit("journeys.read")]
Write = Annotated[Principal, permit("journeys.write")]

EXAMPLE_YAML = """journey: welcome-mail
entry: rule
channels: [email]
start: hello
nodes:
  hello:
    type: message
    channel: email
    template: {subject: "Welcome", text: "Hello {{ customer.name }}"}
    next: done
  done: {type: exit}
"""


class SimulateBody(service.SimulationOptions):
    """The simulation's options (`crmflow journeys simulate`) and, to try a change before
    deploying it, the journey as YAML text (default: the deployed active version)."""

    yaml: str | None = Field(
        None,
        min_length=1,
        max_length=service.MAX_YAML_CHARS,
        description="The journey's text (YAML); it must be journey `name`",
    )


@router.get("", response_model=list[service.JourneyListItem])
async def list_journeys(who: Read, rt: RuntimeDep) -> list[service.JourneyListItem]:
    """Deployed journeys by name: status, active version, enrollments by status."""
    return await run_in_threadpool(service.list_journeys, rt)


@router.post("/validate", response_model=service.JourneySummary)
async def validate(body: service.JourneyText, who: Write, rt: RuntimeDep) -> service.JourneySummary:
    """Check a journey against the active rules version's programme: its summary, or 422
    with every problem (`field`: `yaml.nodes.<id>`; `reason` starts with the line)."""
    return await run_in_threadpool(service.validate, rt, body)


@router.post("", response_model=service.DeployReport)
async def deploy(body: service.JourneyText, who: Write, rt: RuntimeDep) -> service.DeployReport:
    """Validate and store a journey as a new version (new enrollments use it); a segment
    entered once is entered in the same transaction. A scheduled segment's Temporal
    Schedule is synced after: `schedule_problem` says when it could not be (deployed all
    the same)."""
    return await service.deploy(rt, body, origin=f"api:{who.name}")


@router.get("/{name}", response_model=service.JourneyDetail)
async def get_journey(name: Name, who: Read, rt: RuntimeDep) -> service.JourneyDetail:
    """A deployed journey: its active version's graph (nodes, edges) and every version."""
    return await run_in_threadpool(service.get_journey, rt, name)


@router.post("/{name}/pause", response_model=service.StatusChange)
async def pause(name: Name, who: Write, rt: RuntimeDep) -> service.StatusChange:
    """Stop new enrollments; running enrollments go on."""
    return await service.pause(rt, name)


@router.post("/{name}/resume", response_model=service.StatusChange)
async def resume(name: Name, who: Write, rt: RuntimeDep) -> service.StatusChange:
    """Let new enrollments in again."""
    return await service.resume(rt, name)


@router.post("/{name}/archive", response_model=service.StatusChange)
async def archive(name: Name, who: Write, rt: RuntimeDep) -> service.StatusChange:
    """Retire a journey: no new enrollments, and it listens to no new events."""
    return await service.archive(rt, name)


@router.get("/{name}/stats", response_model=JourneyStats)
async def stats(name: Name, who: Read, rt: RuntimeDep) -> JourneyStats:
    """Per version and node: entered, waiting, sent, suppressed (why), failed, ended; goal
    conversions per variant and for the holdout, with the uplift."""
    return await run_in_threadpool(service.stats, rt, name)


@router.get(
    "/{name}/funnel.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}, "description": "The funnel chart"}},
)
async def funnel(name: Name, who: Read, rt: RuntimeDep) -> Response:
    """The funnel of every version as an SVG chart."""
    data = await run_in_threadpool(service.stats, rt, name)
    return Response(funnel_svg(data), media_type="image/svg+xml")


@router.get("/{name}/enrollments", response_model=service.EnrollmentList)
async def enrollments(
    name: Name,
    who: Read,
    rt: RuntimeDep,
    status: Annotated[service.EnrollmentStatus | None, Query()] = None,
    node: Annotated[
        str | None,
        Query(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$", description="Only those now at this node"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_ENROLLMENTS)] = 100,
) -> service.EnrollmentList:
    """Who is where, latest move first: customer, node, since when, status, variant."""
    query = service.EnrollmentsQuery(status=status, node=node, limit=limit)
    return await run_in_threadpool(service.enrollments, rt, name, query)


@router.post("/{name}/simulate", response_model=SimulationReport)
async def simulate(name: Name, body: SimulateBody, who: Write, rt: RuntimeDep) -> SimulationReport:
    """Run the journey (as deployed, or as sent) for one customer on the time-skipping
    test server, in a throwaway database with the outbox channel only (nothing is sent):
    the path taken, every message with its simulated send time, the outcome. A journey
    sent must be `name`; `rules: true` deploys the active rules version in the simulation."""
    if body.yaml is None:
        source = await run_in_threadpool(service.deployed_text, rt, name)
    else:
        source = service.JourneyText(yaml=body.yaml)
    options = service.SimulationOptions.model_validate(body.model_dump(exclude={"yaml"}))
    # its own event loop in a worker thread: a simulation runs a server and a worker for
    # seconds, and this server's loop keeps answering meanwhile
    return await run_in_threadpool(asyncio.run, service.simulate(rt, source, options, name=name))


@router.get("/{name}/deliveries", response_model=DeliveryList)
async def deliveries(
    name: Name,
    who: Read,
    rt: RuntimeDep,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[
        Literal["sent", "suppressed", "failed", "sending", "retrying"] | None, Query()
    ] = None,
    limit: Annotated[int, Query(ge=1, le=journey_deliveries.MAX_DELIVERIES)] = 50,
) -> DeliveryList:
    """A journey's messages, newest first, each with every attempt (time, outcome, latency,
    the provider's answer)."""
    query = journey_deliveries.DeliveriesQuery(customer_id=customer_id, status=status, limit=limit)
    return await run_in_threadpool(journey_deliveries.deliveries, rt, name, query)


class ResendBody(BaseModel):
    key: str = Field(min_length=1, max_length=250, description="The failed delivery's key")


@router.post("/deliveries/resend", response_model=journey_deliveries.ResendResult)
async def resend(body: ResendBody, who: Write, rt: RuntimeDep) -> journey_deliveries.ResendResult:
    """Send a failed message again, once, on purpose (`crmflow journeys resend`)."""
    return await journey_deliveries.resend(rt, body.key, by=who.actor)
