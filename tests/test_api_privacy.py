"""`GET /customers/{id}/export` and `POST /customers/{id}/erase` over a real uvicorn server,
on SQLite and PostgreSQL: who may, what comes back, and what an erased id does to later
requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from crmflow.services.audit import privacy_log
from crmflow.services.runtime import Runtime
from store.models import ChangeLogRow, CustomerRow
from store.sql import table_of
from tests.api_helpers import ApiServer, make_settings, serve
from tests.conftest import free_port
from tests.test_privacy import OTHER, SECRETS, WHO, WORKFLOW, absent, closed_address, seed


@pytest.fixture
def server(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    """The API with the seeded customers, Temporal not running."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    settings = make_settings(
        tmp_path, f"http://127.0.0.1:{port}", temporal_address=closed_address()
    )
    seed(engine, tmp_path, settings)
    rt = Runtime(settings, engine)
    for base in serve(rt, port):
        yield ApiServer(base, rt)


def test_operator_exports_admin_erases_and_the_export_after_holds_nothing_of_the_person(
    server: ApiServer, engine: Engine
) -> None:
    with server.client("operator", person="Zhou Jie") as http:
        r = http.get(f"/api/v1/customers/{WHO}/export")
        assert r.status_code == 200, r.text
        assert absent(r.text, SECRETS) == SECRETS
        doc = r.json()
        assert doc["profile"]["email"] == "wang.fang@example.com"
        assert doc["journeys"]["temporal"]["reachable"] is False
        refused = http.post(f"/api/v1/customers/{WHO}/erase")
        assert refused.status_code == 403
        assert "customers.erase" in refused.json()["detail"]
    for role in ("marketer", "viewer", "ingest", "project_manager"):
        with server.client(role) as http:
            assert http.get(f"/api/v1/customers/{WHO}/export").status_code == 403
            assert http.post(f"/api/v1/customers/{WHO}/erase").status_code == 403

    with server.client("admin", person="Li Na") as http:
        plan = http.post(f"/api/v1/customers/{WHO}/erase", params={"dry_run": "true"})
        assert plan.status_code == 200, plan.text
        assert plan.json()["dry_run"] is True and plan.json()["enrollments_ended"] == [WORKFLOW]
        with engine.connect() as conn:
            name = conn.execute(select(CustomerRow.name).where(CustomerRow.customer_id == WHO))
            assert name.scalar() == "Wang Fang"  # a dry run changes nothing
        done = http.post(f"/api/v1/customers/{WHO}/erase")
        assert done.status_code == 200, done.text
        report = done.json()
        assert report["dry_run"] is False and report["erased_at"]
        assert report["rows"]["customers"] == 1 and report["enrollments_ended"] == [WORKFLOW]
        assert report["temporal"]["reachable"] is False

    with server.client("operator") as http:
        after = http.get(f"/api/v1/customers/{WHO}/export")
        assert after.status_code == 200
        assert absent(after.text, SECRETS) == []
        assert after.json()["erased_at"] is not None

    # the change log has the erasure's request; the privacy log has who did what, how much
    with engine.connect() as conn:
        changes = [
            (r.method, r.target, r.status, r.action)
            for r in conn.execute(select(table_of(ChangeLogRow)).order_by(ChangeLogRow.id))
        ]
    assert (
        "POST",
        f"/api/v1/customers/{WHO}/erase",
        200,
        "customers.erase",
    ) in changes
    log = privacy_log(server.runtime, customer_id=WHO)
    assert [(r.action, r.person, r.role) for r in log] == [
        ("export", None, "operator"),
        ("erase", "Li Na", "admin"),
        ("export", "Zhou Jie", "operator"),
    ]
    assert log[1].actor.startswith("key:") and log[1].tables["events"] >= 1
    assert absent(json.dumps([r.model_dump(mode="json") for r in log]), SECRETS) == []


def test_an_unknown_or_bad_id_is_a_clear_404_or_422_never_a_500(server: ApiServer) -> None:
    with server.client("admin") as http:
        for r in (
            http.get("/api/v1/customers/nobody/export"),
            http.post("/api/v1/customers/nobody/erase"),
            http.post("/api/v1/customers/nobody/erase", params={"dry_run": "true"}),
        ):
            assert r.status_code == 404, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["detail"] == "no customer with id 'nobody'"
        bad = http.get("/api/v1/customers/a%00b/export")
        assert bad.status_code == 422, bad.text
        assert bad.json()["errors"][0]["field"] == "customer_id"
        long = http.post("/api/v1/customers/" + "x" * 201 + "/erase")
        assert long.status_code == 422
    assert privacy_log(server.runtime) == []


def test_requests_naming_an_erased_customer_are_rejected_per_row(server: ApiServer) -> None:
    with server.client("admin") as http:
        assert http.post(f"/api/v1/customers/{WHO}/erase").status_code == 200
    with server.client("ingest") as http:
        r = http.put(f"/api/v1/customers/{WHO}", json={"customer_id": WHO, "name": "Wang Fang"})
        assert r.status_code == 409, r.text
        assert f"customer '{WHO}' was erased on" in r.json()["detail"]
        event = {"type": "sign_in", "occurred_at": "2026-11-20T10:00:00+08:00"}
        r = http.post("/api/v1/events", json={"event_id": "api-0", "customer_id": WHO, **event})
        assert r.status_code == 409, r.text
        assert f"customer '{WHO}' was erased on" in r.json()["detail"]
        batch = [
            {"event_id": "api-1", "customer_id": OTHER, **event},
            {"event_id": "api-2", "customer_id": WHO, **event},
        ]
        r = http.post("/api/v1/events/batch", json=batch)
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["stored"], report["rejected"]) == (1, 1)
        assert report["faults"][0]["at"] == 1
        assert "field 'customer_id'" in report["faults"][0]["reason"]
    with server.client("operator") as http:
        profile = http.get(f"/api/v1/customers/{WHO}/export").json()["profile"]
    assert profile["name"] is None
