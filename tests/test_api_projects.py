"""`/api/v1/projects` over a real uvicorn server, against the dev server with a worker of this
test's own: create, read, every change, who acts (the key's person), refusals as problems,
and the CLI's `project status --json` giving the same data as the API."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.project_activities import ProjectActivities
from crmflow.cli import app
from crmflow.services import projects as service
from crmflow.services.runtime import Runtime
from tests.api_helpers import ApiServer, make_settings, serve
from tests.conftest import REPO, free_port
from workflows.project import ProjectWorkflow

pytestmark = pytest.mark.devserver
ROLLOUT = REPO / "examples/rollout"


@pytest.fixture
async def api(
    dev_env: WorkflowEnvironment, engine: Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ApiServer]:
    """The API on the dev server and a task queue this test's worker polls; the CLI's
    settings point at the same."""
    queue = f"api-projects-{uuid.uuid4()}"
    address = dev_env.client.service_client.config.target_host
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", address)
    monkeypatch.setenv("CRMFLOW_TASK_QUEUE", queue)
    port = free_port()
    settings = make_settings(
        cli_env, f"http://127.0.0.1:{port}", temporal_address=address, task_queue=queue
    )
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[ProjectWorkflow],
            activities=ProjectActivities(engine).all(),
            activity_executor=pool,
        ):
            runtime = Runtime(settings, engine)
            for base in serve(runtime, port):
                yield ApiServer(base, runtime)


async def call(
    api: ApiServer, role: str, method: str, path: str, person: str | None = None, **kw: Any
) -> httpx.Response:
    """One request in a thread: the test's loop keeps the worker polling meanwhile."""

    def go() -> httpx.Response:
        with api.client(role, person=person) as http:
            return http.request(method, f"/api/v1/projects{path}", **kw)

    return await asyncio.to_thread(go)


def spec_json(name: str) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    spec = service.spec_from_files(
        name,
        today - timedelta(days=today.weekday()),
        ROLLOUT / "crm-rollout.yaml",
        ROLLOUT / "team.yaml",
        ROLLOUT / "holidays.yaml",
    )
    return spec.model_dump(mode="json")


def said(r: httpx.Response, status: int = 200) -> str:
    assert r.status_code == status, r.text
    if r.headers["content-type"].startswith("application/problem+json"):
        return str(r.json()["detail"])
    return str(r.json()["message"])


async def test_projects_over_http(api: ApiServer) -> None:
    name = f"Api {uuid.uuid4().hex[:6]}"
    slug = name.lower().replace(" ", "-")
    pm, lily = "project_manager", "Lily Zhao"

    r = await call(api, pm, "POST", "", json=spec_json(name))
    assert r.status_code == 201, r.text
    assert r.json()["workflow_id"] == f"project-{slug}" and r.json()["plan"]["stages"]
    r = await call(api, pm, "POST", "", json=spec_json(name))
    assert r.status_code == 409 and "exists already" in r.json()["detail"]
    bad = spec_json("Bad")
    bad["params"] = {"nope": True}
    r = await call(api, pm, "POST", "", json=bad)
    assert r.status_code == 422 and "unknown parameter 'nope'" in r.json()["detail"]

    r = await call(api, "viewer", "GET", f"/{name}")
    assert r.status_code == 200, r.text
    assert r.json()["project_id"] == slug and r.json()["closed_at"] is None
    r = await call(api, "viewer", "GET", f"/{name}/gantt.svg")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert r.text.lstrip().startswith("<svg")
    for _ in range(50):  # visibility lags the start a little
        r = await call(api, "viewer", "GET", "")
        assert r.status_code == 200
        mine = [p for p in r.json() if p["workflow_id"] == f"project-{slug}"]
        if mine:
            break
        await asyncio.sleep(0.1)
    assert mine and mine[0]["name"] == name and mine[0]["health"] in ("green", "amber", "red")

    # who may: a viewer reads but does not change; a marketer does not even read
    r = await call(api, "viewer", "POST", f"/{name}/check", json={"item": "budget"})
    assert r.status_code == 403
    assert (await call(api, "marketer", "GET", f"/{name}")).status_code == 403
    assert (await call(api, pm, "GET", "/no-such-project")).status_code == 404

    # the actor is the key's person, whatever the body says
    r = await call(api, pm, "POST", f"/{name}/check", lily, json={"item": "stakeholder-interviews"})
    assert said(r) == "checked stakeholder-interviews (Lily Zhao)"
    r = await call(api, pm, "POST", f"/{name}/check", json={"item": "budget", "by": "Grace Chen"})
    assert r.status_code == 422  # no `by` in the body
    r = await call(api, pm, "POST", f"/{name}/signoff", json={"gate": "requirements-approval"})
    assert said(r, 409) == "this key is not bound to a project team member"
    ivan = "Ivan Sun"
    r = await call(
        api, pm, "POST", f"/{name}/signoff", ivan, json={"gate": "requirements-approval"}
    )
    assert said(r, 409).startswith("Ivan Sun holds it_lead; gate 'Requirements approval' needs")

    peter = "Peter Wang"
    r = await call(api, pm, "POST", f"/{name}/done", peter, json={"milestone": "kick-off"})
    assert said(r).startswith("milestone kick-off done")
    # an item of another role: the project manager, with a reason, kept as an override
    r = await call(api, pm, "POST", f"/{name}/check", peter, json={"item": "budget"})
    assert said(r, 409).endswith("give the reason for the override")
    r = await call(
        api, pm, "POST", f"/{name}/check", peter,
        json={"item": "budget", "override": "Grace approved it by e-mail"},
    )  # fmt: skip
    change = r.json()["change"]
    assert (change["action"], change["ref"], change["by"], change["override"]) == (
        "check",
        "budget",
        "Peter Wang",
        "Grace approved it by e-mail",
    )
    risk = {"title": "Data quality", "owner": ivan, "probability": "high", "impact": "high"}
    r = await call(api, pm, "POST", f"/{name}/risks", peter, json=risk)
    assert said(r) == "risk R1 added (critical)"
    r = await call(api, pm, "PATCH", f"/{name}/risks/R1", peter, json={"impact": "low"})
    assert said(r).startswith("risk R1 updated")
    r = await call(api, pm, "POST", f"/{name}/risks/R1/close", peter, json={"comment": "ok"})
    assert said(r) == "risk R1 closed"
    r = await call(api, pm, "POST", f"/{name}/stages/requirements/start", peter)
    assert "already started" in said(r, 409)
    r = await call(api, pm, "POST", f"/{name}/stages/requirements/finish", lily, json={})
    assert r.status_code == 409  # only a manager records a finish
    r = await call(api, pm, "POST", f"/{name}/rebaseline", peter, json={"reason": "x"})
    assert said(r).startswith("baseline 2 taken")
    r = await call(api, pm, "POST", f"/{name}/close", peter, json={"reason": "done"})
    assert said(r) == f"project {name} closed by Peter Wang"
    r = await call(api, pm, "POST", f"/{name}/check", lily, json={"item": "smart-goals"})
    assert "is over" in said(r, 409)
    r = await call(api, "viewer", "GET", f"/{name}")
    assert r.json()["closed_by"] == "Peter Wang" and r.json()["close_reason"] == "done"


async def test_cli_status_json_is_the_api_status(api: ApiServer) -> None:
    name = f"Same {uuid.uuid4().hex[:6]}"
    r = await call(api, "project_manager", "POST", "", json=spec_json(name))
    assert r.status_code == 201, r.text
    r = await call(api, "project_manager", "POST", f"/{name}/check", "Lily Zhao",
                   json={"item": "stakeholder-interviews"})  # fmt: skip
    assert r.status_code == 200, r.text
    cli = await asyncio.to_thread(CliRunner().invoke, app, ["project", "status", name, "--json"])
    assert cli.exit_code == 0, cli.output
    http = await call(api, "viewer", "GET", f"/{name}")
    assert http.status_code == 200, http.text
    assert json.loads(cli.stdout) == http.json()
    await call(api, "project_manager", "POST", f"/{name}/close", "Peter Wang")
