"""Customers: search, the 360 page, and what a role may do to one customer — tags by hand,
adjust points, redeem a reward, export the customer's data, erase it (after a confirmation
step). Every change calls the same service function as the CLI and the API; a control is
shown only to roles that may use it, and its route refuses the others (403).

E-mail and phone are masked for roles without `customers.pii` (the service masks).
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import get_runtime
from crmflow.console.web import Viewer, act, done, form, page, refused, render, url
from crmflow.domain import Name
from crmflow.services import customer_views, privacy, rewards
from crmflow.services import customers as service
from crmflow.services import points as points_service
from crmflow.services.errors import Invalid, NotFound, ServiceError
from crmflow.services.runtime import Runtime

router = APIRouter()

CustomerId = Annotated[str, Path(min_length=1, max_length=200)]
Fields = Literal["id", "name", "email", "phone"]
TAG_NAME: TypeAdapter[str] = TypeAdapter(Name)
PAGE_SIZE = 50


def _customer_url(customer_id: str, anchor: str = "") -> str:
    return url(f"customers/{quote(customer_id, safe='')}") + (f"#{anchor}" if anchor else "")


def _form_key(prefix: str) -> str:
    """An idempotency key made when the form is drawn: the same form sent twice is one
    change (the service returns the stored result the second time)."""
    return f"console-{prefix}-{secrets.token_hex(12)}"


def _status(exc: ServiceError) -> int:
    return 404 if isinstance(exc, NotFound) else 422 if isinstance(exc, Invalid) else 409


# --------------------------------------------------------------------------- search


@router.get("/customers", response_class=HTMLResponse)
async def customer_list(
    request: Request,
    viewer: Annotated[Viewer, page("customers.read")],
    q: Annotated[str, Query(max_length=320)] = "",
    field: Fields = "id",
    tag: Annotated[str, Query(max_length=64)] = "",
    tier: Annotated[str, Query(max_length=64)] = "",
    stage: Literal["", "lead", "prospect", "customer", "member"] = "",
    after: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    text = q.strip()
    query = service.CustomerQuery(
        customer_id=text if field == "id" and text else None,
        name=text if field == "name" and text else None,
        email=text if field == "email" and text else None,
        phone=text if field == "phone" and text else None,
        tag=tag.strip() or None,
        tier=tier.strip() or None,
        stage=stage or None,
        after=after or None,
        limit=PAGE_SIZE,
    )
    rt = get_runtime(request)
    error = None
    try:
        found = await run_in_threadpool(
            service.search_customers, rt, query, mask=not viewer.may("customers.pii")
        )
    except ServiceError as exc:
        found, error = service.CustomerPage(customers=[], next=None), str(exc)
    kept = {"q": q, "field": field, "tag": tag, "tier": tier, "stage": stage}
    kept = {k: v for k, v in kept.items() if v and not (k == "field" and v == "id" and not q)}
    return render(
        request,
        viewer,
        "customers/list.html",
        title="Customers",
        found=found,
        error=error,
        form=kept | {"field": field},
        filtered=bool(kept),
        paged=bool(after),
        first_url=url("customers") + (f"?{urlencode(kept)}" if kept else ""),
        next_url=(
            url("customers") + "?" + urlencode(kept | {"after": found.next}) if found.next else None
        ),
        customer_url=_customer_url,
    )


# --------------------------------------------------------------------------- 360 page


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
async def customer_page(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, page("customers.read")],
) -> Response:
    rt = get_runtime(request)
    try:
        found = await run_in_threadpool(
            lambda: customer_views.customer_page(
                rt,
                customer_id,
                mask=not viewer.may("customers.pii"),
                with_privacy=viewer.may("customers.export") or viewer.may("audit.read"),
            )
        )
    except ServiceError as exc:
        return render(
            request,
            viewer,
            "error.html",
            status_code=_status(exc),
            title="Customer not found",
            message=str(exc),
        )
    catalogue = []
    if viewer.may("points.redeem") and found.erased_at is None:
        catalogue = [
            r for r in await run_in_threadpool(rewards.list_rewards, rt) if r.status == "available"
        ]
    v = found.view
    return render(
        request,
        viewer,
        "customers/view.html",
        title=v.name or v.customer_id,
        c=found,
        v=v,
        catalogue=catalogue,
        redeem_key=_form_key("redeem"),
        adjust_key=_form_key("adjust"),
        customer_url=_customer_url(v.customer_id),
        tag_url=lambda tag: url("customers") + "?" + urlencode({"tag": tag}),
    )


# --------------------------------------------------------------------------- tags


def tag_change(rt: Runtime, customer_id: str, tag: str, op: str, by: str) -> service.TagChange:
    """Add or remove a tag by hand (the tags page uses it too)."""
    if op == "remove":
        return service.remove_tag(rt, customer_id, tag, by=by)
    return service.add_tag(rt, customer_id, tag, by=by)


def tag_message(change: service.TagChange) -> str:
    words = {
        "added": f"Tag {change.tag} added to {change.customer_id}.",
        "removed": f"Tag {change.tag} removed from {change.customer_id}.",
        "unchanged": f"{change.customer_id}: tag {change.tag} unchanged (nothing to do).",
    }
    return words[change.action]


def checked_tag(value: str) -> str | None:
    """The tag as a name, or None when it is not one."""
    try:
        return TAG_NAME.validate_python(value.strip())
    except ValidationError:
        return None


@router.post("/customers/{customer_id}/tags")
async def change_tag(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, form("customers.tag")],
    tag: Annotated[str, Form(max_length=64)],
    op: Annotated[Literal["add", "remove"], Form()] = "add",
) -> RedirectResponse:
    back = _customer_url(customer_id, "tags")
    name = checked_tag(tag)
    if name is None:
        return refused(
            request,
            back,
            f"{tag!r} is not a tag name: lower case letters, digits and _ . : -, "
            "starting with a letter",
        )
    rt = get_runtime(request)
    by = viewer.principal.by
    return await act(request, back, lambda: tag_change(rt, customer_id, name, op, by), tag_message)


# --------------------------------------------------------------------------- points


@router.post("/customers/{customer_id}/points/adjust")
async def adjust_points(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, form("points.adjust")],
    amount: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=points_service.MAX_REASON)],
    key: Annotated[str, Form(max_length=points_service.MAX_KEY)],
    qualifying: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    rt = get_runtime(request)
    by = viewer.principal.by

    def change() -> points_service.Adjustment:
        return points_service.adjust(
            rt,
            customer_id,
            amount.strip().replace(",", ""),
            reason=reason.strip(),
            by=by,
            qualifying=qualifying,
            key=key,
        )

    def message(a: points_service.Adjustment) -> str:
        verb = "credited" if a.amount > 0 else "debited"
        return f"{abs(a.amount):,.2f} points {verb} ({a.reason}); balance now {a.balance:,.2f}."

    return await act(request, _customer_url(customer_id, "points"), change, message)


@router.post("/customers/{customer_id}/points/redeem")
async def redeem_reward(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, form("points.redeem")],
    reward: Annotated[str, Form(min_length=1, max_length=64)],
    key: Annotated[str, Form(max_length=points_service.MAX_KEY)],
) -> RedirectResponse:
    rt = get_runtime(request)
    by = viewer.principal.by

    def message(r: points_service.Redemption) -> str:
        code = f", coupon {r.code}" if r.code else ""
        return (
            f"Redeemed {r.reward_id} for {r.cost:,.0f} points{code}; balance now {r.balance:,.2f}."
        )

    return await act(
        request,
        _customer_url(customer_id, "points"),
        lambda: points_service.redeem(rt, customer_id, reward, key=key, by=by),
        message,
    )


# --------------------------------------------------------------------------- privacy


@router.post("/customers/{customer_id}/export")
async def export_customer(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, form("customers.export")],
) -> Response:
    """The customer's data as one JSON document, downloaded (recorded in the privacy log)."""
    try:
        doc = await privacy.export_customer(get_runtime(request), customer_id, who=viewer.principal)
    except ServiceError as exc:
        return refused(request, _customer_url(customer_id), str(exc))
    body = json.dumps(doc.model_dump(mode="json"), ensure_ascii=False, indent=2)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in customer_id)[:80]
    return Response(
        body,
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="customer-{safe}.json"'},
    )


@router.get("/customers/{customer_id}/erase", response_class=HTMLResponse)
async def erase_confirm(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, page("customers.erase")],
) -> Response:
    """The confirmation step: what an erasure would do (a dry run), and a form that needs
    the customer's id typed again."""
    try:
        plan = await privacy.erase_customer(
            get_runtime(request), customer_id, who=viewer.principal, dry_run=True
        )
    except ServiceError as exc:
        return refused(request, url("customers"), str(exc))
    return render(
        request,
        viewer,
        "customers/erase.html",
        title=f"Erase {customer_id}",
        plan=plan,
        customer_url=_customer_url(customer_id),
    )


@router.post("/customers/{customer_id}/erase")
async def erase_customer(
    request: Request,
    customer_id: CustomerId,
    viewer: Annotated[Viewer, form("customers.erase")],
    confirm: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    back = _customer_url(customer_id)
    if confirm.strip() != customer_id:
        return refused(
            request,
            url(f"customers/{quote(customer_id, safe='')}/erase"),
            "Not erased: type the customer's id exactly to confirm.",
        )
    try:
        report = await privacy.erase_customer(
            get_runtime(request), customer_id, who=viewer.principal
        )
    except ServiceError as exc:
        return refused(request, back, str(exc))
    changed = sum(report.rows.values())
    again = " (erased before: done again)" if report.already_erased else ""
    ended = len(report.enrollments_ended)
    note = f"; {ended} journey enrollment(s) ended" if ended else ""
    return done(
        request, back, f"{customer_id} erased{again}: {changed:,} rows changed or removed{note}."
    )
