"""The hostile corpus over HTTP, against a real uvicorn server on SQLite and PostgreSQL: every
poisonous value is a 422 naming the field (or a 413 for a body too large), never a 500, and
nothing of the request is stored; YAML and template bombs are refused with their line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from store.models import EventRow
from tests.api_helpers import ApiServer
from tests.rules_helpers import REPO, deploy_dir

HOSTILE = Path(__file__).with_name("hostile")
PROGRAM = (Path(__file__).resolve().parents[1] / "examples" / "program.yaml").read_text()
GOOD = {
    "event_id": "api-h-1",
    "customer_id": "AH1",
    "type": "sign_in",
    "occurred_at": "2026-11-20T10:00:00+08:00",
    "properties": {"channel": "app"},
}

POISON: list[tuple[str, dict[str, Any] | str, str]] = [
    ("year 1 at +14:00", GOOD | {"occurred_at": "0001-01-01T00:00:00+14:00"}, "occurred_at"),
    ("year 9999", GOOD | {"occurred_at": "9999-12-31T23:59:59-14:00"}, "occurred_at"),
    ("a number as time", GOOD | {"occurred_at": 1_732_000_000}, "occurred_at"),
    ("NUL in a property", GOOD | {"properties": {"note": "a\u0000b"}}, "properties"),
    ("NUL in the id", GOOD | {"event_id": "x\u0000"}, "event_id"),
    ("a 50 KB property", GOOD | {"properties": {"note": "x" * 50_000}}, "properties"),
    ("a list as id", GOOD | {"customer_id": ["AH1"]}, "customer_id"),
    ("NaN amount", json.dumps(GOOD).replace('"app"', "NaN"), "properties"),
    ("Infinity amount", json.dumps(GOOD).replace('"app"', "-Infinity"), "properties"),
    ("deep nesting", json.dumps(GOOD).replace('"app"', "[" * 5_000 + "]" * 5_000), "body"),
]


def _stored(api_server: ApiServer) -> int:
    with api_server.runtime.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(EventRow)).scalar_one())


@pytest.mark.parametrize(("what", "body", "field"), POISON, ids=[p[0] for p in POISON])
def test_a_poisonous_event_is_a_422_naming_the_field(
    api_server: ApiServer, what: str, body: dict[str, Any] | str, field: str
) -> None:
    before = _stored(api_server)
    content = body if isinstance(body, str) else json.dumps(body)
    with api_server.client("ingest") as http:
        for path, payload in (
            ("/api/v1/events", content),
            ("/api/v1/events/batch", f"[{content}]"),
        ):
            r = http.post(path, content=payload, headers={"Content-Type": "application/json"})
            # JSON nested past the parser's depth is a 400 "error parsing the body"
            expected = 400 if what == "deep nesting" else 422
            assert r.status_code == expected, (what, path, r.status_code, r.text)
            assert field in r.text, (what, r.text)
    assert _stored(api_server) == before


def test_a_body_too_large_is_a_413_and_never_read_whole(api_server: ApiServer) -> None:
    huge = "[" + ",".join([json.dumps(GOOD)] * 200_000) + "]"  # about 30 MB
    with api_server.client("ingest") as http:
        r = http.post(
            "/api/v1/events/batch", content=huge, headers={"Content-Type": "application/json"}
        )
    assert r.status_code == 413, r.text


@pytest.mark.parametrize("bomb", sorted((HOSTILE / "yaml").glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_bombs_sent_to_the_api_are_refused_with_their_line(
    api_server: ApiServer, bomb: Path
) -> None:
    text = bomb.read_text()
    deploy_dir(api_server.runtime.engine, REPO / "examples/rules")
    started = time.monotonic()
    with api_server.client("admin") as http:
        rules = http.post(
            "/api/v1/rules/validate", json={"program": PROGRAM, "files": {"r.yaml": text}}
        )
        journey = http.post("/api/v1/journeys/validate", json={"yaml": text})
        segment = http.post("/api/v1/segments/preview", json={"condition": text})
    assert time.monotonic() - started < 10
    for r in (rules, journey, segment):
        assert r.status_code == 422, (r.request.url, r.status_code, r.text)
        assert "refused" in r.text, r.text


@pytest.mark.parametrize("bomb", sorted((HOSTILE / "templates").glob("*.j2")), ids=lambda p: p.stem)
def test_a_journey_with_a_template_bomb_is_refused_over_the_api(
    api_server: ApiServer, bomb: Path
) -> None:
    journey = {
        "journey": "hostile",
        "entry": {"event": "sign_in"},
        "channels": ["sms"],
        "start": "m",
        "nodes": {
            "m": {
                "type": "message",
                "channel": "sms",
                "template": {"text": bomb.read_text()},
                "next": "done",
            },
            "done": {"type": "exit"},
        },
    }
    deploy_dir(api_server.runtime.engine, REPO / "examples/rules")
    started = time.monotonic()
    with api_server.client("admin") as http:
        r = http.post("/api/v1/journeys/validate", json={"yaml": json.dumps(journey)})
    assert time.monotonic() - started < 10
    assert r.status_code == 422, r.text
    assert "refused" in r.text or "does not render" in r.text, r.text
