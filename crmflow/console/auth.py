"""Sign-in and sign-out pages.

Sign-in takes a user name and password (`crmflow users create`), limited per name and per
address (`console_sign_in_limit`, 429 above); a wrong name and a wrong password get the same
answer. The sign-in form carries its own CSRF token (a cookie and a hidden field that must
match), so another site cannot sign a browser in as someone else. The session cookie is
HttpOnly, SameSite=Lax, limited to /console, and Secure under HTTPS.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import RateLimits, get_runtime
from crmflow.console.web import (
    BASE,
    CSRF_FIELD,
    SESSION_COOKIE,
    Viewer,
    done,
    form,
    is_https,
    render,
    session,
)
from crmflow.services.users import sign_in, sign_out

router = APIRouter()
LOGIN_CSRF_COOKIE = "crmflow_login_csrf"


def _safe_next(value: str | None) -> str:
    """Only a console path: never another site (`//evil`, `https://…`)."""
    if value and value.startswith(BASE) and not value.startswith("//") and "\\" not in value:
        return value
    return f"{BASE}/"


def _login_page(
    request: Request, next_url: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        None,
        "login.html",
        title="Sign in",
        next_url=next_url,
        login_csrf=token,
        error=error,
        status_code=status_code,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path=BASE,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        max_age=3600,
    )
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    if await session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, _safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    name: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=1000)],
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    target = _safe_next(next)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return _login_page(request, target, "The form was out of date: sign in again.", 403)
    limits: RateLimits = request.app.state.sign_in_limits
    address = request.client.host if request.client else "-"
    for key in (f"sign-in:name:{name.casefold()}", f"sign-in:address:{address}"):
        wait = limits.retry_after(key)
        if wait is not None:
            response = _login_page(
                request, target, f"Too many sign-in attempts: wait {wait} s and try again.", 429
            )
            response.headers["Retry-After"] = str(wait)
            return response
    found = await run_in_threadpool(sign_in, get_runtime(request), name.strip(), password)
    if found is None:
        return _login_page(request, target, "Wrong user name or password.", 401)
    signed_in = done(request, target, f"Signed in as {found.principal.name}.")
    signed_in.set_cookie(
        SESSION_COOKIE,
        found.token,
        path=BASE,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )
    signed_in.delete_cookie(LOGIN_CSRF_COOKIE, path=BASE)
    return signed_in


@router.post("/logout")
async def logout(request: Request, viewer: Annotated[Viewer, form("health.read")]) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    await run_in_threadpool(sign_out, get_runtime(request), token)
    response = done(request, f"{BASE}/login", "Signed out.")
    response.delete_cookie(SESSION_COOKIE, path=BASE)
    return response
