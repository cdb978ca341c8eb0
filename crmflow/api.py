"""crmflow's HTTP API: events in, unsubscribe links, health.

- `POST /events` takes one event or a list of them in the canonical format
  (`crmflow.formats.Event`); a request with any invalid event is refused whole (422, with
  pydantic's errors naming the field) and nothing of it is stored. Accepted events are stored
  and run through the active rules version in one transaction, exactly as an import does;
  the same `event_id` twice has one effect.
- `GET /unsubscribe/{token}` shows a page asking to confirm; `POST /unsubscribe/{token}` (the
  page's button, or a mail client's RFC 8058 one-click POST with the body
  `List-Unsubscribe=One-Click`) records an `unsubscribed` event for the token's customer and
  channel through the same event path, which the rules turn into withdrawn consent. The
  event id is derived from the token, so a link used twice has one effect.
- `GET /health` reports whether the database is reachable and its schema current.

Handlers are plain functions: FastAPI runs them in its thread pool, and the database and the
rules engine (one lock) are safe to use from there.
"""

from __future__ import annotations

import hashlib
import html
import logging
import time
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from activities.channels.unsubscribe import InvalidUnsubscribeToken, read_unsubscribe_token
from crmflow.formats import Event
from crmflow.ingest import StoredEvents, store_chunk
from crmflow.processing import ConcurrentProcessing
from crmflow.settings import Settings
from rules.source import RuleFileError
from store.db import utcnow
from store.ingest import WriteCounts
from store.migrate import current_revision, head_revision

log = logging.getLogger(__name__)

CHUNK_SIZE = 5000


class EventsReport(BaseModel):
    """What `POST /events` did with the events it received."""

    received: int = Field(description="events in the request")
    accepted: int = Field(description="events stored now (new event ids)")
    duplicates: int = Field(
        description="events whose event_id was stored already (or repeated in the request): "
        "no second effect"
    )
    processed: int = Field(description="accepted events run through the active rules")
    rules_fired: int = 0
    rules_version: str | None = Field(None, description="the rules version that ran them")
    unprocessed: int = Field(
        0, description="accepted events stored without rules: no rules version is deployed yet"
    )
    seconds: float = 0.0


class InvalidEvents(BaseModel):
    """422: the request was refused whole; nothing of it was stored."""

    detail: list[dict[str, Any]] = Field(
        description="pydantic's errors; `loc` is `[body, field]`, or `[body, index, field]` "
        "in a list"
    )
    message: str = Field(description="the same, one readable line per problem")


def accept_events(
    engine: Engine, rows: list[dict[str, Any]], *, chunk_size: int = CHUNK_SIZE
) -> EventsReport:
    """Store validated events (`Event.model_dump()` dicts) and run the new ones through the
    active rules, one transaction per chunk; events already stored are counted as duplicates.

    A chunk that races another writer of the same event ids (two requests with the same
    events at once) is rolled back and tried again: the second try finds them stored.
    """
    started = time.perf_counter()
    total = StoredEvents(WriteCounts())
    for start in range(0, len(rows), chunk_size):
        got = store_chunk(engine, rows[start : start + chunk_size])
        total.add(got)
    return EventsReport(
        received=len(rows),
        seconds=round(time.perf_counter() - started, 3),
        accepted=total.counts.inserted,
        duplicates=total.counts.unchanged,
        processed=total.processed,
        rules_fired=total.rules_fired,
        rules_version=total.rules_version,
        unprocessed=total.unprocessed,
    )


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


# --- validation errors -----------------------------------------------------------------

_BRANCHES = {"Event": False, "list[Event]": True}  # union member in pydantic's loc -> is a list


def _branch_errors(errors: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Pydantic's errors for the body as sent: a body that is one event gets the errors of
    the one-event reading only, a list those of the list reading, without the union's tag in
    `loc` (`["body", 1, "type"]`, not `["body", "list[Event]", 1, "type"]`)."""
    if not isinstance(body, dict | list):
        return errors
    is_list = isinstance(body, list)
    kept = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if len(loc) > 1 and loc[0] == "body" and loc[1] in _BRANCHES:
            if _BRANCHES[loc[1]] != is_list:
                continue
            err = {**err, "loc": ("body", *loc[2:])}
        kept.append(err)
    return kept or errors


def _describe(errors: list[dict[str, Any]], is_list: bool) -> str:
    """One line per problem naming the event and field, like `describe_errors`."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        msg = str(err.get("msg", ""))
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing":
            msg = "required field is missing"
        prefix = ""
        if is_list and loc and loc[0].isdigit():
            prefix, loc = f"event {loc[0]}: ", loc[1:]
        where = ".".join(loc)
        parts.append(f"{prefix}field '{where}': {msg}" if where else f"{prefix}{msg}")
    return "; ".join(parts)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = exc.body
    errors = _branch_errors(list(exc.errors()), body)
    return JSONResponse(
        {
            "detail": jsonable_encoder(errors),
            "message": _describe(errors, isinstance(body, list)),
        },
        status_code=422,
    )


# --- the app -----------------------------------------------------------------------------

EventsBody = Annotated[
    Event | list[Event],
    Body(
        description="One event, or a list of events (stored in one request; a list with an "
        "invalid event is refused whole)",
        examples=[
            {
                "event_id": "pos-20261120-0001",
                "customer_id": "C1",
                "type": "purchase",
                "occurred_at": "2026-11-20T10:00:00+08:00",
                "properties": {"amount": 268.0, "store": "SH-01"},
            }
        ],
    ),
]


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """The HTTP API on `engine` (a migrated database) with `settings`."""
    app = FastAPI(
        title="crmflow",
        summary="Customer events in, unsubscribe links, health.",
        version="1",
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    secret = settings.unsubscribe_secret.get_secret_value()

    @app.post(
        "/events",
        response_model=EventsReport,
        responses={422: {"model": InvalidEvents}},
        tags=["events"],
    )
    def post_events(events: EventsBody) -> EventsReport | JSONResponse:
        """Store events and run them through the active rules, as `crmflow events import`
        does. Idempotent by `event_id`: the same event twice has one effect."""
        batch = events if isinstance(events, list) else [events]
        try:
            return accept_events(engine, [e.model_dump() for e in batch])
        except RuleFileError as exc:
            log.error("the active rules version does not load: %s", exc)
            return JSONResponse(
                {"detail": f"the active rules version does not load: {exc}"}, status_code=500
            )
        except ConcurrentProcessing as exc:
            return JSONResponse({"detail": f"{exc}; send the request again"}, status_code=503)

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse, tags=["unsubscribe"])
    def unsubscribe_page(token: str) -> HTMLResponse:
        """A page asking to confirm (a GET changes nothing: link scanners follow GETs)."""
        try:
            found = read_unsubscribe_token(secret, token)
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

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse, tags=["unsubscribe"])
    async def unsubscribe(token: str, request: Request) -> HTMLResponse:
        """Unsubscribe: the page's button, or RFC 8058 one-click (`List-Unsubscribe=One-Click`
        in the form body). Any POST to a valid link unsubscribes: the token is the proof."""
        try:
            found = read_unsubscribe_token(secret, token)
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
            done = await run_in_threadpool(accept_events, engine, [event.model_dump()])
        except (RuleFileError, ConcurrentProcessing):
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

    @app.get("/health", tags=["health"])
    def health() -> JSONResponse:
        """`{"ok": true, "database": {...}}` when the database answers at the current schema."""
        try:
            revision = current_revision(engine)
        except Exception as exc:  # unreachable, refused, no schema: not healthy either way
            log.warning("health: the database does not answer: %s", exc)
            return JSONResponse(
                {
                    "ok": False,
                    "database": {"dialect": engine.dialect.name, "error": type(exc).__name__},
                },
                status_code=503,
            )
        head = head_revision()
        ok = revision == head
        return JSONResponse(
            {
                "ok": ok,
                "database": {
                    "dialect": engine.dialect.name,
                    "revision": revision,
                    "head": head,
                },
            },
            status_code=200 if ok else 503,
        )

    return app
