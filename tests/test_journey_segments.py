"""Segment entries: everyone matching the condition is queued once per run; a journey with a
schedule gets a Temporal Schedule that follows its status."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from sqlalchemy import Engine, select
from temporalio.client import ScheduleActionStartWorkflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.channels.outbox import OutboxChannel
from activities.journey_activities import JourneyActivities
from crmflow.cli import app
from crmflow.contracts.journeys import segment_schedule_id
from crmflow.segment_schedules import sync_schedule
from crmflow.segments import enter_segment
from journeys.models import Journey
from store.db import utcnow
from store.journeys import deploy_journey, ensure_enrollment, move_enrollment
from store.models import JourneyCommandRow
from tests.rules_helpers import REPO, deploy_dir, event, import_rows
from tests.test_journey_workflow import settings
from workflows.segment_entry import SegmentEntryWorkflow

runner = CliRunner()
VIP_ONCE = """
journey: vip-once
entry: {segment: {all: [tags contains big-spender, consent.email == true]}, once: true}
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template: {subject: "For our best customers", text: "thanks"}
    next: done
  done: {type: exit}
"""
VIP_WEEKLY = VIP_ONCE.replace("vip-once", "vip-weekly").replace(
    "once: true}", 'schedule: "0 9 * * 1", timezone: Asia/Shanghai}'
)


def seed(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(
        engine,
        tmp_path / "c.jsonl",
        [
            {"customer_id": "big", "consent": {"email": True}},
            {"customer_id": "big-no-mail", "consent": {"email": False}},
            {"customer_id": "small", "consent": {"email": True}},
        ],
        "customers",
    )
    import_rows(
        engine,
        tmp_path / "e.jsonl",
        [
            event(1, "big", amount=5000.0),  # the big-spender rule tags it
            event(2, "big-no-mail", amount=5000.0),
            event(3, "small", amount=10.0),
        ],
    )


def queued(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                select(JourneyCommandRow.customer_id).where(
                    JourneyCommandRow.command == "enroll",
                    JourneyCommandRow.dedupe_key.startswith("segment:"),
                )
            ).scalars()
        )


def test_deploying_a_once_segment_queues_everyone_in_it_once(
    engine: Engine, cli_env: Path, tmp_path: Path
) -> None:
    seed(engine, tmp_path)
    file = tmp_path / "vip.yaml"
    file.write_text(VIP_ONCE)
    (tmp_path / "program.yaml").write_text((REPO / "examples/program.yaml").read_text())
    result = runner.invoke(app, ["journeys", "deploy", str(file), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["segment"] == {
        "journey": "vip-once",
        "run": "once",
        "customers": 3,
        "matched": 1,
        "queued": 1,
        "refused": {},
    }
    assert queued(engine) == ["big"]
    again = enter_segment(engine, "vip-once", "once")  # the same run: nobody twice
    assert (again.matched, again.queued) == (1, 0)
    assert again.refused == {"already queued in this run": 1}
    later = runner.invoke(app, ["journeys", "enter", "vip-once", "--run", "r2", "--json"])
    assert json.loads(later.stdout)["queued"] == 1  # a new run queues again

    # once "big" is enrolled, entering again says who did not start, and why
    with engine.begin() as conn:
        ensure_enrollment(
            conn, workflow_id="journey:vip-once:big:1", journey="vip-once", version="v",
            customer_id="big", entry_no=1, entered_at=utcnow(), node="hi",
        )  # fmt: skip
    third = runner.invoke(app, ["journeys", "enter", "vip-once", "--run", "r3"])
    assert third.exit_code == 0, third.output
    assert "0 enrollment(s) queued to start, 1 not started (1 already enrolled)" in " ".join(
        third.stdout.split()
    )
    with engine.begin() as conn:
        move_enrollment(
            conn, "journey:vip-once:big:1", node="done", at=utcnow(), finish="completed"
        )
    fourth = runner.invoke(app, ["journeys", "enter", "vip-once", "--run", "r4", "--json"])
    assert json.loads(fourth.stdout)["refused"] == {"re-entry: never": 1}


def test_a_bad_cron_expression_is_refused_with_the_reason() -> None:
    text = VIP_WEEKLY.replace("0 9 * * 1", "every monday")
    try:
        Journey.model_validate(yaml.safe_load(text))
    except ValueError as exc:
        assert "not a cron expression" in str(exc)
    else:
        raise AssertionError("accepted a bad cron expression")


async def test_a_scheduled_segment_gets_a_schedule_that_follows_the_journey(
    dev_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    seed(engine, tmp_path)
    name = f"vip-weekly-{uuid.uuid4().hex[:6]}"
    j = Journey.model_validate(yaml.safe_load(VIP_WEEKLY.replace("vip-weekly", name)))
    with engine.begin() as conn:
        deploy_journey(conn, name, j.definition(), VIP_WEEKLY, "test")
    queue = f"segments-{uuid.uuid4()}"
    client = dev_env.client
    assert "created" in await sync_schedule(client, queue, j, "active")
    handle = client.get_schedule_handle(segment_schedule_id(name))
    desc = await handle.describe()
    assert desc.schedule.spec.time_zone_name == "Asia/Shanghai"
    assert desc.schedule.spec.cron_expressions == ["0 9 * * 1"] or desc.schedule.spec.calendars
    assert isinstance(desc.schedule.action, ScheduleActionStartWorkflow)
    assert not desc.schedule.state.paused
    assert "updated" in await sync_schedule(client, queue, j, "paused")
    assert (await handle.describe()).schedule.state.paused
    # a run of the schedule: the segment is evaluated by a worker's activity
    acts = JourneyActivities(engine, settings(), {"outbox": OutboxChannel(engine)})
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            client,
            task_queue=queue,
            workflows=[SegmentEntryWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            result = await client.execute_workflow(
                SegmentEntryWorkflow.run, name, id=f"seg-{uuid.uuid4()}", task_queue=queue
            )
    assert (result["matched"], result["queued"]) == (1, 1)
    assert queued(engine) == ["big"]
    assert await sync_schedule(client, queue, j, "archived") == "schedule deleted"


def test_validation_knows_the_data_the_rules_hand_over(tmp_path: Path) -> None:
    """`journeys validate` reads the rules beside the programme: the coupon the churn rule's
    retention action issues is `data.coupon_code` for winback; a misspelt name is refused."""
    import shutil

    shutil.copy(REPO / "examples/program.yaml", tmp_path / "program.yaml")
    shutil.copytree(REPO / "examples/rules", tmp_path / "rules")
    (tmp_path / "journeys").mkdir()
    good = (REPO / "examples/journeys/winback.yaml").read_text()
    assert "data.coupon_code" in good
    (tmp_path / "journeys/winback.yaml").write_text(good)
    ok = runner.invoke(app, ["journeys", "validate", str(tmp_path / "journeys/winback.yaml")])
    assert ok.exit_code == 0, ok.output
    (tmp_path / "journeys/winback.yaml").write_text(good.replace("coupon_code", "coupon_kode"))
    bad = runner.invoke(app, ["journeys", "validate", str(tmp_path / "journeys/winback.yaml")])
    assert bad.exit_code == 1
    assert "data has no 'coupon_kode' (it has: coupon_code" in " ".join(bad.output.split())
