"""A worker killed (SIGKILL) while 200 enrollments are in flight: another worker finishes
every one of them, and no message is sent twice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine, func, select
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.channels.outbox import OutboxChannel
from activities.journey_activities import JourneyActivities
from crmflow.dispatch import dispatch_once
from journeys.models import Journey
from store.journeys import deploy_journey
from store.models import DeliveryRow, EnrollmentRow, JourneyCommandRow, OutboxMessageRow
from tests.conftest import REPO
from tests.test_end_to_end import stack_env
from tests.test_journey_workflow import customers, settings
from workflows.journey import JourneyWorkflow

COUNT = 200
QUICK = """
journey: quick
entry: rule
channels: [email]
start: one
nodes:
  one:
    type: message
    channel: email
    template: {subject: "One", text: "1"}
    next: pause
  pause: {type: delay, duration: 2s, next: two}
  two:
    type: message
    channel: email
    template: {subject: "Two", text: "2"}
    next: done
  done: {type: exit}
"""


def _count(engine: Engine, stmt: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())  # type: ignore[call-overload]


@pytest.mark.devserver
async def test_a_killed_worker_sends_nothing_twice(
    dev_env: WorkflowEnvironment, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    j = Journey.model_validate(yaml.safe_load(QUICK))
    with engine.begin() as conn:
        deploy_journey(conn, "quick", j.definition(), QUICK, "test")
    ids = [f"K{n}-{uuid.uuid4().hex[:6]}" for n in range(COUNT)]
    customers(engine, tmp_path, *({"customer_id": cid} for cid in ids))
    with engine.begin() as conn:
        conn.execute(
            JourneyCommandRow.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "dedupe_key": f"enroll:{cid}",
                    "customer_id": cid,
                    "journey": "quick",
                    "command": "enroll",
                    "data": {},
                    "created_at": datetime.now(UTC),
                }
                for cid in ids
            ],
        )
    queue = f"crash-{uuid.uuid4()}"
    env = stack_env(tmp_path) | {
        "CRMFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "CRMFLOW_TASK_QUEUE": queue,
        "CRMFLOW_DATABASE_URL": db_url,
        "CRMFLOW_QUIET_HOURS_START": "00:00",
        "CRMFLOW_QUIET_HOURS_END": "00:00",
        "CRMFLOW_FREQUENCY_CAP_MESSAGES": "0",
        "CRMFLOW_DISPATCH_INTERVAL_SECONDS": "3600",
    }
    doomed = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout is not None
        assert "worker polling" in doomed.stdout.readline()
        # the worker's own dispatcher hands the same commands over at the same time: each
        # entry still starts once (the rest are "already started" / "already enrolled")
        report = await dispatch_once(dev_env.client, engine, queue)
        assert report.commands == COUNT
        sent = select(func.count()).select_from(OutboxMessageRow)
        deadline = time.monotonic() + 60
        while _count(engine, sent) < COUNT // 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _count(engine, sent) < 2 * COUNT  # killed in the middle, not after
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    done = (
        select(func.count()).select_from(EnrollmentRow).where(EnrollmentRow.status == "completed")
    )
    # another worker takes over the queue: the dead one's activities time out and retry
    acts = JourneyActivities(engine, settings(), {"outbox": OutboxChannel(engine)})
    with ThreadPoolExecutor(16) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[JourneyWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            deadline = time.monotonic() + 150  # the dead worker's sends time out after 45 s
            while _count(engine, done) < COUNT and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
    assert _count(engine, done) == COUNT
    with engine.connect() as conn:
        per_customer = conn.execute(
            select(OutboxMessageRow.customer_id, func.count()).group_by(
                OutboxMessageRow.customer_id
            )
        ).all()
        statuses = conn.execute(
            select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)
        ).all()
    assert sorted(n for _, n in per_customer) == [2] * COUNT  # one "One" and one "Two" each
    assert dict(statuses) == {"sent": 2 * COUNT}
