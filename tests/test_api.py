"""The HTTP API against a real uvicorn server on a free port, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from activities.channels.unsubscribe import make_unsubscribe_token, unsubscribe_url
from crmflow.api import create_app, unsubscribe_event_id
from crmflow.cli import app as cli_app
from crmflow.settings import Settings
from store.models import EventRow, PointsLedgerRow
from store.profiles import load_profile
from tests.conftest import free_port
from tests.rules_helpers import REPO, deploy_dir, event, import_rows, points

SECRET = "test-unsubscribe-secret"


@dataclass
class Server:
    base: str
    settings: Settings

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)


@pytest.fixture
def server(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """crmflow's API served by uvicorn in a background thread on a free port."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        home=tmp_path / "home",
        public_base_url=base,
        unsubscribe_secret=SECRET,
    )
    config = uvicorn.Config(
        create_app(engine, settings), host="127.0.0.1", port=port, log_level="warning"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the API server did not start")
        time.sleep(0.02)
    yield Server(base, settings)
    uv.should_exit = True
    thread.join(timeout=20)
    assert not thread.is_alive(), "the API server did not stop"


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


def test_events_are_stored_and_run_through_the_rules_once(engine: Engine, server: Server) -> None:
    version = deploy_dir(engine, REPO / "examples/rules")
    with server.client() as http:
        r = http.post("/events", json=event(1, "C1", amount=300))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["received"] == 1
        assert body["accepted"] == 1
        assert body["duplicates"] == 0
        assert body["processed"] == 1
        assert body["rules_fired"] >= 1
        assert body["rules_version"] == version
        assert body["unprocessed"] == 0
        assert ledger_rows(engine, "C1") == 1
        earned = points(engine, "C1")
        assert earned[1] > 0

        # the same event again: counted as a duplicate, no second effect
        r = http.post("/events", json=event(1, "C1", amount=300))
        assert r.status_code == 200, r.text
        assert r.json() | {"seconds": 0} == {
            "received": 1,
            "accepted": 0,
            "duplicates": 1,
            "processed": 0,
            "rules_fired": 0,
            "rules_version": version,
            "unprocessed": 0,
            "seconds": 0,
        }
        assert ledger_rows(engine, "C1") == 1
        assert points(engine, "C1") == earned

        # a list: a stored one, a repeat inside the list, and a new one
        batch = [event(1, "C1", amount=300), event(2, "C1", amount=50), event(2, "C1", amount=50)]
        r = http.post("/events", json=batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["received"], body["accepted"], body["duplicates"], body["processed"]) == (
            3,
            1,
            2,
            1,
        )
    assert ledger_rows(engine, "C1") == 2
    assert [e[0] for e in stored_events(engine)] == ["e1", "e2"]


def test_the_same_event_sent_at_once_by_many_clients_has_one_effect(
    engine: Engine, server: Server
) -> None:
    deploy_dir(engine, REPO / "examples/rules")

    def send(_: int) -> dict[str, Any]:
        with server.client() as http:
            r = http.post("/events", json=[event(7, "C7", amount=120)])
            assert r.status_code == 200, r.text
            return dict(r.json())

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, range(6)))
    assert sum(r["accepted"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 5
    assert sum(r["processed"] for r in results) == 1
    assert ledger_rows(engine, "C7") == 1


def test_events_without_a_rules_version_are_stored_for_later(
    engine: Engine, server: Server
) -> None:
    with server.client() as http:
        r = http.post("/events", json=[event(1, "C1"), event(2, "C2", "sign_in")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["processed"], body["unprocessed"]) == (2, 0, 2)
    assert body["rules_version"] is None
    assert len(stored_events(engine)) == 2


def test_an_invalid_event_is_refused_naming_the_field(engine: Engine, server: Server) -> None:
    no_zone = event(1, "C1") | {"occurred_at": "2026-11-01T10:00:00"}
    with server.client() as http:
        r = http.post("/events", json=no_zone)
        assert r.status_code == 422
        body = r.json()
        assert [e["loc"] for e in body["detail"]] == [["body", "occurred_at"]]
        assert "time zone" in body["detail"][0]["msg"]
        assert body["message"].startswith("field 'occurred_at': timestamp has no time zone")

        # in a list: the index and the field; the valid event beside it is not stored either
        bad = {"event_id": "e9", "customer_id": "C1", "type": "Purchase", "colour": "red"}
        r = http.post("/events", json=[event(2, "C1"), bad])
        assert r.status_code == 422
        body = r.json()
        locs = {tuple(e["loc"]): e["type"] for e in body["detail"]}
        assert locs == {
            ("body", 1, "type"): "value_error",
            ("body", 1, "occurred_at"): "missing",
            ("body", 1, "colour"): "extra_forbidden",
        }
        assert "event 1: field 'type'" in body["message"]
        assert "event 1: field 'colour': unknown field" in body["message"]

        r = http.post("/events", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["type"] == "json_invalid"
    assert stored_events(engine) == []


# --- unsubscribe ---------------------------------------------------------------------


def customer_with_consent(engine: Engine, tmp_path: Path, customer: str) -> None:
    row = {"customer_id": customer, "email": "li@example.com", "consent": {"email": True}}
    report = import_rows(engine, tmp_path / "customers.jsonl", [row], kind="customers")
    assert report.accepted == 1
    assert consent(engine, customer) == {"email": True}


def test_the_unsubscribe_page_asks_and_changes_nothing(engine: Engine, server: Server) -> None:
    token = make_unsubscribe_token(SECRET, "C1", "email", "welcome")
    url = unsubscribe_url(server.settings.public_base_url, token)
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert '<form method="post">' in r.text
    assert "<button" in r.text and "Unsubscribe" in r.text
    assert "marketing e-mail" in r.text
    assert stored_events(engine) == []


def test_unsubscribing_revokes_the_channels_consent(
    engine: Engine, server: Server, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    customer_with_consent(engine, tmp_path, "C1")
    token = make_unsubscribe_token(SECRET, "C1", "email", "welcome")
    url = unsubscribe_url(server.settings.public_base_url, token)

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


def test_one_click_unsubscribe(engine: Engine, server: Server, tmp_path: Path) -> None:
    """RFC 8058: the mail client POSTs `List-Unsubscribe=One-Click` to the link."""
    deploy_dir(engine, REPO / "examples/rules")
    customer_with_consent(engine, tmp_path, "C2")
    token = make_unsubscribe_token(SECRET, "C2", "email")
    url = unsubscribe_url(server.settings.public_base_url, token)
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


def test_a_tampered_or_foreign_token_is_refused(engine: Engine, server: Server) -> None:
    token = make_unsubscribe_token(SECRET, "C1", "email", "welcome")
    payload, _, signature = token.partition(".")
    other = make_unsubscribe_token(SECRET, "C2", "email", "welcome").partition(".")[0]
    forged = [
        f"{other}.{signature}",  # someone else's payload under this signature
        f"{payload}.{signature[:-2]}AA",
        make_unsubscribe_token("another-secret", "C1", "email"),
        "not-a-token",
    ]
    base = server.settings.public_base_url
    for bad in forged:
        url = unsubscribe_url(base, bad)
        r = httpx.get(url)
        assert r.status_code == 400, bad
        assert "does not work" in r.text
        r = httpx.post(url, content=b"List-Unsubscribe=One-Click")
        assert r.status_code == 400, bad
    assert stored_events(engine) == []


# --- health and schema ---------------------------------------------------------------


def test_health(engine: Engine, server: Server) -> None:
    r = httpx.get(server.base + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True
    assert body["database"]["dialect"] == engine.dialect.name
    assert body["database"]["revision"] == body["database"]["head"]


def test_api_schema_comes_from_the_event_model(cli_env: Path) -> None:
    out = cli_env / "openapi.json"
    result = CliRunner().invoke(cli_app, ["api-schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    schema = json.loads(out.read_text())
    event_schema = schema["components"]["schemas"]["Event"]
    assert set(event_schema["required"]) == {"event_id", "customer_id", "type", "occurred_at"}
    assert event_schema["additionalProperties"] is False
    body = schema["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    assert {"$ref": "#/components/schemas/Event"} in body["schema"]["anyOf"]
    assert "422" in schema["paths"]["/events"]["post"]["responses"]
    assert set(schema["paths"]) == {"/events", "/unsubscribe/{token}", "/health"}
