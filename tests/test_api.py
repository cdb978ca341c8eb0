"""The HTTP API against a real uvicorn server on a free port, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from activities.channels.unsubscribe import make_unsubscribe_token, unsubscribe_url
from crmflow.api.routes.unsubscribe import unsubscribe_event_id
from crmflow.cli import app as cli_app
from store.models import EventRow, PointsLedgerRow
from store.profiles import load_profile
from tests.api_helpers import UNSUBSCRIBE_SECRET, ApiServer
from tests.rules_helpers import REPO, deploy_dir, event, import_rows, points

SECRET = UNSUBSCRIBE_SECRET


def ledger_rows(engine: Engine, customer: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(PointsLedgerRow)
                .where(PointsLedgerRow.customer_id == customer)
            ).scalar_one()
        )


def stored_events(engine: Engine) -> list[tuple[str, str, str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                EventRow.event_id, EventRow.customer_id, EventRow.type, EventRow.properties
            ).order_by(EventRow.id)
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def consent(engine: Engine, customer: str) -> dict[str, bool]:
    with engine.connect() as conn:
        profile = load_profile(conn, customer)
    assert profile is not None
    return profile.consent


# --- POST /events --------------------------------------------------------------------


def test_events_are_stored_and_run_through_the_rules_once(
    engine: Engine, api_server: ApiServer
) -> None:
    version = deploy_dir(engine, REPO / "examples/rules")
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events", json=event(1, "C1", amount=300))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["received"] == 1
        assert body["stored"] == 1
        assert body["duplicates"] == 0
        assert body["processed"] == 1
        assert body["rules_fired"] >= 1
        assert body["rules_version"] == version
        assert body["unprocessed"] == 0
        assert ledger_rows(engine, "C1") == 1
        earned = points(engine, "C1")
        assert earned[1] > 0

        # the same event again: counted as a duplicate, no second effect
        r = http.post("/api/v1/events", json=event(1, "C1", amount=300))
        assert r.status_code == 200, r.text
        assert r.json() | {"seconds": 0} == {
            "kind": "events",
            "source": "api",
            "received": 1,
            "rejected": 0,
            "stored": 0,
            "updated": 0,
            "duplicates": 1,
            "faults": [],
            "rejects_file": None,
            "processed": 0,
            "rules_fired": 0,
            "conflicts": 0,
            "rules_version": version,
            "unprocessed": 0,
            "seconds": 0,
        }
        assert ledger_rows(engine, "C1") == 1
        assert points(engine, "C1") == earned

        # a list: a stored one, a repeat inside the list, and a new one
        batch = [event(1, "C1", amount=300), event(2, "C1", amount=50), event(2, "C1", amount=50)]
        r = http.post("/api/v1/events/batch", json=batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["received"], body["stored"], body["duplicates"], body["processed"]) == (
            3,
            1,
            2,
            1,
        )
    assert ledger_rows(engine, "C1") == 2
    assert [e[0] for e in stored_events(engine)] == ["e1", "e2"]


def test_the_same_event_sent_at_once_by_many_clients_has_one_effect(
    engine: Engine, api_server: ApiServer
) -> None:
    deploy_dir(engine, REPO / "examples/rules")

    def send(_: int) -> dict[str, Any]:
        with api_server.client("ingest") as http:
            r = http.post("/api/v1/events/batch", json=[event(7, "C7", amount=120)])
            assert r.status_code == 200, r.text
            return dict(r.json())

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, range(6)))
    assert sum(r["stored"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 5
    assert sum(r["processed"] for r in results) == 1
    assert ledger_rows(engine, "C7") == 1


def test_events_without_a_rules_version_are_stored_for_later(
    engine: Engine, api_server: ApiServer
) -> None:
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events/batch", json=[event(1, "C1"), event(2, "C2", "sign_in")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["stored"], body["processed"], body["unprocessed"]) == (2, 0, 2)
    assert body["rules_version"] is None
    assert len(stored_events(engine)) == 2


def test_an_invalid_event_is_refused_naming_the_field(
    engine: Engine, api_server: ApiServer
) -> None:
    no_zone = event(1, "C1") | {"occurred_at": "2026-11-01T10:00:00"}
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events", json=no_zone)
        assert r.status_code == 422
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert [e["field"] for e in body["errors"]] == ["body.occurred_at"]
        assert "time zone" in body["errors"][0]["reason"]
        assert body["detail"].startswith("body.occurred_at: timestamp has no time zone")

        # in a batch: the index and the field; the valid event beside it is not stored either
        bad = {"event_id": "e9", "customer_id": "C1", "type": "Purchase", "colour": "red"}
        r = http.post("/api/v1/events/batch", json=[event(2, "C1"), bad])
        assert r.status_code == 422
        body = r.json()
        fields = {e["field"]: e["reason"] for e in body["errors"]}
        assert set(fields) == {"body.1.type", "body.1.occurred_at", "body.1.colour"}
        assert fields["body.1.colour"] == "unknown field"
        assert fields["body.1.occurred_at"] == "required field is missing"

        r = http.post(
            "/api/v1/events", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422
        assert r.json()["title"] == "Invalid input"
    assert stored_events(engine) == []


def test_an_event_id_reused_with_other_content_is_a_conflict(
    engine: Engine, api_server: ApiServer
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    with api_server.client("ingest") as http:
        assert http.post("/api/v1/events", json=event(1, "C1", amount=300)).status_code == 200
        r = http.post("/api/v1/events", json=event(1, "C1", amount=999))
        assert r.status_code == 409, r.text
        assert "properties" in r.json()["detail"]
        # in a batch: listed, not applied, and not counted as a duplicate
        r = http.post(
            "/api/v1/events/batch",
            json=[event(1, "C1", amount=300), event(1, "C2", amount=300), event(3, "C1")],
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["stored"], body["duplicates"]) == (1, 1)
        assert body["conflicts"] == 1
        assert [(f["at"], f["problem"], f["event_id"], f["differs"]) for f in body["faults"]] == [
            (1, "conflict", "e1", ["customer_id"])
        ]
    assert ledger_rows(engine, "C1") == 1
    assert ledger_rows(engine, "C2") == 0


def test_a_batch_over_the_limit_and_a_body_over_the_limit_are_refused(
    engine: Engine, api_server: ApiServer
) -> None:
    limit = api_server.settings.api_max_batch
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events/batch", json=[event(i, "C1") for i in range(limit + 1)])
        assert r.status_code == 413, r.text
        assert f"at most {limit}" in r.json()["detail"]
        big = b"[" + b" " * api_server.settings.api_max_body_bytes + b"]"
        r = http.post(
            "/api/v1/events/batch", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
    assert stored_events(engine) == []


# --- unsubscribe ---------------------------------------------------------------------


def customer_with_consent(engine: Engine, tmp_path: Path, customer: str) -> None:
    row = {"customer_id": customer, "email": "li@example.com", "consent": {"email": True}}
    report = import_rows(engine, tmp_path / "customers.jsonl", [row], kind="customers")
    assert report.stored == 1
    assert consent(engine, customer) == {"email": True}


def test_the_unsubscribe_page_asks_and_changes_nothing(
    engine: Engine, api_server: ApiServer
) -> None:
    token = make_unsubscribe_token(SECRET, "C1", "email", "welcome")
    url = unsubscribe_url(api_server.settings.public_base_url, token)
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert '<form method="post">' in r.text
    assert "<button" in r.text and "Unsubscribe" in r.text
    assert "marketing e-mail" in r.text
    assert stored_events(engine) == []


def test_unsubscribing_revokes_the_channels_consent(
    engine: Engine, api_server: ApiServer, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    customer_with_consent(engine, tmp_path, "C1")
    token = make_unsubscribe_token(SECRET, "C1", "email", "welcome")
    url = unsubscribe_url(api_server.settings.public_base_url, token)

    r = httpx.post(url, data={"confirm": "yes"})  # the page's button
    assert r.status_code == 200, r.text
    assert "You are unsubscribed" in r.text
    events = stored_events(engine)
    assert len(events) == 1
    event_id, customer, type_, properties = events[0]
    assert event_id == unsubscribe_event_id(token)
    assert event_id.startswith("unsubscribe:")
    assert (customer, type_) == ("C1", "unsubscribed")
    assert properties["channel"] == "email"
    assert properties["journey"] == "welcome"
    assert consent(engine, "C1").get("email") is False

    # the link used again: the same page, no second event
    r = httpx.post(url, data={"confirm": "yes"})
    assert r.status_code == 200
    assert "You are unsubscribed" in r.text
    assert len(stored_events(engine)) == 1


def test_one_click_unsubscribe(engine: Engine, api_server: ApiServer, tmp_path: Path) -> None:
    """RFC 8058: the mail client POSTs `List-Unsubscribe=One-Click` to the link."""
    deploy_dir(engine, REPO / "examples/rules")
    customer_with_consent(engine, tmp_path, "C2")
    token = make_unsubscribe_token(SECRET, "C2", "email")
    url = unsubscribe_url(api_server.settings.public_base_url, token)
    for _ in range(2):
        r = httpx.post(
            url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200, r.text
    events = stored_events(engine)
    assert len(events) == 1
    assert events[0][2] == "unsubscribed"
    assert events[0][3]["channel"] == "email"
    assert events[0][3]["journey"] is None
    assert events[0][3]["via"] == "one-click"
    assert consent(engine, "C2").get("email") is False


def test_a_tampered_or_foreign_token_is_refused(engine: Engine, api_server: ApiServer) -> None:
    token = make_unsubscribe_token(SECRET, "C1", "email", "welcome")
    payload, _, signature = token.partition(".")
    other = make_unsubscribe_token(SECRET, "C2", "email", "welcome").partition(".")[0]
    forged = [
        f"{other}.{signature}",  # someone else's payload under this signature
        f"{payload}.{signature[:-2]}AA",
        make_unsubscribe_token("another-secret", "C1", "email"),
        "not-a-token",
    ]
    base = api_server.settings.public_base_url
    for bad in forged:
        url = unsubscribe_url(base, bad)
        r = httpx.get(url)
        assert r.status_code == 400, bad
        assert "does not work" in r.text
        r = httpx.post(url, content=b"List-Unsubscribe=One-Click")
        assert r.status_code == 400, bad
    assert stored_events(engine) == []


# --- health and schema ---------------------------------------------------------------


def test_health(engine: Engine, api_server: ApiServer) -> None:
    assert httpx.get(api_server.base + "/api/v1/health").status_code == 401
    with api_server.client("viewer") as http:
        r = http.get("/api/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True
    assert body["database"]["dialect"] == engine.dialect.name
    assert body["database"]["revision"] == body["database"]["head"]


def test_api_schema_comes_from_the_models(cli_env: Path) -> None:
    out = cli_env / "openapi.json"
    result = CliRunner().invoke(cli_app, ["api-schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    schema = json.loads(out.read_text())
    event_schema = schema["components"]["schemas"]["Event"]
    assert set(event_schema["required"]) == {"event_id", "customer_id", "type", "occurred_at"}
    assert event_schema["additionalProperties"] is False
    post = schema["paths"]["/api/v1/events"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/Event"
    assert {"401", "403", "409", "413", "422", "429"} <= set(post["responses"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
