"""`/api/v1/journeys` over a real uvicorn server, on SQLite and PostgreSQL: who may do what,
validate and deploy YAML text, show, status changes, stats (the same data as the CLI's
`--json`), the funnel chart, enrollments and a simulation."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner

from crmflow.cli import app
from tests.api_helpers import ApiServer
from tests.rules_helpers import REPO, deploy_dir
from tests.test_journey_stats import seed_promo

BASE = "/api/v1/journeys"
SIMPLE = """
journey: simple
entry: rule
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template: {subject: "Hi", text: "hello"}
    next: wait
  wait: {type: delay, duration: 2d, next: done}
  done: {type: exit}
"""


def test_roles(api_server: ApiServer) -> None:
    with api_server.client("viewer") as http:
        assert http.get(BASE).status_code == 200
        assert http.post(f"{BASE}/validate", json={"yaml": SIMPLE}).status_code == 403
        assert http.post(f"{BASE}/nope/pause").status_code == 403
    with api_server.client("project_manager") as http:
        assert http.get(BASE).status_code == 403
    with api_server.anonymous() as http:
        assert http.get(BASE).status_code == 401


def test_validate_deploy_show_and_status(api_server: ApiServer) -> None:
    with api_server.client("marketer") as http:
        r = http.post(f"{BASE}/validate", json={"yaml": SIMPLE})
        assert r.status_code == 409 and "rules version" in r.json()["detail"]
        deploy_dir(api_server.runtime.engine, REPO / "examples/rules")
        r = http.post(f"{BASE}/validate", json={"yaml": SIMPLE})
        assert r.status_code == 200, r.text
        assert r.json()["journey"] == "simple" and r.json()["entry"] == {"kind": "rule"}
        bad = SIMPLE.replace("channel: email", "channel: fax")
        r = http.post(f"{BASE}/validate", json={"yaml": bad})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        (problem,) = r.json()["errors"]
        assert problem["field"] == "yaml.nodes.hi" and problem["reason"].startswith("line 9: ")
        assert http.post(f"{BASE}/validate", json={"yaml": ""}).status_code == 422
        too_big = {"yaml": "#" * 200_001}
        assert http.post(f"{BASE}/validate", json=too_big).status_code == 422
        assert http.post(BASE, json={"yaml": bad}).status_code == 422
        assert http.get(BASE).json() == []

        r = http.post(BASE, json={"yaml": SIMPLE})
        assert r.status_code == 200, r.text
        deployed = r.json()
        assert deployed["new"] and deployed["segment"] is None
        assert http.post(BASE, json={"yaml": SIMPLE}).json()["new"] is False
        (item,) = http.get(BASE).json()
        assert (item["journey"], item["status"]) == ("simple", "active")
        detail = http.get(f"{BASE}/simple").json()
        assert [n["id"] for n in detail["nodes"]] == ["hi", "wait", "done"]
        assert {(e["source"], e["target"]) for e in detail["edges"]} == {
            ("hi", "wait"),
            ("wait", "done"),
        }
        (version,) = detail["versions"]
        assert version["active"] and version["origin"].startswith("api:test-marketer")
        assert http.get(f"{BASE}/other").status_code == 404
        assert http.get(f"{BASE}/Not%20A%20Name").status_code == 422

        r = http.post(f"{BASE}/simple/pause")
        assert r.status_code == 200 and r.json()["before"] == "active"
        assert http.get(f"{BASE}/simple").json()["status"] == "paused"
        assert http.post(f"{BASE}/simple/resume").json()["status"] == "active"
        assert http.post(f"{BASE}/simple/archive").json()["status"] == "archived"
        assert http.post(f"{BASE}/other/pause").status_code == 404


def test_stats_match_the_cli_and_the_funnel_and_enrollments(
    api_server: ApiServer, cli_env: Path, engine: Engine
) -> None:
    _, v2 = seed_promo(engine)
    result = CliRunner().invoke(app, ["journeys", "stats", "promo", "--json"])
    assert result.exit_code == 0, result.output
    from_cli = json.loads(result.stdout)
    with api_server.client("viewer") as http:
        r = http.get(f"{BASE}/promo/stats")
        assert r.status_code == 200
        from_api = r.json()
        assert from_api["active_version"] == v2
        from_cli.pop("generated_at"), from_api.pop("generated_at")
        assert from_api == from_cli

        r = http.get(f"{BASE}/promo/funnel.svg")
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        assert 'data-node="mail"' in r.text
        ET.fromstring(r.text)
        assert http.get(f"{BASE}/nope/stats").status_code == 404
        assert http.get(f"{BASE}/nope/funnel.svg").status_code == 404

        r = http.get(f"{BASE}/promo/enrollments")
        assert r.status_code == 200 and r.json()["total"] == 15
        r = http.get(f"{BASE}/promo/enrollments", params={"status": "active", "node": "pause"})
        assert [(e["customer_id"], e["node"]) for e in r.json()["enrollments"]] == [("A4", "pause")]
        r = http.get(f"{BASE}/promo/enrollments", params={"limit": 3})
        assert len(r.json()["enrollments"]) == 3 and r.json()["total"] == 15
        for params in ({"limit": 0}, {"limit": 10_001}, {"status": "sleeping"}, {"node": "X Y"}):
            assert http.get(f"{BASE}/promo/enrollments", params=params).status_code == 422
        assert http.get(f"{BASE}/nope/enrollments").status_code == 404


def test_simulate_the_deployed_journey(api_server: ApiServer) -> None:
    deploy_dir(api_server.runtime.engine, REPO / "examples/rules")
    body = {
        "customer": {"customer_id": "C1", "email": "c1@example.com", "consent": {"email": True}},
        "until_days": 3,
        "no_quiet_hours": True,
    }
    with api_server.client("marketer") as http:
        assert http.post(f"{BASE}/simple/simulate", json=body).status_code == 404
        assert http.post(BASE, json={"yaml": SIMPLE}).status_code == 200
        r = http.post(f"{BASE}/simple/simulate", json=body)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["outcome"] == "completed" and report["sent"] == 1
        assert [p["node"] for p in report["path"]] == ["hi", "wait", "done"]
        other = {**body, "yaml": SIMPLE.replace("journey: simple", "journey: other")}
        r = http.post(f"{BASE}/simple/simulate", json=other)
        assert r.status_code == 422 and "not 'simple'" in r.json()["detail"]
        r = http.post(f"{BASE}/simple/simulate", json={**body, "until_days": 401})
        assert r.status_code == 422
        r = http.post(f"{BASE}/simple/simulate", json={**body, "customer": {"name": "x"}})
        assert r.status_code == 422
