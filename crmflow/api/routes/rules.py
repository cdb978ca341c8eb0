"""`/api/v1/rules`: validate, dry-run and deploy a rules pack sent as YAML texts; list the
deployed versions and activate one (a rollback). The same service as `crmflow rules`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RuntimeDep, permit
from crmflow.services import rules as service
from crmflow.services.keys import Principal

router = APIRouter(prefix="/rules", tags=["rules"])

Version = Annotated[
    str, Path(min_length=1, max_length=64, description="a version as `GET /rules/versions` lists")
]


@router.get("/versions", response_model=list[service.RuleVersion])
async def list_versions(
    who: Annotated[Principal, permit("rules.read")], rt: RuntimeDep
) -> list[service.RuleVersion]:
    """Deployed rules versions, oldest first; the active one is marked."""
    return await run_in_threadpool(service.list_versions, rt)


@router.post("/validate", response_model=service.RulesSummary)
async def validate(
    pack: service.RulesTexts, who: Annotated[Principal, permit("rules.write")], rt: RuntimeDep
) -> service.RulesSummary:
    """Check a programme and its rule files (and, when sent, the journeys they may name:
    a rule naming another journey is a problem; without them `warnings` says journey names
    were not checked); 422 lists every problem as `file:line` and the field at fault.
    Nothing is stored."""
    return await run_in_threadpool(service.validate, pack)


@router.post("/test", response_model=service.DryRun)
async def dry_run(
    body: service.RulesTestInput,
    who: Annotated[Principal, permit("rules.write")],
    rt: RuntimeDep,
) -> service.DryRun:
    """Every rule explained for each event — fired, not listening to its type, or the first
    condition that was false with the values it saw — and what the fired ones would change;
    on the stored profile of `customer`, or on a new one. Nothing is stored."""
    return await run_in_threadpool(service.dry_run, rt, body, body.events, body.customer)


@router.post("/deploy", response_model=service.Deployed)
async def deploy(
    pack: service.RulesTexts, who: Annotated[Principal, permit("rules.write")], rt: RuntimeDep
) -> service.Deployed:
    """Store this version and make it the active one; the same content again is
    `unchanged`. Journeys sent with it are checked as in `/rules/validate`."""
    return await run_in_threadpool(service.deploy, rt, pack, f"api {who.actor}")


@router.post("/versions/{version}/activate", response_model=service.RuleVersion)
async def activate(
    version: Version, who: Annotated[Principal, permit("rules.write")], rt: RuntimeDep
) -> service.RuleVersion:
    """Make a deployed version the active one again (404 for one never deployed)."""
    return await run_in_threadpool(service.activate, rt, version)
