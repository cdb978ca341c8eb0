"""`GET /api/v1/overview` (a real server, both databases): the console overview's store
panels as JSON, each only for a role that may read its area, the same figures as the page."""

from __future__ import annotations

from pathlib import Path

from crmflow.ingest import import_file
from tests.api_helpers import ApiServer

REPO = Path(__file__).resolve().parents[1]
STORE_PANELS = ("members", "points", "events", "journeys", "automations")


def test_the_overview_gives_each_role_its_panels(api_server: ApiServer) -> None:
    engine = api_server.runtime.engine
    import_file(engine, REPO / "examples" / "customers.jsonl", "customers")
    import_file(engine, REPO / "examples" / "events.jsonl", "events")
    with api_server.client("admin") as http:
        everything = http.get("/api/v1/overview")
    assert everything.status_code == 200, everything.text
    body = everything.json()
    for panel in STORE_PANELS:
        assert body[panel] is not None, panel
    assert body["events"]["total"] >= 0 and len(body["events"]["days"]) == 30
    with api_server.client("project_manager") as http:
        pm = http.get("/api/v1/overview").json()
    assert all(pm[p] is None for p in ("members", "points", "events", "journeys"))
    with api_server.client("ingest") as http:
        ingest = http.get("/api/v1/overview").json()
    assert all(
        ingest[p] is None for p in ("members", "points", "events", "journeys", "automations")
    )
    with api_server.anonymous() as http:
        assert http.get("/api/v1/overview").status_code == 401
