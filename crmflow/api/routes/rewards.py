"""`/api/v1/rewards`: the rewards catalogue — list it, validate one, apply one (the body is
the rewards file's model as JSON). The same service as `crmflow rewards`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from crmflow.api.problems import responses
from crmflow.api.security import RuntimeDep, permit
from crmflow.services import rewards as service
from crmflow.services.keys import Principal
from rules.rewards import RewardsFile

router = APIRouter(prefix="/rewards", tags=["rewards"])


@router.get("", response_model=list[service.RewardInfo])
async def list_rewards(
    who: Annotated[Principal, permit("rewards.read")],
    rt: RuntimeDep,
    withdrawn: Annotated[bool, Query(description="also list withdrawn rewards")] = False,
) -> list[service.RewardInfo]:
    """The catalogue by id: cost, stock left (null: no limit), limits, validity, minimum
    tier and each reward's status as of now."""
    return await run_in_threadpool(lambda: service.list_rewards(rt, withdrawn=withdrawn))


@router.post("/validate", response_model=service.RewardsSummary, responses=responses(422))
async def validate(
    body: RewardsFile, who: Annotated[Principal, permit("rewards.write")], rt: RuntimeDep
) -> service.RewardsSummary:
    """Check a catalogue; each `min_tier` against the active rules version's tiers (422 for
    a tier it does not have, or for any tier while no version is deployed). Nothing is
    stored."""
    return await run_in_threadpool(service.validate, rt, body)


@router.put("", response_model=service.RewardsApplied, responses=responses(422))
async def apply(
    body: RewardsFile,
    who: Annotated[Principal, permit("rewards.write")],
    rt: RuntimeDep,
    dry_run: Annotated[bool, Query(description="say what would change; change nothing")] = False,
) -> service.RewardsApplied:
    """Make this the catalogue: create or update its rewards, withdraw the ones it leaves
    out (their redemptions and issued counts stay)."""
    return await run_in_threadpool(lambda: service.apply(rt, body, dry_run=dry_run))
