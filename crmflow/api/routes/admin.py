"""`/api/v1/keys` and `/api/v1/audit`: API keys and the change log (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services import audit, keys
from crmflow.services.keys import Principal

router = APIRouter(tags=["admin"])


@router.get("/keys", response_model=list[keys.KeyInfo])
async def list_keys(
    who: Annotated[Principal, permit("keys.manage")], rt: RuntimeDep
) -> list[keys.KeyInfo]:
    """Every key, active or not; never a secret."""
    return await run_in_threadpool(keys.list_keys, rt)


@router.post("/keys", response_model=keys.CreatedKey, status_code=201)
async def create_key(
    new: keys.NewKey, who: Annotated[Principal, permit("keys.manage")], rt: RuntimeDep
) -> keys.CreatedKey:
    """A new key; its `token` is in this answer only."""
    return await run_in_threadpool(keys.create_key, rt, new, created_by=who.actor)


@router.delete("/keys/{name}", response_model=keys.KeyInfo)
async def revoke_key(
    name: str, who: Annotated[Principal, permit("keys.manage")], rt: RuntimeDep
) -> keys.KeyInfo:
    """Revoke a key by name or key id: it stops working at once."""
    return await run_in_threadpool(keys.revoke_key, rt, name)


@router.get("/audit", response_model=list[audit.Change])
async def list_changes(
    who: Annotated[Principal, permit("audit.read")],
    rt: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> list[audit.Change]:
    """Changes made through the API, newest first (`before_id` pages back)."""
    return await run_in_threadpool(audit.list_changes, rt, limit=limit, before_id=before_id)
