"""Every route of the API against every role and no token, over a real uvicorn server.

The routes are enumerated from the app, so a route without a declared permission fails
here, and so does a role that gets through where the permission table says it may not.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import Engine, select, update

from crmflow.api.app import PREFIX, ROUTERS
from crmflow.api.security import Permission
from crmflow.services.keys import NewKey, create_key, revoke_key
from crmflow.services.permissions import PERMISSIONS, Role, allowed
from crmflow.services.runtime import Runtime
from store.db import utcnow
from store.models import ApiKeyRow, ChangeLogRow
from store.sql import table_of
from tests.api_helpers import ApiServer, make_settings, serve
from tests.conftest import free_port


def _permission(route: APIRoute) -> str | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Permission):
            return dep.call.action
        stack.extend(dep.dependencies)
    return None


def api_routes() -> list[tuple[str, str, str | None]]:
    """(method, path, action) of every route under /api/v1."""
    out = []
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute), route
            for method in sorted(route.methods or ()):
                out.append((method, PREFIX + route.path, _permission(route)))
    return out


def test_every_route_declares_a_known_permission() -> None:
    routes = api_routes()
    assert len(routes) >= 10
    undeclared = [f"{m} {p}" for m, p, a in routes if a is None]
    assert undeclared == [], f"routes without a permission: {undeclared}"
    unknown = [a for _, _, a in routes if a not in PERMISSIONS]
    assert unknown == []


def test_a_permission_not_in_the_table_cannot_be_declared() -> None:
    with pytest.raises(KeyError, match="undeclared action"):
        Permission("customers.everything")


def _call(http: httpx.Client, method: str, path: str) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "x", path)
    body: Any = [] if url.endswith("/batch") else {}
    if method in ("GET", "DELETE", "HEAD"):
        return http.request(method, url)
    return http.request(method, url, json=body)


def test_every_route_for_every_role_and_no_token(api_server: ApiServer) -> None:
    """No token: 401. A role without the permission: 403. A role with it: neither (the
    dummy path and body may still be refused as not found or invalid, never with a 500)."""
    routes = api_routes()
    with api_server.anonymous() as http:
        for method, path, _ in routes:
            r = _call(http, method, path)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
    with httpx.Client(
        base_url=api_server.base, headers={"Authorization": "Bearer crm_nope_nope"}
    ) as http:
        for method, path, _ in routes[:5]:
            assert _call(http, method, path).status_code == 401
    for role in Role:
        with api_server.client(role) as http:
            for method, path, action in routes:
                assert action is not None
                r = _call(http, method, path)
                where = (role.value, method, path, r.status_code, r.text[:300])
                if allowed(role, action):
                    assert r.status_code not in (401, 403), where
                    assert r.status_code < 500 or r.status_code == 503, where
                else:
                    assert r.status_code == 403, where
                    assert action in r.json()["detail"]


def test_revoked_and_expired_keys_stop_working(api_server: ApiServer, engine: Engine) -> None:
    rt = api_server.runtime
    made = create_key(rt, NewKey(name="short-lived", role=Role.viewer))
    headers = {"Authorization": f"Bearer {made.token}"}
    with httpx.Client(base_url=api_server.base, headers=headers) as http:
        assert http.get("/api/v1/health").status_code == 200
        # a wrong secret with the right key id
        wrong = made.token[:-3] + ("AAA" if not made.token.endswith("AAA") else "BBB")
        assert (
            http.get("/api/v1/health", headers={"Authorization": f"Bearer {wrong}"}).status_code
            == 401
        )
        with engine.begin() as conn:
            t = table_of(ApiKeyRow)
            conn.execute(
                update(t)
                .where(t.c.key_id == made.key_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        assert http.get("/api/v1/health").status_code == 401
        with engine.begin() as conn:
            conn.execute(update(t).where(t.c.key_id == made.key_id).values(expires_at=None))
        assert http.get("/api/v1/health").status_code == 200
        revoke_key(rt, "short-lived")
        r = http.get("/api/v1/health")
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]


def test_changes_are_written_to_the_change_log_with_who_and_where(
    api_server: ApiServer, engine: Engine
) -> None:
    with api_server.client("marketer", person="Li Na") as http:
        r = http.put("/api/v1/customers/C1", json={"customer_id": "C1", "name": "Zhang Wei"})
        assert r.status_code == 200, r.text
        http.get("/api/v1/customers/C1")  # reads are not changes
    with api_server.client("viewer") as http:
        assert http.post("/api/v1/customers/C1/tags", json={"tag": "vip"}).status_code == 403
    with engine.connect() as conn:
        rows = conn.execute(select(table_of(ChangeLogRow)).order_by(ChangeLogRow.id)).all()
    assert [(r.method, r.target, r.status, r.action) for r in rows] == [
        ("PUT", "/api/v1/customers/C1", 200, "customers.write"),
        ("POST", "/api/v1/customers/C1/tags", 403, "customers.tag"),
    ]
    first = rows[0]
    assert first.person == "Li Na"
    assert first.role == "marketer"
    assert first.actor.startswith("key:")
    assert first.address == "127.0.0.1"
    assert "Zhang" not in str(tuple(first))  # no bodies, no personal data
    with api_server.client("admin") as http:
        listed = http.get("/api/v1/audit").json()
    assert [c["target"] for c in listed][:2] == [
        "/api/v1/customers/C1/tags",
        "/api/v1/customers/C1",
    ]


def test_the_rate_limit_answers_429_with_retry_after(
    engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    rt = Runtime(make_settings(tmp_path, api_rate_limit="3/minute"), engine)
    for base in serve(rt, port):
        server = ApiServer(base, rt)
        with server.client("viewer") as http:
            codes = [http.get("/api/v1/health").status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            r = http.get("/api/v1/health")
            assert r.status_code == 429
            assert 1 <= int(r.headers["Retry-After"]) <= 60
        with server.client("admin") as http:  # another key has its own budget
            assert http.get("/api/v1/health").status_code == 200
