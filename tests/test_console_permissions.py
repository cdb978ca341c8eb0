"""Every console route against every role and no session, over a real uvicorn server (both
databases). The routes are enumerated from the console's routers, so a page or form without
a declared permission fails here, and so does a role that gets through where the permission
table says it may not; a form without the session's CSRF token is refused for every role."""

from __future__ import annotations

import re

import httpx
from fastapi.routing import APIRoute

from crmflow.console import auth, pages
from crmflow.console.web import BASE, ConsolePermission
from crmflow.services.permissions import PERMISSIONS, Role, allowed
from tests.console_helpers import ConsoleServer, csrf_of


def _permission(route: APIRoute) -> ConsolePermission | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, ConsolePermission):
            return dep.call
        stack.extend(dep.dependencies)
    return None


def console_routes() -> list[tuple[str, str, ConsolePermission | None]]:
    """(method, path, permission) of every console route but sign-in itself."""
    out = []
    for router in [*pages.routers(), auth.router]:
        for route in router.routes:
            assert isinstance(route, APIRoute), route
            if route.path == "/login":
                continue
            for method in sorted(route.methods or ()):
                out.append((method, BASE + route.path, _permission(route)))
    return out


def test_every_console_route_declares_a_known_permission() -> None:
    routes = console_routes()
    assert len(routes) >= 20
    assert [f"{m} {p}" for m, p, d in routes if d is None] == []
    assert all(d is not None and d.action in PERMISSIONS for _, _, d in routes)
    # a GET never needs a form; every POST does (and so its CSRF token)
    assert all(d is not None and d.form == (m == "POST") for m, _, d in routes)


def _call(http: httpx.Client, method: str, path: str, csrf: str | None) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "x", path)
    if method == "GET":
        return http.get(url)
    return http.post(url, data={"csrf_token": csrf} if csrf else {})


def test_every_console_route_for_every_role_and_no_session(
    console_server: ConsoleServer,
) -> None:
    """No session: to the sign-in page. A role without the permission: 403. A role with it:
    neither (a dummy id may be not found or invalid, never a 500). A form without the
    CSRF token: 403 for every role."""
    routes = console_routes()
    with httpx.Client(base_url=console_server.base, timeout=60) as http:
        for method, path, _ in routes:
            r = _call(http, method, path, None)
            assert r.status_code == 303, (method, path, r.status_code)
            assert r.headers["location"].startswith(f"{BASE}/login")
    for role in Role:
        with console_server.signed_in(role) as http:
            csrf = csrf_of(http.get(f"{BASE}/").text)
            for method, path, dep in routes:
                assert dep is not None
                if path == f"{BASE}/logout":
                    continue  # it would end this session; tested in test_console_auth
                r = _call(http, method, path, csrf)
                where = (role.value, method, path, r.status_code, r.text[:300])
                if allowed(role, dep.action):
                    assert r.status_code not in (401, 403), where
                    assert r.status_code < 500 or r.status_code == 503, where
                else:
                    assert r.status_code == 403, where
                if method == "POST":
                    forged = _call(http, method, path, None)
                    assert forged.status_code == 403, (role.value, path, forged.status_code)
