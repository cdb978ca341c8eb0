"""Prometheus metrics scraped after real work: events posted to a real uvicorn server move
the API's counters at `/api/v1/metrics` (a key with `metrics.read` only); a real worker
(`worker.run_worker`, its metrics port on) runs automation runs on Temporal, and its port
shows the activities, a failure and the runs with their durations. SQLite and PostgreSQL.

Counters are process-wide, so every check compares a scrape after the work with one
before it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from temporalio.client import WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from crmflow.contracts.automations import AutomationInput, RunSummary
from crmflow.metrics import record_send
from crmflow.settings import Settings
from crmflow.worker_metrics import MetricsInterceptor, MetricsPortError
from tests.api_helpers import ApiServer
from tests.conftest import free_port
from tests.rules_helpers import REPO, deploy_dir, event
from worker import run_worker, workflow_runner
from workflows.automation import AutomationWorkflow
from workflows.registry import WORKFLOWS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_api(server: ApiServer) -> Samples:
    with server.client("operator") as http:
        r = http.get("/api/v1/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def test_the_api_counts_events_and_rules_and_serves_them_to_a_permitted_key(
    engine: Engine, api_server: ApiServer
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    before = scrape_api(api_server)
    with api_server.client("ingest") as http:
        batch = [event(1, "C1", amount=300), event(2, "C2", amount=1200)]
        r = http.post("/api/v1/events/batch", json=batch)
        assert r.status_code == 200, r.text
        fired = r.json()["rules_fired"]
        assert fired >= 2
        again = http.post("/api/v1/events/batch", json=[event(1, "C1", amount=300)])
        assert again.json()["duplicates"] == 1
        other = http.post("/api/v1/events", json=event(1, "C1", amount=301))
        assert other.status_code == 409
    after = scrape_api(api_server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    stored = "crmflow_events_ingested_total"
    assert moved(stored, via="api", outcome="stored") == 2
    assert moved(stored, via="api", outcome="duplicate") == 1
    assert moved(stored, via="api", outcome="conflict") == 1
    assert moved("crmflow_events_processed_total") == 2
    assert moved("crmflow_rules_fired_total") == fired

    # the metrics are for operators and admins; nobody else, and never without a key
    with api_server.anonymous() as http:
        assert http.get("/api/v1/metrics").status_code == 401
    for role in ("marketer", "ingest", "viewer", "project_manager"):
        with api_server.client(role) as http:
            assert http.get("/api/v1/metrics").status_code == 403
    with api_server.client("admin") as http:
        assert http.get("/api/v1/metrics").status_code == 200


def test_bounded_labels() -> None:
    """An outcome outside the documented set is counted as `other`, not as a new series."""
    record_send("email", "sent")
    record_send("email", "no-such-outcome")
    other = {"channel": "email", "outcome": "other"}
    assert REGISTRY.get_sample_value("crmflow_sends_total", other)
    assert (
        REGISTRY.get_sample_value(
            "crmflow_sends_total", {"channel": "email", "outcome": "no-such-outcome"}
        )
        is None
    )


async def _scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    return parse(r.text)


async def test_a_worker_serves_activity_and_automation_metrics(
    engine: Engine,
    db_url: str,
    ts_env: WorkflowEnvironment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    queue = f"metrics-{uuid.uuid4()}"
    settings = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        task_queue=queue,
        metrics_port=port,
        dispatch_interval_seconds=0.2,
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(ts_env.client, settings, stop))
    try:
        for _ in range(100):  # the port opens as the worker starts
            try:
                before = await _scrape(port)
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the worker's metrics port did not open")

        as_of = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
        wid = f"automation-metrics-{uuid.uuid4().hex[:8]}"
        done: RunSummary = await ts_env.client.execute_workflow(
            AutomationWorkflow.run,
            AutomationInput(schedule="nightly-tags", automation="tag_expiry", as_of=as_of),
            id=wid,
            task_queue=queue,
        )
        assert done.status == "completed"
        # a worker replaying the run's history (to take it over) counts nothing again
        history = await ts_env.client.get_workflow_handle(wid).fetch_history()
        runs = {"automation": "tag_expiry", "status": "completed"}
        counted = REGISTRY.get_sample_value("crmflow_automation_runs_total", runs)
        replayer = Replayer(
            workflows=WORKFLOWS,
            interceptors=[MetricsInterceptor()],
            workflow_runner=workflow_runner(),
            data_converter=pydantic_data_converter,
        )
        await replayer.replay_workflow(history)
        assert REGISTRY.get_sample_value("crmflow_automation_runs_total", runs) == counted
        with pytest.raises(WorkflowFailureError):  # refused at its first activity, for good
            await ts_env.client.execute_workflow(
                AutomationWorkflow.run,
                AutomationInput(schedule="typo", automation="no_such_automation", as_of=as_of),
                id=f"automation-metrics-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
        after = await _scrape(port)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for name in ("automation_begin", "automation_step", "automation_finish"):
        assert moved("crmflow_activities_total", activity=name, outcome="completed") >= 1, name
        assert moved("crmflow_activity_seconds_count", activity=name) >= 1, name
    assert (
        moved("crmflow_activity_failures_total", activity="automation_begin", kind="non_retryable")
        == 1
    )
    assert moved("crmflow_activities_total", activity="automation_begin", outcome="failed") == 1
    run_total = "crmflow_automation_runs_total"
    assert moved(run_total, automation="tag_expiry", status="completed") == 1
    assert moved(run_total, automation="no_such_automation", status="failed") == 1
    assert moved("crmflow_automation_run_seconds_count", automation="tag_expiry") == 1
    # the worker stopped: its port is closed again
    with pytest.raises(httpx.ConnectError):
        await _scrape(port)


async def test_a_taken_metrics_port_stops_the_worker_naming_the_setting(
    db_url: str, ts_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(home=tmp_path, database_url=db_url, metrics_port=port)
        with pytest.raises(MetricsPortError, match="CRMFLOW_METRICS_PORT"):
            await run_worker(ts_env.client, settings, asyncio.Event())


def test_several_api_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, what two processes counted is one scrape's sum."""
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    count = "from crmflow.metrics import record_processed; record_processed(3, 5)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, cwd=REPO)
    scrape = (
        "from crmflow.metrics import exposition; import sys; "
        "sys.stdout.write(exposition()[0].decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", scrape], env=env, check=True, cwd=REPO, capture_output=True
    )
    samples = parse(out.stdout.decode())
    assert value(samples, "crmflow_events_processed_total") == 6
    assert value(samples, "crmflow_rules_fired_total") == 10
