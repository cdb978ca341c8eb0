"""The console's project pages over HTTP (a real server, both databases): the portfolio and
a project's page against the Temporal dev server with a project worker of this module's own
(who sees which controls, checking an item, a milestone, risks, a refused and a successful
sign-off, CSRF and permission refusals that change nothing), and against a Temporal that
does not answer (a clear 503 page and a refusal notice, never a 500).

The tests are synchronous (the browser tests' Playwright API cannot run inside an event
loop), so the worker runs on an event loop of its own in a thread; `ProjectConsole.run`
awaits a coroutine there (creating a project, reading its status).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import Engine, select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.project_activities import ProjectActivities
from crmflow.contracts.projects import CheckInput, CloseInput
from crmflow.services import projects as service
from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from crmflow.services.users import NewUser, create_user
from store.models import ChangeLogRow
from tests.api_helpers import make_settings, serve
from tests.conftest import REPO, free_port
from tests.console_helpers import PASSWORD, PEOPLE, ConsoleServer, csrf_of
from workflows.project import ProjectWorkflow

ROLLOUT = REPO / "examples/rollout"
T = TypeVar("T")


class ProjectWorker:
    """A ProjectWorkflow worker on its own event loop in a thread, polling `queue`."""

    def __init__(self, address: str, queue: str, engine: Engine) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="worker", daemon=True)
        self.thread.start()
        self.pool = ThreadPoolExecutor(4)
        self.client: Client = self.run(
            Client.connect(address, data_converter=pydantic_data_converter)
        )

        async def make() -> Worker:  # a worker is made inside its loop
            return Worker(
                self.client,
                task_queue=queue,
                workflows=[ProjectWorkflow],
                activities=ProjectActivities(engine).all(),
                activity_executor=self.pool,
            )

        self.worker = self.run(make())
        self.task = asyncio.run_coroutine_threadsafe(self.worker.run(), self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def stop(self) -> None:
        self.run(self.worker.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.pool.shutdown()


@dataclass
class ProjectConsole:
    """The console on the dev server, a worker, and a runtime for the test's own calls."""

    server: ConsoleServer
    worker: ProjectWorker
    runtime: Runtime

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.worker.run(coro)

    def create(self, name: str, start: date | None = None, team: Path | None = None) -> str:
        """A project from examples/rollout (starting this Monday unless said); its id."""
        today = datetime.now(UTC).date()
        spec = service.spec_from_files(
            name,
            start or today - timedelta(days=today.weekday()),
            ROLLOUT / "crm-rollout.yaml",
            team or ROLLOUT / "team.yaml",
            ROLLOUT / "holidays.yaml",
        )
        return self.run(service.create(self.runtime, spec)).project_id

    def status(self, name: str) -> service.ProjectStatus:
        return self.run(service.status(self.runtime, name))

    def check(
        self, name: str, *items: str, by: str = "Lily Zhao", override: str | None = None
    ) -> None:
        for item in items:
            self.run(
                service.check(self.runtime, name, CheckInput(item=item, by=by, override=override))
            )

    def close(self, name: str) -> None:
        self.run(service.close(self.runtime, name, CloseInput(by="Peter Wang")))


def console_users(runtime: Runtime) -> None:
    """One user per role, as tests/console_helpers.py's console_server makes them."""
    for role in Role:
        create_user(
            runtime,
            NewUser(
                name=f"test-{role.value}",
                role=role,
                person=PEOPLE.get(role.value),
                password=PASSWORD,
            ),
        )


@pytest.fixture
def project_console(
    dev_env: WorkflowEnvironment, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProjectConsole]:
    """The console and API on the test database, talking to the dev server on a task queue
    that a worker of this test polls."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    address = dev_env.client.service_client.config.target_host
    queue = f"console-projects-{uuid.uuid4()}"
    worker = ProjectWorker(address, queue, engine)
    try:
        port = free_port()
        settings = make_settings(
            tmp_path, f"http://127.0.0.1:{port}", temporal_address=address, task_queue=queue
        )
        runtime = Runtime(settings, engine)
        console_users(runtime)
        mine = Runtime(settings, engine, _client=worker.client)
        for base in serve(runtime, port):
            yield ProjectConsole(ConsoleServer(base, runtime), worker, mine)
    finally:
        worker.stop()


@pytest.fixture
def silent_console(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConsoleServer]:
    """The console with a Temporal address where nothing listens."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    settings = make_settings(
        tmp_path, f"http://127.0.0.1:{port}", temporal_address=f"127.0.0.1:{free_port()}"
    )
    runtime = Runtime(settings, engine)
    console_users(runtime)
    for base in serve(runtime, port):
        yield ConsoleServer(base, runtime)


def text_of(html: str) -> str:
    """The page's visible text, roughly: tags dropped, entities read, spaces squeezed."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def notice_of(http: httpx.Client, r: httpx.Response) -> str:
    """Follow a change's 303 and read the notice it left."""
    assert r.status_code == 303, r.text
    page = http.get(r.headers["location"])
    assert page.status_code in (200, 503), page.text
    found = re.search(r'<p class="notice notice-(ok|error)"[^>]*>(.*?)</p>', page.text, re.S)
    assert found, "no notice on the page"
    return f"{found.group(1)}: {unescape(found.group(2)).strip()}"


def listed(http: httpx.Client, name: str) -> str:
    """The portfolio once visibility lists `name` (it lags a start a little)."""
    for _ in range(100):
        r = http.get("/console/projects")
        assert r.status_code == 200, r.text
        if name in r.text:
            return r.text
        time.sleep(0.1)
    raise AssertionError(f"{name} never listed")


FORMS = re.compile(r'<form [^>]*action="(/console/projects/[^"]+)"')


# --------------------------------------------------------------------------- Temporal down


def test_pages_say_temporal_is_not_answering(silent_console: ConsoleServer) -> None:
    with silent_console.signed_in("viewer") as http:
        for path in ("/console/projects", "/console/projects/acme-crm"):
            r = http.get(path)
            assert r.status_code == 503, r.text
            assert "Temporal, or a worker running the project workflows, is not answering" in (
                text_of(r.text)
            )
            assert "cannot reach Temporal at 127.0.0.1:" in r.text
            assert 'action="/console/projects' not in r.text
    with silent_console.signed_in("project_manager") as http:
        page = http.get("/console/projects")
        r = http.post(
            "/console/projects/acme-crm/items/rfp/check", data={"csrf_token": csrf_of(page.text)}
        )
        assert "error: cannot reach Temporal" in notice_of(http, r)
        r = http.post("/console/projects/acme-crm/items/rfp/check", data={})
        assert r.status_code == 403 and "CSRF" in r.text
    with silent_console.signed_in("marketer") as http:
        r = http.get("/console/projects")
        assert r.status_code == 403
        assert 'href="/console/projects"' not in r.text  # no navigation link either
        home = http.get("/console/projects/acme-crm")
        assert home.status_code == 403
    with httpx.Client(base_url=silent_console.base) as anonymous:
        r = anonymous.get("/console/projects")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


# --------------------------------------------------------------------------- on the dev server


@pytest.mark.devserver
def test_project_pages_show_and_change_a_project(project_console: ProjectConsole) -> None:
    pc, server = project_console, project_console.server
    name = f"Console {uuid.uuid4().hex[:6]}"
    today = datetime.now(UTC).date()
    pid = pc.create(name, start=today + timedelta(days=7 - today.weekday()))  # next Monday
    late = f"Late {uuid.uuid4().hex[:6]}"
    pc.create(late, start=today - timedelta(weeks=5))
    pc.check(late, "stakeholder-interviews", "smart-goals", "kpi-baseline")
    pc.check(late, "budget", by="Grace Chen")
    try:
        base = f"/console/projects/{pid}"
        # the portfolio: health, forecast against the baseline, next due, gates waiting
        with server.signed_in("viewer") as http:
            page = text_of(listed(http, late))
            assert name in page and "GREEN" in page and "RED" in page
            assert re.search(r"\d+ working days? late", page)
            assert "Requirements approval needs executive_sponsor, business_owner · due" in page
            assert "Solution design sign-off needs business_owner, it_lead, vendor_consultant" in (
                page
            )
            r = http.get(base)
            assert r.status_code == 200, r.text
            assert r.text.count("<svg") == 1 and '<div class="chart-scroll"' in r.text
            assert 'class="planned' in r.text and 'class="baseline"' in r.text
            shown = text_of(r.text)
            assert "Go-live approval" in shown and "Stakeholder interviews held" in shown
            assert FORMS.findall(r.text) == []  # a viewer sees no controls
            assert "Sign off" not in shown and "Add a risk" not in shown
            # a viewer's POST is refused and changes nothing
            r = http.post(
                f"{base}/items/stakeholder-interviews/check",
                data={"csrf_token": csrf_of(r.text)},
            )
            assert r.status_code == 403
        assert not any(s.items_done for s in pc.status(name).stages)

        with server.signed_in("admin") as http:  # may write, but Ada Admin is not on the team
            r = http.get(base)
            assert r.status_code == 200 and FORMS.findall(r.text) == []
            assert "who is not on this project's team" in text_of(r.text)

        with server.signed_in("project_manager") as http:  # Peter Wang, project_manager
            r = http.get(base)
            actions = FORMS.findall(r.text)
            signable = {a.split("/")[-2] for a in actions if a.endswith("/signoff")}
            assert signable == {"go-live-approval", "pilot-review"}  # the gates needing a PM
            assert f"{base}/items/stakeholder-interviews/check" in actions
            assert f"{base}/milestones/kick-off/done" in actions and f"{base}/risks" in actions
            token = csrf_of(r.text)

            # without the CSRF token: refused, nothing changes
            r = http.post(f"{base}/items/stakeholder-interviews/check", data={})
            assert r.status_code == 403
            assert not any(s.items_done for s in pc.status(name).stages)

            # a business_owner's item: the project manager checks it only with a reason
            r = http.post(f"{base}/items/stakeholder-interviews/check", data={"csrf_token": token})
            assert notice_of(http, r) == (
                "error: Peter Wang holds project_manager; item 'Stakeholder interviews held' is "
                "checked by its business_owner (Lily Zhao, Marco Liu); to check it for them as "
                "project manager, give the reason for the override"
            )
            said = notice_of(
                http,
                http.post(
                    f"{base}/items/stakeholder-interviews/check",
                    data={"csrf_token": token, "override": "Lily is on leave"},
                ),
            )
            assert said == (
                "ok: checked stakeholder-interviews (Peter Wang); override (item "
                "'stakeholder-interviews' is checked by its business_owner): Lily is on leave"
            )
            section = re.search(
                r'<section class="card" id="overrides">.*?</section>', http.get(base).text, re.S
            )
            assert section and "Lily is on leave" in section.group(0)
            assert "check stakeholder-interviews" in section.group(0)
            said = notice_of(
                http, http.post(f"{base}/milestones/kick-off/done", data={"csrf_token": token})
            )
            assert said == "ok: milestone kick-off done (Peter Wang)"

            # the workflow's refusal is the page's notice
            r = http.post(f"{base}/gates/go-live-approval/signoff", data={"csrf_token": token})
            said = notice_of(http, r)
            assert said.startswith(
                "error: gate 'Go-live approval' cannot be signed yet: required checklist items "
                "are still open: 'Test plan and UAT scripts' (project_manager)"
            )
            r = http.post(f"{base}/gates/requirements-approval/signoff", data={"csrf_token": token})
            assert notice_of(http, r) == (
                "error: Peter Wang holds project_manager; gate 'Requirements approval' needs "
                "executive_sponsor (1 more sign-off), business_owner (1 more sign-off)"
            )
            pc.check(
                name,
                "test-plan", "sit-passed", "uat-passed", "training",
                by="Peter Wang", override="the vendor ran UAT on its own environment",
            )  # fmt: skip
            r = http.post(
                f"{base}/gates/go-live-approval/signoff",
                data={"csrf_token": token, "role": "project_manager", "comment": "UAT clean"},
            )
            assert notice_of(http, r) == (
                "ok: Peter Wang signed go-live-approval as project_manager"
            )
            page = http.get(base).text
            row = re.search(r'<tr id="gate-go-live-approval">.*?</tr>', page, re.S)
            assert row and "Peter Wang (project_manager)" in row.group(0)
            assert "/signoff" not in row.group(0)  # signed once: no button any more

            # risks: add (severity from probability and impact), close with a reason
            r = http.post(
                f"{base}/risks",
                data={
                    "csrf_token": token,
                    "title": "POS vendor late with the API",
                    "owner": "Ivan Sun",
                    "probability": "high",
                    "impact": "high",
                    "mitigation": "weekly check-in",
                },
            )
            assert notice_of(http, r) == "ok: risk R1 added (critical)"
            page = text_of(http.get(base).text)
            assert "R1 POS vendor late with the API" in page and "RED" in page
            r = http.post(f"{base}/risks", data={"csrf_token": token, "title": " ", "owner": "x"})
            assert notice_of(http, r).startswith("error: the risk was not added")
            r = http.post(f"{base}/risks/R1/close", data={"csrf_token": token, "reason": ""})
            assert r.status_code == 422  # a reason is required
            r = http.post(
                f"{base}/risks/R1/close", data={"csrf_token": token, "reason": "API delivered"}
            )
            assert notice_of(http, r).startswith("ok: ")
            page = http.get(base).text
            assert "API delivered" in text_of(page) and "/risks/R1/close" not in page

            assert http.get("/console/projects/no-such-project").status_code == 404

        with pc.runtime.engine.connect() as conn:  # console changes are audited as the user
            audited = conn.execute(
                select(ChangeLogRow.actor, ChangeLogRow.person, ChangeLogRow.status).where(
                    ChangeLogRow.target == f"{base}/gates/go-live-approval/signoff"
                )
            ).all()
        assert ("user:test-project_manager", "Peter Wang", 303) in audited

        st = pc.status(name)
        gate = next(g for g in st.gates if g.id == "go-live-approval")
        assert gate.signed_by == ["Peter Wang (project_manager)"]
        assert st.open_risks == 0
    finally:
        pc.close(name)
        pc.close(late)
