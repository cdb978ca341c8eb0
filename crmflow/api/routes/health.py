"""`/api/v1/health`: is the database reachable, at the current schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services.health import Health, check_health
from crmflow.services.keys import Principal

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(who: Annotated[Principal, permit("health.read")], rt: RuntimeDep) -> JSONResponse:
    """`ok` when the database answers at the current schema (503 otherwise)."""
    found = await run_in_threadpool(check_health, rt)
    return JSONResponse(found.model_dump(mode="json"), status_code=200 if found.ok else 503)
