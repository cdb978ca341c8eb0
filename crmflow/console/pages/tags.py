"""Tags: every tag with how many customers carry it now, which rules or people set it and
when it was last applied — a tag nobody carries any more shows as such — and a form to apply
or remove a tag by hand on one customer (the same service call as `crmflow customer tag`
and the API's `/customers/{id}/tags`)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import get_runtime
from crmflow.console.pages.customers import checked_tag, tag_change, tag_message
from crmflow.console.web import Viewer, act, form, page, refused, render, url
from crmflow.services import tags as service

router = APIRouter()


@router.get("/tags", response_class=HTMLResponse)
async def tags_page(
    request: Request, viewer: Annotated[Viewer, page("customers.read")]
) -> HTMLResponse:
    overview = await run_in_threadpool(service.tag_overview, get_runtime(request))
    in_use = sum(1 for t in overview.tags if t.customers)
    return render(
        request,
        viewer,
        "tags/list.html",
        title="Tags",
        overview=overview,
        in_use=in_use,
        unused=len(overview.tags) - in_use,
        customers_url=lambda tag: url("customers") + "?" + urlencode({"tag": tag}),
    )


@router.post("/tags/apply")
async def apply_tag(
    request: Request,
    viewer: Annotated[Viewer, form("customers.tag")],
    customer_id: Annotated[str, Form(min_length=1, max_length=200)],
    tag: Annotated[str, Form(max_length=64)],
    op: Annotated[Literal["add", "remove"], Form()] = "add",
) -> RedirectResponse:
    back = url("tags")
    name = checked_tag(tag)
    if name is None:
        return refused(
            request,
            back,
            f"{tag!r} is not a tag name: lower case letters, digits and _ . : -, "
            "starting with a letter",
        )
    rt = get_runtime(request)
    who, cid = viewer.principal.by, customer_id.strip()
    return await act(request, back, lambda: tag_change(rt, cid, name, op, who), tag_message)
