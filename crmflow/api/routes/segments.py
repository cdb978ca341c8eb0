"""`/api/v1/segments`: preview how many customers a condition matches now, and which."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services import segments as service
from crmflow.services.keys import Principal

router = APIRouter(prefix="/segments", tags=["segments"])


@router.post("/preview", response_model=service.SegmentPreview)
async def preview(
    query: service.SegmentQuery,
    who: Annotated[Principal, permit("segments.preview")],
    rt: RuntimeDep,
) -> service.SegmentPreview:
    """Count the customers a condition (the rules' language, typed by the active rules
    version's programme) matches now, with the first `sample` of their ids. Changes
    nothing; 409 when no rules version is deployed."""
    return await run_in_threadpool(service.preview, rt, query)
