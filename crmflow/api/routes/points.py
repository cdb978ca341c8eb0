"""`/api/v1/…/points`: redeem a reward for a member, reverse a redemption, adjust a member's
points by hand. The same services as `crmflow points redeem | reverse | adjust`.

Who acts (`by`) is the API key's bound person, or the key's name: never a field of the body.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from crmflow.api.problems import responses
from crmflow.api.security import RuntimeDep, permit
from crmflow.services import points as service
from crmflow.services.keys import Principal
from rules.models import Name

router = APIRouter(tags=["points"])

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
CustomerId = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)]
Key = Annotated[
    str,
    Field(
        min_length=1,
        max_length=service.MAX_KEY,
        pattern=NO_NUL,
        description="The caller's idempotency key: the same key again gives the stored result",
    ),
]


class NewRedemption(BaseModel):
    model_config = ConfigDict(extra="forbid")  # who acts is the key's, never the body's

    reward: Name = Field(description="The reward's id (`GET /rewards`)")
    key: Key


class NewAdjustment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Decimal = Field(
        ge=-service.MAX_AMOUNT,
        le=service.MAX_AMOUNT,
        decimal_places=2,
        description="Points: positive credits, negative debits; not 0, at most two decimals",
    )
    reason: str = Field(min_length=1, max_length=service.MAX_REASON, pattern=NO_NUL)
    qualifying: bool = Field(False, description="Count a credit as earned for tier qualification")
    key: Key | None = None


@router.post(
    "/customers/{customer_id}/points/redemptions",
    response_model=service.Redemption,
    responses=responses(404, 409),
)
async def redeem(
    customer_id: CustomerId,
    body: NewRedemption,
    who: Annotated[Principal, permit("points.redeem")],
    rt: RuntimeDep,
) -> service.Redemption:
    """Spend the member's points on a reward, first to expire first. The same `key` again
    returns the stored redemption; with another member or reward: 409. Refused (409, the
    reason in `detail`): a withdrawn reward, outside its validity, a tier too low, the
    member's limit reached, not enough points, out of stock. A coupon reward's `code` is
    in the answer."""
    return await run_in_threadpool(
        lambda: service.redeem(rt, customer_id, body.reward, key=body.key, by=who.by)
    )


@router.post(
    "/redemptions/{key}/reverse",
    response_model=service.Redemption,
    responses=responses(404, 409),
)
async def reverse(
    key: Annotated[str, Path(min_length=1, max_length=service.MAX_KEY, pattern=NO_NUL)],
    who: Annotated[Principal, permit("points.redeem")],
    rt: RuntimeDep,
) -> service.Redemption:
    """Undo a redemption: its points go back to the lots they came from (or to a new lot
    with the old one's dates, for a lot the nightly expiry has zeroed since), the stock is
    given back, a coupon is voided. 409 when it is reversed already."""
    return await run_in_threadpool(lambda: service.reverse(rt, key, by=who.by))


@router.post(
    "/customers/{customer_id}/points/adjustments",
    response_model=service.Adjustment,
    responses=responses(404, 409),
)
async def adjust(
    customer_id: CustomerId,
    body: NewAdjustment,
    who: Annotated[Principal, permit("points.adjust")],
    rt: RuntimeDep,
) -> service.Adjustment:
    """Credit or debit points by hand, with a reason. A credit is never capped nor pending,
    pays the member's debt first, and counts for tier qualification only with
    `qualifying`. A debit larger than the balance is refused (409) unless the programme
    allows a negative balance (the rest becomes a debt). The same `key` again returns the
    stored adjustment; with other content: 409."""
    return await run_in_threadpool(
        lambda: service.adjust(
            rt,
            customer_id,
            body.amount,
            reason=body.reason,
            by=who.by,
            qualifying=body.qualifying,
            key=body.key,
        )
    )
