"""Health over a real uvicorn server (SQLite and PostgreSQL) against the Temporal dev server:
`/api/v1/health` says degraded with no worker, ok once a real worker polls the task queue,
and names no address; with Temporal unreachable it says so, still 200 (the database
serves); the public probes answer a bare yes or no, 503 on a database without the schema."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.db import make_engine
from tests.api_helpers import ApiServer, make_settings, serve
from tests.conftest import free_port
from worker import build_worker


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))


def server(rt: Runtime) -> Iterator[ApiServer]:
    for base in serve(rt):
        yield ApiServer(base, rt)


def health(api: ApiServer) -> httpx.Response:
    with api.client("viewer") as http:
        return http.get("/api/v1/health")


async def test_health_follows_temporal_and_the_workers(
    engine: Engine, dev_env: WorkflowEnvironment, tmp_path: Path, no_config: None
) -> None:
    target = dev_env.client.service_client.config.target_host
    queue = f"health-{uuid.uuid4()}"
    settings = make_settings(tmp_path, temporal_address=target, task_queue=queue)
    for api in server(Runtime(settings, engine)):
        r = await asyncio.to_thread(health, api)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ok"] is True
        assert body["status"] == "degraded"
        assert body["database"]["ok"] is True
        assert body["temporal"] == {"ok": True, "namespace": "default", "error": None}
        workers = body["workers"]
        assert workers["ok"] is False
        assert workers["task_queue"] == queue
        assert (workers["workflow_pollers"], workers["activity_pollers"]) == (0, 0)
        assert "no worker polled" in workers["error"]

        with ThreadPoolExecutor(16) as pool:
            async with build_worker(dev_env.client, Settings(task_queue=queue), engine, pool):
                for _ in range(100):
                    body = (await asyncio.to_thread(health, api)).json()
                    if body["status"] == "ok":
                        break
                    await asyncio.sleep(0.1)
        assert body["status"] == "ok", body
        assert body["workers"]["ok"] is True
        assert body["workers"]["workflow_pollers"] >= 1
        assert body["workers"]["activity_pollers"] >= 1
        assert body["workers"]["last_poll"] is not None
        assert body["workers"]["error"] is None
        text = (await asyncio.to_thread(health, api)).text
        assert target not in text  # no address, no host name of a worker
        assert target.split(":")[-1] not in text


def test_health_with_temporal_unreachable(engine: Engine, tmp_path: Path, no_config: None) -> None:
    closed = f"127.0.0.1:{free_port()}"
    settings = make_settings(tmp_path, temporal_address=closed)
    for api in server(Runtime(settings, engine)):
        r = health(api)
        assert r.status_code == 200, r.text  # the API itself serves: events are stored
        body = r.json()
        assert body["status"] == "degraded"
        assert body["temporal"]["ok"] is False
        assert body["temporal"]["error"].startswith("Temporal does not answer")
        assert body["workers"]["ok"] is False
        assert closed not in r.text
        # no key, no detail
        assert httpx.get(api.base + "/api/v1/health").status_code == 401


def test_public_probes_say_yes_or_no_only(engine: Engine, tmp_path: Path, no_config: None) -> None:
    for api in server(Runtime(make_settings(tmp_path), engine)):
        for path in ("/livez", "/readyz"):
            r = httpx.get(api.base + path)
            assert r.status_code == 200, (path, r.text)
            assert r.json() == {"status": "ready"}

    bare = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no schema
    try:
        for api in server(Runtime(make_settings(tmp_path), bare)):
            r = httpx.get(api.base + "/readyz")
            assert r.status_code == 503
            assert r.json() == {"status": "not ready"}
            assert httpx.get(api.base + "/livez").status_code == 200
    finally:
        bare.dispose()
