"""Health. `/api/v1/health` (a key with `health.read`): the database, Temporal and the
workers polling the task queue, in detail. `/livez` and `/readyz` (no key): the probes a
load balancer, a container runtime or an orchestrator asks — this process answers; its
database answers at the current schema — as a bare yes or no, with no detail to give away
(`crmflow.services.health`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services.health import Health, Readiness, check_health, readiness
from crmflow.services.keys import Principal

router = APIRouter(tags=["health"])
probes = APIRouter(tags=["health"])  # public: outside /api/v1, no key


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(who: Annotated[Principal, permit("health.read")], rt: RuntimeDep) -> JSONResponse:
    """The database (503 when it does not answer at the current schema), Temporal and the
    workers; `status` is `degraded` when the database answers but Temporal or the workers
    do not."""
    found = await check_health(rt)
    return JSONResponse(found.model_dump(mode="json"), status_code=200 if found.ok else 503)


@probes.get("/livez", response_model=Readiness)
async def livez() -> Readiness:
    """Liveness: this process answers (nothing else is checked)."""
    return Readiness(status="ready")


@probes.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(rt: RuntimeDep) -> JSONResponse:
    """Readiness: the database answers at the current schema (503 otherwise)."""
    found = await run_in_threadpool(readiness, rt)
    return JSONResponse(
        found.model_dump(mode="json"), status_code=200 if found.status == "ready" else 503
    )
