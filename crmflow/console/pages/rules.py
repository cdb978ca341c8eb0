"""The console's Rules pages: deployed versions (activate an older one), what changed between
two versions, and the tester — which rules an event would fire for a customer, what they
would do, and why the others would not.

A thin face over `crmflow.services.rules` (activation, the dry run: the same functions as
`crmflow rules versions` / `crmflow rules test` and `/api/v1/rules`) and its read models in
`crmflow.services.rule_views`. Reading and testing need "rules.read" (the tester stores
nothing); activating needs "rules.write".
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import get_runtime
from crmflow.console.web import Viewer, act, form, page, render, url
from crmflow.services import rule_views as views
from crmflow.services import rules as service
from crmflow.services.errors import Invalid, NotFound, ServiceError, TooLarge

router = APIRouter()

VersionQuery = Annotated[str, Query(max_length=views.MAX_VERSION)]
# a text box's worth, read from the form ourselves so a long one is a message, not a 422
FORM_FIELD_CHARS = views.MAX_EVENT_TEXT + 1_000


_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def shown(value: Any) -> str:
    """A fact's or an effect's value as a person reads it: `1,437`, `true`, a time to the
    minute in UTC, a list joined by commas."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0")
    if isinstance(value, str) and _ISO_TIME.match(value):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return value
        return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if at.tzinfo else value
    if isinstance(value, list):
        return ", ".join(shown(v) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "-" if value is None else str(value)


def _status(exc: ServiceError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, TooLarge):
        return 413
    return 422


@router.get("/rules", response_class=HTMLResponse)
async def versions(
    request: Request,
    viewer: Annotated[Viewer, page("rules.read")],
    page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    rt = get_runtime(request)
    listing = await run_in_threadpool(views.version_page, rt, page_no)
    choices = await run_in_threadpool(views.version_choices, rt) if listing.total > 1 else []
    return render(
        request,
        viewer,
        "rules/versions.html",
        title="Rules",
        listing=listing,
        choices=choices,
        compare_a=choices[1].version if len(choices) > 1 else "",
        compare_b=choices[0].version if choices else "",
    )


@router.post("/rules/versions/{version}/activate")
async def activate(
    request: Request,
    version: str,
    viewer: Annotated[Viewer, form("rules.write")],
) -> RedirectResponse:
    rt = get_runtime(request)
    return await act(
        request,
        url("rules"),
        lambda: service.activate(rt, version[: views.MAX_VERSION]),
        lambda v: f"rules version {v.version} is active: new events use it from now on",
    )


@router.get("/rules/diff", response_class=HTMLResponse)
async def diff(
    request: Request,
    viewer: Annotated[Viewer, page("rules.read")],
    a: VersionQuery = "",
    b: VersionQuery = "",
) -> HTMLResponse:
    rt = get_runtime(request)
    choices = await run_in_threadpool(views.version_choices, rt)
    context: dict[str, Any] = {"choices": choices, "a": a, "b": b, "diff": None, "error": None}
    status = 200
    if not (a and b):
        # nothing chosen yet: offer the newest version against the one before it
        context["a"] = a or (choices[1].version if len(choices) > 1 else "")
        context["b"] = b or (choices[0].version if choices else "")
    else:
        try:
            context["diff"] = await run_in_threadpool(views.diff_versions, rt, a, b)
        except ServiceError as exc:
            context["error"], status = str(exc), _status(exc)
    return render(
        request, viewer, "rules/diff.html", status_code=status, title="Rules: changes", **context
    )


def _sample_event(customer: str | None) -> str:
    """A purchase to start from, for a customer with no event picked."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    return (
        "{\n"
        f'  "event_id": "console-test-1",\n'
        f'  "customer_id": "{customer or "C0001"}",\n'
        '  "type": "purchase",\n'
        f'  "occurred_at": "{now}",\n'
        '  "properties": {"amount": 1200, "currency": "CNY", "order_id": "TEST-1"}\n'
        "}"
    )


async def _tester(
    request: Request,
    viewer: Viewer,
    *,
    customer: str,
    version: str,
    event_text: str | None,
    picked: str = "",
    result: views.TesterRun | None = None,
    error: list[str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    rt = get_runtime(request)
    choices = await run_in_threadpool(views.version_choices, rt)
    recent: list[views.RecentEvent] = []
    customer_error = None
    try:
        cid = views.check_customer_id(customer)
        if cid is not None:
            recent = await run_in_threadpool(views.recent_events, rt, cid)
    except ServiceError as exc:
        customer_error = str(exc)
    if event_text is None:
        chosen = next((e for e in recent if e.event_id == picked), None)
        event_text = chosen.as_json() if chosen else _sample_event(customer.strip() or None)
    return render(
        request,
        viewer,
        "rules/test.html",
        status_code=status,
        title="Rules: tester",
        choices=choices,
        customer=customer.strip(),
        version=version or next((v.version for v in choices if v.active), ""),
        event_text=event_text,
        picked=picked,
        recent=recent,
        customer_error=customer_error,
        result=result,
        error=error,
        shown=shown,
    )


@router.get("/rules/test", response_class=HTMLResponse)
async def tester(
    request: Request,
    viewer: Annotated[Viewer, page("rules.read")],
    customer: Annotated[str, Query(max_length=views.MAX_ID)] = "",
    event: Annotated[str, Query(max_length=views.MAX_ID)] = "",
    version: VersionQuery = "",
) -> HTMLResponse:
    return await _tester(
        request, viewer, customer=customer, version=version, event_text=None, picked=event
    )


def _field(data: Any, name: str) -> str:
    value = data.get(name)
    return value[:FORM_FIELD_CHARS] if isinstance(value, str) else ""


@router.post("/rules/test", response_class=HTMLResponse)
async def run_test(
    request: Request,
    viewer: Annotated[Viewer, form("rules.read")],
) -> HTMLResponse:
    data = await request.form()
    customer, version = _field(data, "customer"), _field(data, "version")
    event_text = _field(data, "event")
    rt = get_runtime(request)
    try:
        cid = views.check_customer_id(customer)
        events = views.events_from_json(event_text, cid)
        result = await run_in_threadpool(
            views.dry_run_version, rt, version[: views.MAX_VERSION] or None, events, cid
        )
    except ServiceError as exc:
        return await _tester(
            request,
            viewer,
            customer=customer,
            version=version,
            event_text=event_text,
            error=_problems(exc),
            status=_status(exc),
        )
    return await _tester(
        request, viewer, customer=customer, version=version, event_text=event_text, result=result
    )


def _problems(exc: ServiceError) -> list[str]:
    """What to tell the user: each field at fault on a line of its own."""
    if isinstance(exc, service.RulesInvalid):  # a stored version that no longer loads
        return [f"this rules version no longer loads: {e}" for e in exc.errors]
    if isinstance(exc, Invalid):
        return [f"{p.field}: {p.reason}" if p.field else p.reason for p in exc.problems]
    return [str(exc)]
