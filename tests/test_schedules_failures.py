"""Failures in plain sight, on the Temporal dev server through the CLI: a run whose step
keeps failing shows as retrying with its last error in `schedules runs --json` and
`schedules list --json` (read from the workflow's pending activity), a run that ends
without recording its end says why, and an error no retry can cure (a report directory
that cannot be made) fails the run at once with the reason instead of retrying 20 times."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.automation_activities import AutomationActivities
from activities.channels import Channel
from activities.channels.email import EmailChannel, SmtpConfig
from crmflow import schedules as sched
from crmflow.cli import app
from crmflow.contracts.automations import schedule_id
from crmflow.settings import Settings
from tests.conftest import free_port
from workflows.automation import AutomationWorkflow

pytestmark = pytest.mark.devserver


@pytest.fixture
async def smtp_down_worker(dev_env: WorkflowEnvironment, engine: Engine) -> AsyncIterator[str]:
    """A worker whose e-mail goes to an SMTP port nobody listens on (the mail server is
    down): sending a staff notice fails, and is retried."""
    queue = f"failures-{uuid.uuid4()}"
    email = EmailChannel(
        SmtpConfig(
            host="127.0.0.1",
            port=free_port(),
            mail_from="crm@acme.example",
            security="none",
            timeout=2,
        )
    )
    channels: dict[str, Channel] = {"email": email}
    acts = AutomationActivities(engine, Settings(), channels)
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[AutomationWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            yield queue


def cli(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args))


async def until(check: Callable[[], Any], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError("not seen in time")


async def test_a_failing_run_is_seen_retrying_with_its_error_and_why_it_ended(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    smtp_down_worker: str,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tag = f"f{uuid.uuid4().hex[:6]}"
    name = f"{tag}-digest"
    path = cli_env / "schedules.yaml"
    broken = cli_env / "not-a-directory"
    broken.write_text("a file stands where the report directory should be\n")
    path.write_text(
        yaml.safe_dump(
            {
                "timezone": "Asia/Shanghai",
                "schedules": [
                    {
                        "name": name,
                        "cron": "0 8 * * 1",
                        "automation": "kpi_digest",
                        "params": {
                            "out_dir": str(cli_env / "reports"),
                            "email_to": ["ops@acme.example"],
                        },
                        "paused": True,
                    },
                    {
                        "name": f"{tag}-unwritable",
                        "cron": "0 8 * * 1",
                        "automation": "kpi_digest",
                        "params": {"out_dir": str(broken / "kpi")},
                        "paused": True,
                    },
                ],
            }
        )
    )
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("CRMFLOW_TASK_QUEUE", smtp_down_worker)
    runner = CliRunner()
    f = str(path)
    try:
        out = await asyncio.to_thread(cli, runner, "schedules", "apply", "-f", f)
        assert out.exit_code == 0, out.output
        out = await asyncio.to_thread(cli, runner, "schedules", "trigger", name, "-f", f)
        assert out.exit_code == 0, out.output

        def retrying() -> dict[str, Any] | None:
            got = cli(runner, "schedules", "runs", name, "-f", f, "--json")
            assert got.exit_code == 0, got.output
            runs = json.loads(got.output)["runs"]
            if runs and runs[0]["status"] == "retrying":
                return dict(runs[0])
            return None

        run = await until(retrying)
        r = run["retrying"]
        assert r["activity"] == "automation_step" and r["attempt"] >= 2
        assert r["maximum_attempts"] == 20
        assert "Connection refused" in r["last_error"] or "refused" in r["last_error"].lower()
        assert run["error"] is None  # nothing has failed for good

        out = await asyncio.to_thread(cli, runner, "schedules", "list", "-f", f, "--json")
        assert out.exit_code == 0, out.output
        (line,) = [s for s in json.loads(out.output) if s["name"] == name]
        assert line["last_run"]["status"] == "retrying"
        assert "refused" in line["last_run"]["retrying"]["last_error"].lower()
        out = await asyncio.to_thread(cli, runner, "schedules", "runs", name, "-f", f)
        assert "#1: retrying automation_step (attempt" in out.output
        assert "Connection refused" in out.output

        # the operator gives up on it: the run says it was terminated, and why
        await dev_env.client.get_workflow_handle(run["workflow_id"]).terminate(
            reason="mail server down, retried tomorrow"
        )
        got = await asyncio.to_thread(cli, runner, "schedules", "runs", name, "-f", f, "--json")
        (ended,) = json.loads(got.output)["runs"]
        assert ended["status"] == "terminated"
        assert ended["error"] == "the workflow was terminated: mail server down, retried tomorrow"

        # a directory that cannot be made: no retries, the run fails at once and says why
        started = time.monotonic()
        out = await asyncio.to_thread(
            cli, runner, "schedules", "trigger", f"{tag}-unwritable", "-f", f, "--wait"
        )
        assert out.exit_code == 1, out.output
        assert time.monotonic() - started < 30
        text = " ".join(out.output.split())
        assert "the run failed" in text and "cannot be written" in text
        got = await asyncio.to_thread(
            cli, runner, "schedules", "runs", f"{tag}-unwritable", "-f", f, "--json"
        )
        (failed,) = json.loads(got.output)["runs"]
        assert failed["status"] == "failed"
        assert f"cannot be written to {broken / 'kpi'}" in failed["error"]
        assert "Not a directory" in failed["error"] and "params.out_dir" in failed["error"]
        history = await dev_env.client.get_workflow_handle(failed["workflow_id"]).fetch_history()
        attempts = [
            e.activity_task_started_event_attributes.attempt
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
        ]
        assert attempts == [1, 1, 1]  # begin, the step (once), finish
    finally:
        for sid in await sched.crmflow_schedule_ids(dev_env.client):
            if sid.startswith(schedule_id(tag)):
                await dev_env.client.get_schedule_handle(sid).delete()


async def test_a_run_no_worker_picks_up_says_so(
    dev_env: WorkflowEnvironment, engine: Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = f"w{uuid.uuid4().hex[:6]}"
    name = f"{tag}-tags"
    nobody = f"nobody-polls-{tag}"
    path = cli_env / "schedules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "timezone": "UTC",
                "schedules": [
                    {"name": name, "cron": "0 3 * * *", "automation": "tag_expiry", "paused": True}
                ],
            }
        )
    )
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("CRMFLOW_TASK_QUEUE", nobody)
    monkeypatch.setattr(sched, "WAITING_AFTER", sched.timedelta(seconds=1))
    runner = CliRunner()
    f = str(path)
    try:
        out = await asyncio.to_thread(cli, runner, "schedules", "apply", "-f", f)
        assert out.exit_code == 0, out.output
        wid = await sched.trigger(dev_env.client, name)
        assert wid is not None

        def waiting() -> dict[str, Any] | None:
            got = cli(runner, "schedules", "runs", name, "-f", f, "--json")
            assert got.exit_code == 0, got.output
            found = json.loads(got.output)
            assert found["runs"] == []  # the store has not heard of it
            flight = found["unrecorded"]
            return dict(flight[0]) if flight and flight[0]["status"] == "waiting" else None

        flight = await until(waiting, 30)
        assert flight["workflow_id"] == wid
        assert flight["waiting"]["task"] == "workflow task"
        assert flight["waiting"]["task_queue"] == nobody
        out = await asyncio.to_thread(cli, runner, "schedules", "runs", name, "-f", f)
        text = " ".join(out.output.split())
        assert f"not recorded yet: {wid}: waiting: no worker has started its workflow task" in text
        assert f"is a worker polling task queue '{nobody}'?" in text
        await dev_env.client.get_workflow_handle(wid).terminate(reason="test over")
    finally:
        for sid in await sched.crmflow_schedule_ids(dev_env.client):
            if sid.startswith(schedule_id(tag)):
                await dev_env.client.get_schedule_handle(sid).delete()
