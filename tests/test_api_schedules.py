"""`/api/v1/schedules` over a real uvicorn server: list, runs, trigger (and wait), backfill,
pause and resume against the Temporal dev server (the time-skipping server has no
Schedules); permissions per role; a bad file, an unknown name, a bad range and Temporal
not answering as problem documents."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from crmflow.services import schedules as service
from crmflow.services.runtime import Runtime
from tests.api_helpers import ApiServer, make_settings, serve
from tests.conftest import free_port
from tests.test_schedules import cleanup, worker  # noqa: F401  (the worker fixture)


def write_file(path: Path, tag: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "timezone": "Asia/Shanghai",
                "schedules": [
                    {"name": f"{tag}-tags", "cron": "0 3 * * *", "automation": "tag_expiry"},
                    {
                        "name": f"{tag}-expiry",
                        "cron": "0 2 * * *",
                        "automation": "points_expiry",
                        "params": {"notice_days": 0},
                        "paused": True,
                    },
                ],
            }
        )
    )
    return path


def server_on(engine: Engine, tmp_path: Path, **settings: Any) -> Iterator[ApiServer]:
    rt = Runtime(make_settings(tmp_path, **settings), engine)
    for base in serve(rt):
        yield ApiServer(base, rt)


@pytest.fixture
def api_on_dev(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    worker: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ApiServer]:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    target = dev_env.client.service_client.config.target_host
    yield from server_on(engine, tmp_path, temporal_address=target, task_queue=worker)


@pytest.fixture
async def tag(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    t = f"h{uuid.uuid4().hex[:6]}"
    yield t
    await cleanup(dev_env.client, t)


def client(api: ApiServer, role: str) -> httpx.AsyncClient:
    # async: the worker runs on the test's event loop and must keep working while we wait
    return httpx.AsyncClient(
        base_url=api.base, timeout=90, headers={"Authorization": f"Bearer {api.token(role)}"}
    )


@pytest.mark.devserver
async def test_schedules_are_listed_triggered_backfilled_paused_and_resumed(
    api_on_dev: ApiServer, tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_file(tmp_path / "schedules.yaml", tag)
    api_on_dev.runtime.settings.schedules_file = path
    tags, expiry = f"{tag}-tags", f"{tag}-expiry"
    await service.apply(api_on_dev.runtime, path)

    async with client(api_on_dev, "viewer") as http:
        r = await http.get("/api/v1/schedules")
        assert r.status_code == 200, r.text
        listed = {s["name"]: s for s in r.json()}
        assert listed[tags]["server"]["on_server"] and not listed[tags]["server"]["paused"]
        assert listed[expiry]["server"]["paused"] and listed[expiry]["last_run"] is None
        assert len(listed[tags]["server"]["next"]) == 3
        r = await http.get(f"/api/v1/schedules/{tags}/preview", params={"next": 4})
        assert r.status_code == 200, r.text
        preview = r.json()
        assert preview["source"] == "server" and len(preview["next"]) == 4
        same = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in preview["next"][:3]]
        assert same == [
            datetime.fromisoformat(t.replace("Z", "+00:00")) for t in listed[tags]["server"]["next"]
        ]
        assert (await http.post(f"/api/v1/schedules/{tags}/trigger")).status_code == 403

    async with client(api_on_dev, "operator") as http:
        r = await http.post(f"/api/v1/schedules/{tags}/trigger", params={"wait_seconds": 60})
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["workflow_id"] and run["run"]["status"] == "completed", run
        r = await http.get(f"/api/v1/schedules/{tags}/runs", params={"limit": 5})
        assert r.status_code == 200, r.text
        assert [x["status"] for x in r.json()["runs"]] == ["completed"]
        listed = {s["name"]: s for s in (await http.get("/api/v1/schedules")).json()}
        assert listed[tags]["last_run"]["status"] == "completed"

        r = await http.post(f"/api/v1/schedules/{tags}/pause", json={"note": "maintenance"})
        assert r.status_code == 200, r.text
        assert r.json() == {"schedule": tags, "paused": True, "file_paused": False}
        listed = {s["name"]: s for s in (await http.get("/api/v1/schedules")).json()}
        assert listed[tags]["server"]["paused"]
        assert listed[tags]["server"]["note"] == "maintenance"
        r = await http.post(f"/api/v1/schedules/{tags}/resume")
        assert r.status_code == 200 and not r.json()["paused"]
        listed = {s["name"]: s for s in (await http.get("/api/v1/schedules")).json()}
        assert not listed[tags]["server"]["paused"]
        assert "through the API" in listed[tags]["server"]["note"]

        r = await http.post(
            f"/api/v1/schedules/{expiry}/backfill", json={"from": "2026-02-27", "to": "2026-02-28"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["runs"] == ["2026-02-27T02:00:00+08:00", "2026-02-28T02:00:00+08:00"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = (await http.get(f"/api/v1/schedules/{expiry}/runs")).json()["runs"]
            if len(runs) == 2 and all(x["status"] == "completed" for x in runs):
                break
            await asyncio.sleep(0.2)
        assert sorted(x["run_date"] for x in runs) == ["2026-02-27", "2026-02-28"]

        for bad, status in [
            ({"from": "2026-03-02", "to": "2026-03-01"}, 422),
            ({"from": "soon", "to": "2026-03-01"}, 422),
            ({"from": "2020-01-01", "to": "2026-01-01"}, 413),
            ({"from": "0001-01-01", "to": "9999-12-31"}, 422),
            ({"from": "x" * 41, "to": "2026-01-01"}, 422),
        ]:
            r = await http.post(f"/api/v1/schedules/{expiry}/backfill", json=bad)
            assert r.status_code == status, (bad, r.text)
        r = await http.post("/api/v1/schedules/nope/trigger")
        assert r.status_code == 404 and "no schedule 'nope'" in r.json()["detail"]
        assert (await http.get("/api/v1/schedules/nope/runs")).status_code == 404
        r = await http.get(f"/api/v1/schedules/{tags}/runs", params={"limit": 0})
        assert r.status_code == 422

        # in the file, not on the server (never applied)
        other = write_file(tmp_path / "other.yaml", f"{tag}x")
        api_on_dev.runtime.settings.schedules_file = other
        r = await http.post(f"/api/v1/schedules/{tag}x-tags/pause")
        assert r.status_code == 404 and "not on the Temporal server" in r.json()["detail"]


def test_a_bad_file_and_temporal_not_answering_are_problems(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("timezone: Mars/Olympus\nschedules: []\n")
    good = write_file(tmp_path / "schedules.yaml", "u")
    for api in server_on(engine, tmp_path, temporal_address=f"127.0.0.1:{free_port()}"):
        with api.client("operator") as http:
            api.runtime.settings.schedules_file = bad
            r = http.get("/api/v1/schedules")
            assert r.status_code == 422
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "1 problem(s)" in r.json()["detail"]
            assert "Mars/Olympus" in r.json()["errors"][0]["reason"]
            api.runtime.settings.schedules_file = tmp_path / "missing.yaml"
            assert http.get("/api/v1/schedules").status_code == 422
            api.runtime.settings.schedules_file = good
            r = http.post("/api/v1/schedules/u-tags/pause")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert "cannot reach Temporal" in r.json()["detail"]
            # the next runs still come, from croniter, saying so
            r = http.get("/api/v1/schedules/u-tags/preview", params={"next": 2})
            assert r.status_code == 200, r.text
            assert r.json()["source"] == "croniter" and len(r.json()["next"]) == 2
            assert r.json()["note"].startswith("Temporal did not answer")
