"""Public pages: the signed unsubscribe links (the only routes without a key).

- `GET /unsubscribe/{token}` shows a page asking to confirm (link scanners follow GETs, so a
  GET changes nothing).
- `POST /unsubscribe/{token}` (the page's button, or a mail client's RFC 8058 one-click POST
  with the body `List-Unsubscribe=One-Click`) records an `unsubscribed` event for the token's
  customer and channel through the events service, which the rules turn into withdrawn
  consent. The event id is derived from the token, so a link used twice has one effect.
"""

from __future__ import annotations

import hashlib
import html
import logging
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from activities.channels.unsubscribe import InvalidUnsubscribeToken, read_unsubscribe_token
from crmflow.api.security import get_runtime
from crmflow.domain import Event
from crmflow.services.errors import ServiceError
from crmflow.services.events import store_events
from store.db import utcnow

log = logging.getLogger(__name__)

router = APIRouter(tags=["unsubscribe"])


def unsubscribe_event_id(token: str) -> str:
    """The deterministic id of the event a token records: one effect however often used."""
    return "unsubscribe:" + hashlib.sha256(token.strip().encode("utf-8")).hexdigest()[:24]


# --- pages -------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto;
       padding: 0 1rem; color: #222; line-height: 1.5; }}
button {{ font-size: 1rem; padding: .6rem 1.4rem; border: 0; border-radius: .3rem;
         background: #b3261e; color: #fff; cursor: pointer; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""

_CHANNEL_NAMES = {"email": "e-mail", "sms": "text messages", "wechat": "WeChat messages"}

# The token is in the URL: keep it out of caches, referrers and search indexes.
_PRIVATE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body), status_code=status, headers=_PRIVATE
    )


def _bad_token_page() -> HTMLResponse:
    return _page(
        "This unsubscribe link does not work",
        "<p>The link is incomplete or was changed. Please use the link exactly as it appears "
        "in the message, or reply to the message and ask us to unsubscribe you.</p>",
        status=400,
    )


def _what(channel: str) -> str:
    return html.escape(_CHANNEL_NAMES.get(channel, f"{channel} messages"))


def _secret(request: Request) -> str:
    return str(get_runtime(request).settings.unsubscribe_secret.get_secret_value())


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    """A page asking to confirm (a GET changes nothing: link scanners follow GETs)."""
    try:
        found = read_unsubscribe_token(_secret(request), token)
    except InvalidUnsubscribeToken:
        return _bad_token_page()
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving marketing {_what(found.channel)} from us?</p>\n"
        '<form method="post">\n'
        '<input type="hidden" name="confirm" value="yes">\n'
        '<button type="submit">Unsubscribe</button>\n'
        "</form>",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, request: Request) -> HTMLResponse:
    """Unsubscribe: the page's button, or RFC 8058 one-click (`List-Unsubscribe=One-Click`
    in the form body). Any POST to a valid link unsubscribes: the token is the proof."""
    try:
        found = read_unsubscribe_token(_secret(request), token)
    except InvalidUnsubscribeToken:
        return _bad_token_page()
    body = await request.body()
    form = parse_qs(body.decode("utf-8", "replace")) if body else {}
    one_click = form.get("List-Unsubscribe") == ["One-Click"]
    event = Event(
        event_id=unsubscribe_event_id(token),
        customer_id=found.customer_id,
        type="unsubscribed",
        occurred_at=utcnow(),
        properties={
            "channel": found.channel,
            "journey": found.journey,
            "via": "one-click" if one_click else "link",
        },
    )
    try:
        done = await run_in_threadpool(store_events, get_runtime(request), [event])
    except ServiceError:
        log.exception("unsubscribe of %s (%s) not recorded", found.customer_id, found.channel)
        return _page(
            "Please try again",
            "<p>We could not record your request just now. Please try again in a minute.</p>",
            status=503,
        )
    if done.unprocessed:
        log.warning(
            "unsubscribe of %s (%s) stored, but no rules version is deployed: consent "
            "changes when one is and `crmflow events process` runs",
            found.customer_id,
            found.channel,
        )
    return _page(
        "You are unsubscribed",
        f"<p>You will no longer receive marketing {_what(found.channel)} from us.</p>",
    )
