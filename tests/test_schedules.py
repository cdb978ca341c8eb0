"""Scheduled automations under a real Temporal dev server (the time-skipping server has no
Schedules): `apply` round-trips the file, a triggered run and a backfill run as of their
scheduled times, the CLI drives it, and a worker killed in the middle of an expiry run is
taken over by another with exact totals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, func, insert, select
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.automation_activities import AutomationActivities
from automations.models import SchedulesFile
from crmflow import schedules as sched
from crmflow.cli import app
from crmflow.contracts.automations import AutomationInput, RunSummary, schedule_id
from crmflow.settings import Settings
from store.models import AutomationRunRow, CustomerRow, PointsLedgerRow, PointsLotRow
from tests.conftest import REPO
from tests.test_end_to_end import stack_env
from workflows.automation import AutomationWorkflow

pytestmark = pytest.mark.devserver


def file_of(tag: str, *schedules: dict[str, Any]) -> SchedulesFile:
    return SchedulesFile.model_validate(
        {
            "timezone": "Asia/Shanghai",
            "schedules": [{**s, "name": f"{tag}-{s['name']}"} for s in schedules],
        }
    )


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment, engine: Engine) -> AsyncIterator[str]:
    queue = f"schedules-{uuid.uuid4()}"
    acts = AutomationActivities(engine, Settings(), {})
    with ThreadPoolExecutor(8) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[AutomationWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            yield queue


async def cleanup(client: Client, tag: str) -> None:
    for sid in await sched.crmflow_schedule_ids(client):
        if sid.startswith(schedule_id(tag)):
            await client.get_schedule_handle(sid).delete()


async def test_apply_makes_the_server_match_the_file(dev_env: WorkflowEnvironment) -> None:
    client = dev_env.client
    tag = f"a{uuid.uuid4().hex[:6]}"
    base: list[dict[str, Any]] = [
        {"name": "expiry", "cron": "0 2 * * *", "automation": "points_expiry"},
        {"name": "tags", "cron": "0 3 * * *", "automation": "tag_expiry"},
        {"name": "kpi", "cron": "0 8 * * 1", "automation": "kpi_digest", "paused": True},
    ]
    try:
        first = await sched.apply(client, file_of(tag, *base), "q")
        assert [(c.schedule, c.action) for c in first] == [
            (f"{tag}-expiry", "created"),
            (f"{tag}-tags", "created"),
            (f"{tag}-kpi", "created"),
        ]
        again = await sched.apply(client, file_of(tag, *base), "q")
        assert {c.action for c in again} == {"unchanged"}
        desc = await sched.describe(client, f"{tag}-kpi")
        assert desc.schedule.state.paused
        expiry = await sched.describe(client, f"{tag}-expiry")
        assert expiry.schedule.spec.time_zone_name == "Asia/Shanghai"
        nxt = expiry.info.next_action_times[0].astimezone(sched.ZoneInfo("Asia/Shanghai"))
        assert (nxt.hour, nxt.minute) == (2, 0)

        changed: list[dict[str, Any]] = [
            {**base[0], "params": {"notice_days": 7}},  # updated
            {**base[2], "paused": False},  # resumed; "tags" dropped: deleted
        ]
        plan = await sched.apply(client, file_of(tag, *changed), "q", dry_run=True)
        third = await sched.apply(client, file_of(tag, *changed), "q")
        expected = [
            (f"{tag}-expiry", "updated"),
            (f"{tag}-kpi", "resumed"),
            (f"{tag}-tags", "deleted"),
        ]
        assert [(c.schedule, c.action) for c in plan] == expected
        assert [(c.schedule, c.action) for c in third] == expected
        assert not (await sched.describe(client, f"{tag}-kpi")).schedule.state.paused
        assert await sched.describe_or_none(client, f"{tag}-tags") is None
        updated = await sched.describe(client, f"{tag}-expiry")
        action = updated.schedule.action
        payload = action.args[0]  # type: ignore[attr-defined]
        args = client.data_converter.payload_converter.from_payloads([payload], [AutomationInput])[
            0
        ]
        assert args.params["notice_days"] == 7
        await asyncio.sleep(1.5)  # the server's list of schedules catches up
        fourth = await sched.apply(client, file_of(tag, *changed), "q")
        assert {c.action for c in fourth} == {"unchanged"}
    finally:
        await cleanup(client, tag)


def lots(engine: Engine, count: int, due: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(CustomerRow),
            [{"customer_id": f"s{i}", "timezone": "UTC"} for i in range(count // 5 or 1)],
        )
        conn.execute(
            insert(PointsLotRow),
            [
                {
                    "customer_id": f"s{i % (count // 5 or 1)}",
                    "earned": Decimal(7),
                    "remaining": Decimal(7),
                    "earned_at": due - timedelta(days=365),
                    "expires_at": due,
                    "lot_key": f"k{i}",
                }
                for i in range(count)
            ],
        )


async def test_trigger_and_backfill_run_as_of_their_scheduled_time(
    dev_env: WorkflowEnvironment, engine: Engine, worker: str
) -> None:
    client = dev_env.client
    tag = f"t{uuid.uuid4().hex[:6]}"
    lots(engine, 10, datetime(2026, 3, 1, tzinfo=UTC))
    f = file_of(
        tag,
        {
            "name": "expiry",
            "cron": "0 2 * * *",
            "automation": "points_expiry",
            "params": {"notice_days": 0, "chunk_size": 3},
            "paused": True,
        },
    )
    name = f"{tag}-expiry"
    try:
        await sched.apply(client, f, worker)
        # backfill three nights before the lots' date, and the night they are due
        start = sched.parse_when("2026-02-26", "Asia/Shanghai", end=False)
        end = sched.parse_when("2026-03-02", "Asia/Shanghai", end=True)
        assert len(sched.runs_between(f.get(name), start, end)) == 5
        await sched.backfill(client, f.get(name), start, end)
        deadline = time.monotonic() + 60
        done: list[Any] = []
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                done = list(
                    conn.execute(
                        select(AutomationRunRow)
                        .where(AutomationRunRow.schedule == name)
                        .order_by(AutomationRunRow.run_date)
                    ).all()
                )
            if len(done) == 5 and all(r.status == "completed" for r in done):
                break
            await asyncio.sleep(0.2)
        assert [r.run_date for r in done] == [f"2026-02-{d}" for d in (26, 27, 28)] + [
            "2026-03-01",
            "2026-03-02",
        ]
        # the lots expire at 2026-03-01 00:00 UTC = 08:00 Shanghai: the run of 03-02 02:00
        assert [r.counts.get("lots_expired", 0) for r in done] == [0, 0, 0, 0, 10]
        assert done[-1].as_of == datetime(2026, 3, 1, 18, 0, tzinfo=UTC)

        # the last backfilled run has recorded its result; with the default overlap policy
        # (skip) a trigger while its workflow is still closing would be skipped
        for _ in range(100):
            desc = await client.get_schedule_handle(schedule_id(name)).describe()
            if not desc.info.running_actions:
                break
            await asyncio.sleep(0.1)
        wid = await sched.trigger(client, name)  # paused schedules can still be triggered
        assert wid is not None
        handle: WorkflowHandle = client.get_workflow_handle(wid, result_type=RunSummary)
        summary = await handle.result()
        assert summary.status == "completed" and summary.counts.get("lots_expired", 0) == 0
        assert (
            summary.run_date
            == datetime.now(UTC).astimezone(sched.ZoneInfo("Asia/Shanghai")).date().isoformat()
        )
    finally:
        await cleanup(client, tag)
    with engine.connect() as conn:
        total = conn.execute(select(func.sum(PointsLedgerRow.amount))).scalar_one()
    assert float(total) == -70


async def test_the_cli_applies_lists_triggers_and_shows_runs(
    dev_env: WorkflowEnvironment,
    engine: Engine,
    worker: str,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tag = f"c{uuid.uuid4().hex[:6]}"
    path = cli_env / "schedules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "timezone": "Asia/Shanghai",
                "schedules": [
                    {"name": f"{tag}-tags", "cron": "0 3 * * *", "automation": "tag_expiry"}
                ],
            }
        )
    )
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("CRMFLOW_TASK_QUEUE", worker)
    runner = CliRunner()
    name = f"{tag}-tags"
    try:
        out = await asyncio.to_thread(runner.invoke, app, ["schedules", "apply", "-f", str(path)])
        assert out.exit_code == 0, out.output
        assert f"{name}: created" in out.output
        out = await asyncio.to_thread(
            runner.invoke, app, ["schedules", "trigger", name, "-f", str(path), "--wait"]
        )
        assert out.exit_code == 0, out.output
        assert "completed" in out.output
        out = await asyncio.to_thread(
            runner.invoke, app, ["schedules", "runs", name, "-f", str(path), "--json"]
        )
        assert out.exit_code == 0, out.output
        assert '"status": "completed"' in out.output
        out = await asyncio.to_thread(
            runner.invoke, app, ["schedules", "pause", name, "-f", str(path)]
        )
        assert out.exit_code == 0 and "paused" in out.output
        out = await asyncio.to_thread(
            runner.invoke, app, ["schedules", "list", "-f", str(path), "--json"]
        )
        assert out.exit_code == 0, out.output
        assert '"paused": true' in out.output
        out = await asyncio.to_thread(
            runner.invoke, app, ["schedules", "resume", name, "-f", str(path)]
        )
        assert out.exit_code == 0
        out = await asyncio.to_thread(
            runner.invoke, app, ["schedules", "trigger", "nope", "-f", str(path)]
        )
        assert out.exit_code == 1 and "no schedule 'nope'" in out.output
    finally:
        await cleanup(dev_env.client, tag)


async def test_a_worker_killed_mid_expiry_is_taken_over_with_exact_totals(
    dev_env: WorkflowEnvironment, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    count = 3000
    lots(engine, count, datetime(2026, 1, 1, tzinfo=UTC))
    queue = f"crash-{uuid.uuid4()}"
    env = stack_env(tmp_path) | {
        "CRMFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "CRMFLOW_TASK_QUEUE": queue,
        "CRMFLOW_DATABASE_URL": db_url,
        "CRMFLOW_DISPATCH_INTERVAL_SECONDS": "3600",
    }
    inp = AutomationInput(
        schedule=f"crash-{uuid.uuid4().hex[:6]}",
        automation="points_expiry",
        timezone="UTC",
        params={"chunk_size": 10, "notice_days": 0},
        as_of=datetime(2026, 6, 1, tzinfo=UTC),
        heartbeat_seconds=3,
    )
    doomed = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    expired = select(func.count()).select_from(PointsLedgerRow)
    try:
        assert doomed.stdout is not None
        assert "worker polling" in doomed.stdout.readline()
        handle = await dev_env.client.start_workflow(
            AutomationWorkflow.run, inp, id=f"automation-{inp.schedule}", task_queue=queue
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(expired).scalar_one() >= count // 5:
                    break
            await asyncio.sleep(0.02)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    with engine.connect() as conn:
        at_kill = conn.execute(expired).scalar_one()
    assert 0 < at_kill < count  # killed in the middle, not after
    acts = AutomationActivities(engine, Settings(), {})
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[AutomationWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            summary = await asyncio.wait_for(handle.result(), timeout=120)
    assert summary.status == "completed"
    assert summary.counts["lots_expired"] == count
    assert summary.counts["points_expired"] == 7 * count
    with engine.connect() as conn:
        entries = conn.execute(
            select(
                func.count(),
                func.count(func.distinct(PointsLedgerRow.lot_id)),
                func.sum(PointsLedgerRow.amount),
            )
        ).one()
        left = conn.execute(select(func.sum(PointsLotRow.remaining))).scalar_one()
    assert (entries[0], entries[1], float(entries[2])) == (count, count, -7.0 * count)
    assert float(left) == 0
