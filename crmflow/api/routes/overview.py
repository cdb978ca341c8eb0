"""`/api/v1/overview`: the console overview's store panels as JSON (members by tier, points
liability and expiry, events per day, journeys, automation runs needing attention), each
only for a caller whose role may read that area; projects by health are `/projects`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services import overview as service
from crmflow.services.keys import Principal

router = APIRouter(tags=["overview"])


@router.get("/overview", response_model=service.Overview)
async def overview(
    who: Annotated[Principal, permit("health.read")], rt: RuntimeDep
) -> service.Overview:
    """The overview's panels the caller's role may read (the others are null)."""
    return await run_in_threadpool(service.overview, rt, service.panels_for(who.role))
