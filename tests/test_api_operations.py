"""`/api/v1/tasks` and `/api/v1/outbox` over a real uvicorn server (SQLite and PostgreSQL):
permissions per role, filters and paging, closing twice, masked addresses."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine

from crmflow.services import permissions
from crmflow.services.permissions import Role
from tests.api_helpers import ApiServer
from tests.test_services_operations import seed_outbox, seed_tasks


def test_tasks_are_listed_paged_and_closed(engine: Engine, api_server: ApiServer) -> None:
    seed_tasks(engine)
    with api_server.client("viewer") as http:
        r = http.get("/api/v1/tasks", params={"status": "open", "owner": "amy"})
        assert r.status_code == 200, r.text
        tasks = r.json()["tasks"]
        assert len(tasks) == 4 and {t["owner"] for t in tasks} == {"amy"}
        ids: list[int] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 4}
            if cursor:
                params["cursor"] = cursor
            page = http.get("/api/v1/tasks", params=params).json()
            ids += [t["id"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(ids) == len(set(ids)) == 10
        bad = http.get("/api/v1/tasks", params={"cursor": "nonsense"})
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert http.get("/api/v1/tasks", params={"limit": 501}).status_code == 422
        assert http.get("/api/v1/tasks", params={"status": "later"}).status_code == 422
        # a viewer reads and may not close
        assert http.post(f"/api/v1/tasks/{tasks[0]['id']}/close").status_code == 403
    with api_server.client("project_manager") as http:
        assert http.get("/api/v1/tasks").status_code == 403
    with api_server.client("operator") as http:
        first = http.post(f"/api/v1/tasks/{tasks[0]['id']}/close")
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "done"
        again = http.post(f"/api/v1/tasks/{tasks[0]['id']}/close")
        assert again.status_code == 200 and again.json() == first.json()
        missing = http.post("/api/v1/tasks/999999/close")
        assert missing.status_code == 404
        assert "no follow-up task 999999" in missing.json()["detail"]
        assert http.post("/api/v1/tasks/0/close").status_code == 422
    with api_server.client("admin") as http:
        changes = http.get("/api/v1/audit").json()
    closes = [c for c in changes if c["target"] == f"/api/v1/tasks/{tasks[0]['id']}/close"]
    # the change log says who closed it (and who was refused)
    assert sorted((c["role"], c["status"]) for c in closes) == [
        ("operator", 200),
        ("operator", 200),
        ("viewer", 403),
    ]
    assert {c["action"] for c in closes} == {"tasks.write"}


def test_the_outbox_is_read_by_operators_with_addresses(
    engine: Engine, api_server: ApiServer
) -> None:
    seed_outbox(engine)
    with api_server.client("operator") as http:
        r = http.get("/api/v1/outbox", params={"channel": "email"})
        assert r.status_code == 200, r.text
        assert [m["address"] for m in r.json()["messages"]] == [
            "bob@example.org",
            "alice@example.com",
        ]
        page = http.get("/api/v1/outbox", params={"limit": 2}).json()
        older = http.get(
            "/api/v1/outbox", params={"before_id": page["next_before_id"], "limit": 10}
        ).json()
        keys = [m["dedupe_key"] for m in page["messages"] + older["messages"]]
        assert keys == ["k4", "k3", "k2", "k1", "k0"]
        assert http.get("/api/v1/outbox", params={"channel": "x" * 33}).status_code == 422
    for role in ("viewer", "marketer"):
        with api_server.client(role) as http:
            assert http.get("/api/v1/outbox").status_code == 403


def test_outbox_addresses_are_masked_without_customers_pii(
    engine: Engine, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no role of the table reads the outbox without `customers.pii`: lend one the read
    roles, what = permissions.PERMISSIONS["outbox.read"]
    monkeypatch.setitem(permissions.PERMISSIONS, "outbox.read", (roles | {Role.viewer}, what))
    seed_outbox(engine)
    with api_server.client("viewer") as http:
        messages = http.get("/api/v1/outbox").json()["messages"]
    by_key = {m["dedupe_key"]: m for m in messages}
    assert by_key["k0"]["address"] == "a***@example.com"
    assert by_key["k1"]["address"] == "+86*******1234"
    # the unsubscribe link acts for the customer: its token is never served
    assert by_key["k0"]["headers"]["List-Unsubscribe"] == "<https://x/unsubscribe/…>"
    assert "secret-token" not in json.dumps(messages)
