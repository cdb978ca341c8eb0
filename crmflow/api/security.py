"""Who is calling and may they: bearer keys, the permission of each route, rate limits,
body-size limits and the change log.

Every route under `/api/v1` takes its caller through `permit(action)`: the token is checked
(401 without a valid one), the action against the key's role in the one permission table
(403), then the key's rate limit (429 with `Retry-After`). A change (any method but GET /
HEAD) is written to the change log when it has been answered, with its status.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmflow.api.problems import problem
from crmflow.services.audit import record_change
from crmflow.services.keys import Principal, authenticate
from crmflow.services.permissions import PERMISSIONS, allowed
from crmflow.services.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="An API key: `crmflow keys create`")

READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class RateLimits:
    """A moving-window limit per key (the `limits` library; `memory://` per process, or a
    shared store such as `redis://` for many API processes)."""

    def __init__(self, rate: str, storage: str) -> None:
        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage))

    def retry_after(self, key: str) -> int | None:
        """None when the request may go; otherwise the seconds to wait."""
        if self.limiter.hit(self.item, key):
            return None
        reset = self.limiter.get_window_stats(self.item, key).reset_time
        return max(1, math.ceil(reset - time.time()))


class Permission:
    """The dependency behind `permit`: callable by FastAPI, and introspectable (`action`)
    so a test can enumerate every route's permission."""

    def __init__(self, action: str) -> None:
        if action not in PERMISSIONS:
            raise KeyError(f"undeclared action {action!r}: add it to PERMISSIONS")
        self.action = action

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        rt = get_runtime(request)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                "send an API key as `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        who = await run_in_threadpool(authenticate, rt, credentials.credentials)
        if who is None:
            raise HTTPException(
                401,
                "the API key is unknown, revoked or expired",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        request.state.principal = who
        request.state.action = self.action
        if not allowed(who.role, self.action):
            raise HTTPException(403, f"role {who.role.value!r} may not {self.action}")
        limits: RateLimits = request.app.state.rate_limits
        wait = limits.retry_after(who.actor)
        if wait is not None:
            raise HTTPException(
                429,
                f"more than {limits.item} requests for this key: wait {wait} s",
                headers={"Retry-After": str(wait)},
            )
        return who


def permit(action: str) -> Any:
    """`who: Annotated[Principal, permit("customers.read")]` in a route's parameters."""
    return Depends(Permission(action))


def may(who: Principal, action: str) -> bool:
    """For a route that shows more to some roles (e.g. unmasked e-mail)."""
    return allowed(who.role, action)


class ChangeLog:
    """ASGI middleware: after a change is answered, write who made it to the change log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READ_METHODS:
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            # written before the answer goes out: a caller that has its answer finds the
            # change in the log
            if message["type"] == "http.response.start":
                await self._record(scope, int(message["status"]))
            await send(message)

        await self.app(scope, receive, watch)

    async def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        who = state.get("principal")
        if not isinstance(who, Principal):
            return  # no valid key: nothing was changed by anyone we know
        client = scope.get("client")
        rt: Runtime = scope["app"].state.runtime
        await run_in_threadpool(
            record_change,
            rt,
            who,
            action=str(state.get("action", "")),
            method=scope["method"],
            target=scope["path"],
            status=status,
            address=client[0] if client else None,
        )


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` (declared or streamed) gets 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Too large", f"the request body is over {self.max_bytes} bytes")
        await response(scope, receive, send)
