"""`/api/v1/tasks` and `/api/v1/outbox`: follow-up tasks (list, close) and the message
outbox (list; addresses masked for a caller without `customers.pii`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, may, permit
from crmflow.services import operations as service
from crmflow.services import outbox
from crmflow.services.keys import Principal

router = APIRouter(prefix="", tags=["operations"])


@router.get("/tasks", response_model=service.TaskPage)
async def list_tasks(
    who: Annotated[Principal, permit("tasks.read")],
    rt: RuntimeDep,
    query: Annotated[service.TaskQuery, Query()],
) -> service.TaskPage:
    """Follow-up tasks, soonest due first, filtered by status, owner and customer
    (`next_cursor` pages on)."""
    return await run_in_threadpool(service.list_tasks, rt, query)


@router.post("/tasks/{task_id}/close", response_model=service.Task)
async def close_task(
    task_id: Annotated[int, Path(ge=1, le=2**62)],
    who: Annotated[Principal, permit("tasks.write")],
    rt: RuntimeDep,
) -> service.Task:
    """Mark a task done; closing a done task again changes nothing (the change log records
    who closed it)."""
    return await run_in_threadpool(service.close_task, rt, task_id)


@router.get("/outbox", response_model=service.OutboxPage)
async def list_outbox(
    who: Annotated[Principal, permit("outbox.read")],
    rt: RuntimeDep,
    query: Annotated[outbox.OutboxFilter, Query()],
) -> service.OutboxPage:
    """Messages in the outbox, newest first (`before_id` pages back), unsubscribe tokens
    hidden. The address is masked unless the caller may see personal data."""
    mask = not may(who, "customers.pii")
    return await run_in_threadpool(outbox.list_messages, rt, query, mask=mask, bodies=True)
