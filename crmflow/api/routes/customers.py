"""`/api/v1/customers`: search, the 360 view, upsert one or a batch, tags by hand, export
and erasure of one customer's data.

E-mail and phone are masked for roles without `customers.pii` (the viewer).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from crmflow.api.problems import responses
from crmflow.api.security import RuntimeDep, may, permit
from crmflow.domain import Customer, Name
from crmflow.ingest_report import IngestReport
from crmflow.services import customers as service
from crmflow.services import points as points_service
from crmflow.services import privacy
from crmflow.services.errors import Conflict, Invalid
from crmflow.services.keys import Principal

router = APIRouter(prefix="/customers", tags=["customers"])

CustomerId = Annotated[str, Path(min_length=1, max_length=200)]


@router.get("", response_model=service.CustomerPage)
async def search(
    who: Annotated[Principal, permit("customers.read")],
    rt: RuntimeDep,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    email: Annotated[str | None, Query(max_length=320)] = None,
    phone: Annotated[str | None, Query(max_length=40)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    tier: Annotated[str | None, Query(max_length=64)] = None,
    stage: Literal["lead", "prospect", "customer", "member"] | None = None,
    after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
) -> service.CustomerPage:
    """List and search customers by id prefix, e-mail, phone, name, tag, tier or stage;
    ordered by id, paged with the `next` cursor."""
    q = service.CustomerQuery(
        customer_id=customer_id,
        email=email,
        phone=phone,
        name=name,
        tag=tag,
        tier=tier,
        stage=stage,
        after=after,
        limit=limit,
    )
    return await run_in_threadpool(
        service.search_customers, rt, q, mask=not may(who, "customers.pii")
    )


@router.get(
    "/{customer_id}/points",
    response_model=points_service.PointsStatement,
    responses=responses(404),
)
async def points(
    customer_id: CustomerId,
    who: Annotated[Principal, permit("points.read")],
    rt: RuntimeDep,
    ledger: Annotated[int, Query(ge=0, le=points_service.MAX_LEDGER)] = 50,
) -> points_service.PointsStatement:
    """The member's points as of now: totals, every lot (active, expired or spent — a lot
    past its date is expired at once, before the nightly expiry writes its entry) and the
    newest `ledger` entries."""
    return await run_in_threadpool(lambda: points_service.statement(rt, customer_id, ledger=ledger))


@router.get("/{customer_id}", response_model=service.Customer360, responses=responses(404))
async def view(
    customer_id: CustomerId, who: Annotated[Principal, permit("customers.read")], rt: RuntimeDep
) -> service.Customer360:
    """The 360 view: profile, tags (with the rule or person that set them and their
    expiry), points totals and lots, tier and progress to the next, recent events, journeys
    and where the customer is in them, open tasks, coupons, audit trail."""
    return await run_in_threadpool(
        service.customer_360, rt, customer_id, mask=not may(who, "customers.pii")
    )


async def _raw_rows(request: Request) -> list[dict[str, Any]]:
    # FastAPI validated the body against the model already (schema, 422); the service
    # validates the raw rows again with the phone region of the settings
    body = await request.json()
    return body if isinstance(body, list) else [body]


@router.put("/{customer_id}", response_model=IngestReport, responses=responses(409, 422))
async def upsert_one(
    customer_id: CustomerId,
    customer: Customer,
    request: Request,
    who: Annotated[Principal, permit("customers.write")],
    rt: RuntimeDep,
) -> IngestReport:
    """Create or update one customer (the body's `customer_id` must match the path); an
    erased customer cannot be brought back (409)."""
    if customer.customer_id != customer_id:
        raise Invalid("must be the customer id of the path", field="body.customer_id")
    report = await run_in_threadpool(service.upsert_customers, rt, await _raw_rows(request))
    if report.rejected:
        raise Conflict(report.faults[0].reason)
    return report


@router.post("/batch", response_model=IngestReport, responses=responses(413, 422))
async def upsert_batch(
    customers: Annotated[list[Customer], Body(description="At most `api_max_batch` profiles")],
    request: Request,
    who: Annotated[Principal, permit("customers.write")],
    rt: RuntimeDep,
) -> IngestReport:
    """Create or update customers (upsert by `customer_id`), as `crmflow customers import`
    does; a batch with an invalid profile is refused whole (422, nothing stored)."""
    return await run_in_threadpool(service.upsert_customers, rt, await _raw_rows(request))


class NewTag(BaseModel):
    tag: Name = Field(max_length=64)


@router.post("/{customer_id}/tags", response_model=service.TagChange, responses=responses(404))
async def add_tag(
    customer_id: CustomerId,
    body: NewTag,
    who: Annotated[Principal, permit("customers.tag")],
    rt: RuntimeDep,
) -> service.TagChange:
    """Add a tag by hand, recorded as manual with who added it and when."""
    return await run_in_threadpool(service.add_tag, rt, customer_id, body.tag, by=who.by)


@router.delete(
    "/{customer_id}/tags/{tag}", response_model=service.TagChange, responses=responses(404)
)
async def remove_tag(
    customer_id: CustomerId,
    tag: Annotated[str, Path(min_length=1, max_length=64)],
    who: Annotated[Principal, permit("customers.tag")],
    rt: RuntimeDep,
) -> service.TagChange:
    """Remove a tag by hand, whoever set it; audited."""
    return await run_in_threadpool(service.remove_tag, rt, customer_id, tag, by=who.by)


@router.get(
    "/{customer_id}/export", response_model=privacy.CustomerExport, responses=responses(404)
)
async def export(
    customer_id: CustomerId,
    who: Annotated[Principal, permit("customers.export")],
    rt: RuntimeDep,
) -> privacy.CustomerExport:
    """Everything stored about the customer as one document (as `crmflow customer export`):
    profile, consent and its changes, events, tags, points, tiers, audit trail, messages
    with their content, tasks, coupons, journey enrollments (and their state in Temporal,
    or why it is missing). Recorded in the privacy log."""
    return await privacy.export_customer(rt, customer_id, who=who)


@router.post("/{customer_id}/erase", response_model=privacy.ErasureReport, responses=responses(404))
async def erase(
    customer_id: CustomerId,
    who: Annotated[Principal, permit("customers.erase")],
    rt: RuntimeDep,
    dry_run: Annotated[bool, Query(description="only say what would happen")] = False,
) -> privacy.ErasureReport:
    """Erase the customer's personal data from every table, keeping the id as a
    pseudonymous tombstone (counts, the KPI digest and points totals do not change); end
    running journey enrollments; reject later imports of the id. As `crmflow customer
    erase --yes`. Recorded in the privacy log."""
    return await privacy.erase_customer(rt, customer_id, who=who, dry_run=dry_run)
