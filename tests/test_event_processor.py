"""Asynchronous accept (`Prefer: respond-async`) and the event processor that runs the stored
events through the rules afterwards, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from crmflow.api.routes.events import wants_async
from crmflow.event_processor import EventProcessor, processor_running, running_processor
from crmflow.services import events as service
from crmflow.services.runtime import Runtime
from store.models import CustomerRow, EventRow
from store.profiles import load_profile
from tests.api_helpers import ApiServer, make_settings
from tests.rules_helpers import REPO, deploy_dir, event, import_rows, points

ASYNC = {"Prefer": "respond-async"}


def wait_for(check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def tier(engine: Engine, customer: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(CustomerRow.tier).where(CustomerRow.customer_id == customer)
        ).scalar_one_or_none()


def unprocessed(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(EventRow.id).where(EventRow.processed_at.is_(None))).all())


def shopping(prefix: str, customers: int = 6, per_customer: int = 5) -> list[dict[str, Any]]:
    """Purchases of rising amounts, customers interleaved, days apart: enough to earn
    points, pass tier thresholds and fire the example rules' tags."""
    rows = []
    for day in range(per_customer):
        for c in range(customers):
            amount = 150 * (c + 1) * (day + 1)
            rows.append(
                event(
                    f"{prefix}-{c}-{day}",
                    f"{prefix}{c}",
                    at=f"2026-10-{day * 5 + 1:02d}T10:00:00+08:00",
                    amount=amount,
                )
            )
    return rows


def test_the_prefer_header_is_read_as_rfc_7240_says() -> None:
    assert wants_async("respond-async")
    assert wants_async("Respond-Async")
    assert wants_async("return=minimal, respond-async; foo=bar, wait=10")
    assert not wants_async(None)
    assert not wants_async("")
    assert not wants_async("handling=lenient")
    assert not wants_async("respond-asyncx")


def test_an_async_batch_is_stored_at_once_and_processed_like_a_synchronous_one(
    engine: Engine, api_server: ApiServer
) -> None:
    version = deploy_dir(engine, REPO / "examples/rules")
    later, now = shopping("A"), shopping("B")
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events/batch", json=later, headers=ASYNC)
        assert r.status_code == 202, r.text
        assert r.headers["Preference-Applied"] == "respond-async"
        body = r.json()
        assert (body["stored"], body["processed"], body["unprocessed"]) == (len(later), 0, 30)
        assert body["rules_fired"] == 0
        assert points(engine, "A0") == (0, 0)

        r = http.get("/api/v1/events/backlog")
        assert r.status_code == 200, r.text
        backlog = r.json()
        assert backlog["pending"] == len(later)
        assert backlog["rules_deployed"] is True
        assert backlog["processor_running"] is False
        assert backlog["oldest_received_at"] is not None

        # the same events again: duplicates, nothing new to process; one changed: a conflict
        changed = dict(later[3], properties={"amount": 1})
        r = http.post("/api/v1/events/batch", json=[later[0], changed], headers=ASYNC)
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["stored"], body["duplicates"], body["conflicts"]) == (0, 1, 1)
        assert body["faults"][0]["at"] == 1

        # the same shopping, other customers, the rules applied before the answer
        r = http.post("/api/v1/events/batch", json=now)
        assert r.status_code == 200, r.text
        assert r.json()["processed"] == len(now)

        with running_processor(engine, workers=1, chunk_size=7) as processor:
            wait_for(processor.holding.is_set)
            assert http.get("/api/v1/events/backlog").json()["processor_running"] is True
            wait_for(lambda: http.get("/api/v1/events/backlog").json()["pending"] == 0)
        assert processor.total.processed == len(later)
        assert processor.total.rules_version == version

    assert unprocessed(engine) == 0
    for c in range(6):
        assert points(engine, f"A{c}") == points(engine, f"B{c}")
        assert tier(engine, f"A{c}") == tier(engine, f"B{c}")
    assert points(engine, "A5")[0] > 0


def test_a_single_async_event_and_an_async_unsubscribe_take_effect_as_promised(
    engine: Engine, api_server: ApiServer, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(
        engine,
        tmp_path / "customers.jsonl",
        [{"customer_id": "C1", "email": "c1@example.com", "consent": {"email": True}}],
        "customers",
    )
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events", json=event(1, "C1", amount=300), headers=ASYNC)
        assert r.status_code == 202, r.text
        assert r.json()["unprocessed"] == 1
        r = http.post(
            "/api/v1/events",
            json=event(2, "C1", "unsubscribed", channel="email"),
            headers={"Prefer": "respond-async"},
        )
        assert r.status_code == 202, r.text
        # consent is taken away before any rule runs
        with engine.connect() as conn:
            profile = load_profile(conn, "C1")
        assert profile is not None and profile.consent["email"] is False
        # a conflicting single event is refused either way
        r = http.post("/api/v1/events", json=event(1, "C1", amount=301), headers=ASYNC)
        assert r.status_code == 409, r.text
    done = EventProcessor(engine, workers=1, chunk_size=100).drain()
    assert done.processed == 2
    assert points(engine, "C1")[0] > 0
    assert unprocessed(engine) == 0


def test_nothing_is_processed_while_no_rules_version_is_deployed(engine: Engine) -> None:
    rt = Runtime(make_settings(Path("/nonexistent")), engine)
    from crmflow.domain import Event

    report = service.store_events(
        rt, [Event.model_validate(e) for e in shopping("N", 2, 2)], process=False
    )
    assert report.unprocessed == 4
    processor = EventProcessor(engine, workers=1, chunk_size=10)
    assert processor.drain().processed == 0
    found = service.backlog(rt)
    assert (found.pending, found.rules_deployed, found.processor_running) == (4, False, False)
    deploy_dir(engine, REPO / "examples/rules")
    assert processor.drain().processed == 4
    assert service.backlog(rt).pending == 0


def test_worker_processes_keep_each_customers_order(engine: Engine, tmp_path: Path) -> None:
    """Two worker processes, chunks smaller than a customer's history: the result is the
    import's, customer by customer."""
    deploy_dir(engine, REPO / "examples/rules")
    rt = Runtime(make_settings(tmp_path), engine)
    from crmflow.domain import Event

    stored = shopping("P", customers=8, per_customer=6)
    report = service.store_events(rt, [Event.model_validate(e) for e in stored], process=False)
    assert report.unprocessed == len(stored)
    import_rows(engine, tmp_path / "q.jsonl", shopping("Q", customers=8, per_customer=6))
    processor = EventProcessor(engine, workers=2, chunk_size=5)
    try:
        done = processor.drain()
    finally:
        processor._stop_pool()
    assert done.processed == len(stored)
    assert unprocessed(engine) == 0
    for c in range(8):
        assert points(engine, f"P{c}") == points(engine, f"Q{c}")
        assert tier(engine, f"P{c}") == tier(engine, f"Q{c}")


def test_one_processor_per_database_works_and_a_second_takes_over(engine: Engine) -> None:
    first = EventProcessor(engine, workers=1, chunk_size=10).start()
    second = EventProcessor(engine, workers=1, chunk_size=10)
    try:
        wait_for(first.holding.is_set)
        assert processor_running(engine)
        second.start()
        time.sleep(0.5)
        assert not second.holding.is_set()
        first.stop()
        assert not first.holding.is_set()
        wait_for(second.holding.is_set, 10)
    finally:
        first.stop()
        second.stop()
    assert not processor_running(engine)


def test_events_process_follow_runs_until_interrupted(
    engine: Engine, db_url: str, cli_env: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    rt = Runtime(make_settings(cli_env), engine)
    from crmflow.domain import Event

    service.store_events(rt, [Event.model_validate(e) for e in shopping("F", 3, 2)], process=False)
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "crmflow"),
            "events",
            "process",
            "--follow",
            "--workers",
            "1",
        ],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: unprocessed(engine) == 0, 60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "processing stored events as they arrive" in out
    assert "processed 6 events" in out


@pytest.mark.parametrize("prefer", ["respond-async", None])
def test_an_invalid_batch_is_refused_whole_either_way(
    engine: Engine, api_server: ApiServer, prefer: str | None
) -> None:
    headers = {"Prefer": prefer} if prefer else {}
    bad = [event(1, "C1", amount=10), {"event_id": "x", "type": "purchase"}]
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events/batch", json=bad, headers=headers)
    assert r.status_code == 422, r.text
    assert unprocessed(engine) == 0
