"""The web console (a face): server-rendered pages under /console for marketers, project
managers and operators, over the same service layer, roles and audit log as the API.

`install(app)` adds the sign-in pages, every page module of `crmflow.console.pages`, the
static files (CSS and a pinned htmx, shipped in the package: nothing is fetched at run time)
and the console's error pages and security headers.
"""

from __future__ import annotations

import inspect
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmflow.api.security import RateLimits
from crmflow.console import auth, pages
from crmflow.console.web import BASE, HERE, Forbidden, SignInRequired, error_page

SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-store",
}


class ConsoleHeaders:
    """ASGI middleware: the console's answers carry a strict CSP and are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(BASE) or path.startswith(f"{BASE}/static/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k not in SECURITY_HEADERS
                ]
                message["headers"] = headers + list(SECURITY_HEADERS.items())
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """Serve the console from `app` (the API's application) under /console."""
    rt = app.state.runtime
    app.state.sign_in_limits = RateLimits(
        rt.settings.console_sign_in_limit, rt.settings.api_rate_limit_storage
    )
    app.include_router(auth.router, prefix=BASE, include_in_schema=False)
    for router in pages.routers():
        app.include_router(router, prefix=BASE, include_in_schema=False)
    app.mount(f"{BASE}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_middleware(ConsoleHeaders)
    api_http_error = app.exception_handlers.get(StarletteHTTPException)

    async def sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return RedirectResponse(f"{BASE}/login?next={quote(exc.next_url)}", status_code=303)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Forbidden)
        return error_page(request, 403, "Not allowed", exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(BASE):
            title = "Not found" if exc.status_code == 404 else "Error"
            return error_page(request, exc.status_code, title, str(exc.detail))
        assert api_http_error is not None
        response = api_http_error(request, exc)
        return await response if inspect.isawaitable(response) else response

    api_invalid = app.exception_handlers.get(RequestValidationError)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith(BASE):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:]) or 'form'}: {e['msg']}"
                for e in exc.errors()
            )
            return error_page(request, 422, "Not accepted", problems)
        assert api_invalid is not None
        response = api_invalid(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(SignInRequired, sign_in_required)
    app.add_exception_handler(Forbidden, forbidden)
    app.add_exception_handler(StarletteHTTPException, http_error)
