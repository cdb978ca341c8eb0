"""Customers through the API and the service: search, the 360 view, upsert, tags by hand;
the CLI and the API give the same 360 view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from crmflow.cli import app as cli_app
from crmflow.services import customers as service
from crmflow.services.errors import Invalid, NotFound
from crmflow.services.runtime import Runtime
from store.models import AuditRow, TagRow
from tests.api_helpers import ApiServer
from tests.rules_helpers import REPO, deploy_dir, event, import_rows

PEOPLE = [
    {
        "customer_id": "C1",
        "name": "Wang Fang",
        "email": "wang@example.com",
        "phone": "+86 139 1234 5678",
    },
    {"customer_id": "C2", "name": "Li Na", "email": "li@example.com", "lifecycle_stage": "member"},
    {"customer_id": "C3", "name": "Zhang Wang", "email": "zhang@example.com"},
]


def test_search_filters_and_pages(api_server: ApiServer) -> None:
    with api_server.client("marketer") as http:
        r = http.post("/api/v1/customers/batch", json=PEOPLE)
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 3
        got = http.get("/api/v1/customers", params={"name": "wang"}).json()
        assert [c["customer_id"] for c in got["customers"]] == ["C1", "C3"]
        assert got["customers"][0]["phone"] == "+8613912345678"
        got = http.get("/api/v1/customers", params={"email": "LI@example.com"}).json()
        assert [c["customer_id"] for c in got["customers"]] == ["C2"]
        got = http.get("/api/v1/customers", params={"stage": "member"}).json()
        assert [c["customer_id"] for c in got["customers"]] == ["C2"]
        page1 = http.get("/api/v1/customers", params={"limit": 2}).json()
        assert [c["customer_id"] for c in page1["customers"]] == ["C1", "C2"]
        page2 = http.get("/api/v1/customers", params={"limit": 2, "after": page1["next"]}).json()
        assert [c["customer_id"] for c in page2["customers"]] == ["C3"]
        assert page2["next"] is None
        # a wildcard in the query is a literal character, not a pattern
        assert http.get("/api/v1/customers", params={"name": "%"}).json()["customers"] == []


def test_the_viewer_sees_contact_details_masked(api_server: ApiServer) -> None:
    with api_server.client("marketer") as http:
        assert http.post("/api/v1/customers/batch", json=PEOPLE).status_code == 200
    with api_server.client("viewer") as http:
        listed = http.get("/api/v1/customers", params={"customer_id": "C1"}).json()
        one = http.get("/api/v1/customers/C1").json()
    for shown in (listed["customers"][0], one):
        assert shown["email"] == "w***@example.com"
        assert shown["phone"].startswith("+86") and shown["phone"].endswith("5678")
        assert "1234" not in shown["phone"]
    assert one["name"] == "Wang Fang"


def test_the_360_view_has_points_tier_progress_events_and_tasks(
    engine: Engine, api_server: ApiServer, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "c.jsonl", PEOPLE[:1], kind="customers")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "C1", amount=300)])
    with api_server.client("marketer") as http:
        r = http.get("/api/v1/customers/C1")
        assert r.status_code == 200, r.text
        view = r.json()
        assert http.get("/api/v1/customers/nobody").status_code == 404
    assert view["customer_id"] == "C1"
    assert view["points"]["balance"] > 0
    assert view["points"]["earned"] == view["points"]["balance"]
    assert [e["event_id"] for e in view["recent_events"]] == ["e1"]
    progress = view["tier_progress"]
    assert progress["value"] == 300 or progress["metric"] == "points_earned"
    assert progress["next_tier"] is not None and progress["needed"] > 0
    assert view["journeys"] == [] and view["open_tasks"] == []


def test_the_cli_and_the_api_give_the_same_360_view(
    engine: Engine, api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "c.jsonl", PEOPLE, kind="customers")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "C2", amount=120)])
    monkeypatch.setenv("CRMFLOW_DATABASE_URL", str(engine.url.render_as_string(False)))
    monkeypatch.setenv("CRMFLOW_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli_app, ["customer", "show", "C2", "--json"])
    assert result.exit_code == 0, result.output
    with api_server.client("admin") as http:
        via_api = http.get("/api/v1/customers/C2").json()
    assert json.loads(result.stdout) == via_api


def test_upsert_refuses_the_whole_batch_naming_the_row_and_field(api_server: ApiServer) -> None:
    bad = [PEOPLE[0], {"customer_id": "C9", "email": "not-an-address"}]
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/customers/batch", json=bad)
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["body.1.email"]
        assert http.get("/api/v1/customers/C1").status_code == 403  # ingest cannot read
    with api_server.client("marketer") as http:
        assert http.get("/api/v1/customers/C1").status_code == 404  # nothing was written
        r = http.put("/api/v1/customers/C1", json={"customer_id": "C2"})
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "body.customer_id"


def test_phone_numbers_are_read_in_the_configured_region(
    engine: Engine, api_server: ApiServer
) -> None:
    rt = api_server.runtime
    us = rt.settings.model_copy(update={"default_phone_region": "US"})
    local = Runtime(us, engine)
    service.upsert_customers(local, [{"customer_id": "U1", "phone": "(201) 555-0123"}])
    view = service.customer_360(local, "U1", mask=False)
    assert view.phone == "+12015550123"
    with pytest.raises(Invalid, match=r"^0: field 'phone': not a valid phone number for region"):
        service.upsert_customers(rt, [{"customer_id": "U2", "phone": "(201) 555-01"}])


def test_tags_by_hand_are_recorded_as_manual_with_who(
    engine: Engine, api_server: ApiServer
) -> None:
    with api_server.client("marketer", person="Li Na") as http:
        assert http.post("/api/v1/customers/batch", json=PEOPLE).status_code == 200
        r = http.post("/api/v1/customers/C1/tags", json={"tag": "vip"})
        assert r.status_code == 200, r.text
        assert r.json()["action"] == "added"
        assert http.post("/api/v1/customers/C1/tags", json={"tag": "vip"}).json()["action"] == (
            "unchanged"
        )
        view = http.get("/api/v1/customers/C1").json()
        assert view["tags"] == [{"tag": "vip", "source": "manual:Li Na", "expires_at": None}]
        assert http.delete("/api/v1/customers/C1/tags/vip").json()["action"] == "removed"
        assert http.post("/api/v1/customers/nobody/tags", json={"tag": "vip"}).status_code == 404
        assert http.post("/api/v1/customers/C1/tags", json={"tag": "Bad Tag"}).status_code == 422
    with engine.connect() as conn:
        audit = conn.execute(
            select(AuditRow.kind, AuditRow.rule, AuditRow.detail).order_by(AuditRow.id)
        ).all()
        assert conn.execute(select(TagRow.tag)).all() == []
    assert [(a.kind, a.rule, a.detail) for a in audit] == [
        ("add_tag", "manual", {"tag": "vip", "by": "Li Na"}),
        ("remove_tag", "manual", {"tag": "vip", "by": "Li Na"}),
    ]
    with pytest.raises(NotFound):
        service.remove_tag(api_server.runtime, "nobody", "vip", by="x")
