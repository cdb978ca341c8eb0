"""What every console page shares: who is signed in, the permission a page or form needs,
the CSRF check, rendering with the layout, flash notices and redirects after a change.

- `page("customers.read")` as a route dependency gives the `Viewer` (principal, CSRF token)
  or sends the browser to the sign-in page (303) — 403 when the role may not;
- `form("customers.tag")` does the same for a POST and refuses (403) a form without the
  session's CSRF token; the change is written to the audit log by the API's ChangeLog
  middleware, as for an API call (the principal is a `user:` actor);
- `render(request, viewer, "customers/list.html", ...)` renders inside `base.html`, with
  `may(action)` (show a control only to roles that may use it), `csrf_field()` and the
  navigation the role may see;
- `done(request, url, message)` / `refused(request, url, message)` redirect (303) after a
  change, with a one-time notice shown on the next page.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import get_runtime
from crmflow.services.errors import ServiceError
from crmflow.services.keys import Principal
from crmflow.services.permissions import PERMISSIONS, allowed
from crmflow.services.users import Session, session_of

HERE = Path(__file__).parent
BASE = "/console"
SESSION_COOKIE = "crmflow_session"
FLASH_COOKIE = "crmflow_flash"
CSRF_FIELD = "csrf_token"
T = TypeVar("T")

# (label, path, the permission that shows it)
NAVIGATION: list[tuple[str, str, str]] = [
    ("Overview", f"{BASE}/", "health.read"),
    ("Customers", f"{BASE}/customers", "customers.read"),
    ("Journeys", f"{BASE}/journeys", "journeys.read"),
    ("Projects", f"{BASE}/projects", "projects.read"),
    ("Tags", f"{BASE}/tags", "customers.read"),
    ("Automations", f"{BASE}/automations", "schedules.read"),
    ("Rules", f"{BASE}/rules", "rules.read"),
]

templates = Jinja2Templates(directory=HERE / "templates")


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return value.strftime(fmt) if value is not None else "-"


templates.env.filters["number"] = _number
templates.env.filters["when"] = _when


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page, then back."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class Forbidden(Exception):
    """The signed-in role may not do this (or the form's CSRF token is missing or wrong)."""

    def __init__(self, message: str) -> None:
        self.message = message


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a request."""

    principal: Principal
    csrf_token: str

    def may(self, action: str) -> bool:
        return allowed(self.principal.role, action)


async def session(request: Request) -> Session | None:
    """The request's live session, looked up once per request."""
    if not hasattr(request.state, "console_session"):
        token = request.cookies.get(SESSION_COOKIE, "")
        found = await run_in_threadpool(session_of, get_runtime(request), token) if token else None
        request.state.console_session = found
    found_session: Session | None = request.state.console_session
    return found_session


def _next_url(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


async def _viewer(request: Request, action: str) -> Viewer:
    found = await session(request)
    if found is None:
        raise SignInRequired(_next_url(request) if request.method == "GET" else BASE + "/")
    who = found.principal
    request.state.principal = who  # for the audit log (ChangeLog middleware)
    request.state.action = action
    if not allowed(who.role, action):
        raise Forbidden(f"role {who.role.value!r} may not {action}")
    return Viewer(who, found.csrf_token)


class ConsolePermission:
    """The dependency behind `page` and `form`: callable by FastAPI, and introspectable
    (`action`, `form`) so a test can enumerate every console route's permission."""

    def __init__(self, action: str, *, form: bool) -> None:
        if action not in PERMISSIONS:
            raise KeyError(f"undeclared action {action!r}: add it to PERMISSIONS")
        self.action = action
        self.form = form

    async def __call__(self, request: Request) -> Viewer:
        viewer = await _viewer(request, self.action)
        if self.form:
            sent = (await request.form()).get(CSRF_FIELD)
            if not isinstance(sent, str) or not secrets.compare_digest(sent, viewer.csrf_token):
                raise Forbidden("the form has no valid CSRF token: reload the page and try again")
        return viewer


def page(action: str) -> Any:
    """A GET page's dependency: the `Viewer`, when signed in with a role that may `action`."""
    return Depends(ConsolePermission(action, form=False))


def form(action: str) -> Any:
    """A POST form's dependency: as `page`, and the form must carry the session's CSRF token."""
    return Depends(ConsolePermission(action, form=True))


def url(path: str = "") -> str:
    return f"{BASE}/{path.lstrip('/')}"


def render(
    request: Request,
    viewer: Viewer | None,
    template: str,
    *,
    status_code: int = 200,
    title: str = "",
    **context: Any,
) -> HTMLResponse:
    """`template` inside the layout, with the navigation and helpers for `viewer`."""
    notice = request.cookies.get(FLASH_COOKIE)
    kind, _, text = unquote(notice or "").partition(":")
    csrf = viewer.csrf_token if viewer else ""
    response = templates.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer,
            "who": viewer.principal if viewer else None,
            "title": title,
            "nav": [
                (label, href) for label, href, action in NAVIGATION if viewer and viewer.may(action)
            ],
            "may": (lambda action: viewer.may(action)) if viewer else (lambda action: False),
            "csrf_token": csrf,
            "csrf_field": lambda: Markup(
                f'<input type="hidden" name="{CSRF_FIELD}" value="{csrf}">'
            ),
            "notice": (kind, text) if text else None,
            "url": url,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
    )
    if notice:
        response.delete_cookie(FLASH_COOKIE, path=BASE)
    return response


def _redirect(request: Request, to: str, kind: str, message: str) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(
        FLASH_COOKIE,
        quote(f"{kind}:{message[:500]}"),
        path=BASE,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
        max_age=60,
    )
    return response


def done(request: Request, to: str, message: str) -> RedirectResponse:
    """303 to `to`, showing `message` there as done."""
    return _redirect(request, to, "ok", message)


def refused(request: Request, to: str, message: str) -> RedirectResponse:
    """303 to `to`, showing `message` there as refused."""
    return _redirect(request, to, "error", message)


async def act(
    request: Request,
    back: str,
    change: Callable[[], T],
    message: Callable[[T], str] | str,
) -> RedirectResponse:
    """Run a service change in a thread; redirect to `back` with what it did, or with the
    service's refusal (a ServiceError says why, as the CLI and API do)."""
    try:
        result = await run_in_threadpool(change)
    except ServiceError as exc:
        return refused(request, back, str(exc))
    return done(request, back, message(result) if callable(message) else message)


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    if request.url.scheme == "https" or forwarded == "https":
        return True
    rt = get_runtime(request)
    return str(rt.settings.public_base_url).startswith("https://")


def error_page(request: Request, status_code: int, title: str, message: str) -> HTMLResponse:
    found = getattr(request.state, "console_session", None)
    viewer = Viewer(found.principal, found.csrf_token) if isinstance(found, Session) else None
    return render(
        request,
        viewer,
        "error.html",
        status_code=status_code,
        title=title,
        message=message,
    )


Handler = Callable[[Request, Exception], Awaitable[Any]]
