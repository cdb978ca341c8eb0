"""From an event to a journey: the outbox row written with the event is handed to Temporal
by the dispatcher (start, signal), once, honouring status and re-entry."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from sqlalchemy import Engine, select, update
from temporalio.testing import WorkflowEnvironment

from crmflow.contracts.journeys import EnrollmentResult
from crmflow.dispatch import dispatch_once
from journeys.models import Journey
from store.journeys import deploy_journey, set_status
from store.models import EnrollmentRow, JourneyCommandRow
from tests.rules_helpers import REPO, deploy_dir, event, import_rows
from tests.test_journey_workflow import customers, outbox, worker

WELCOME = (REPO / "examples/journeys/welcome.yaml").read_text()
ON_SIGN_UP = """
journey: on-sign-up
entry: {event: sign_up, when: event.channel == "app"}
reentry: {after_days: 30}
goal: {event: purchase, within_days: 7}
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template: {subject: "Hi", text: "hi"}
    next: wait
  wait: {type: delay, duration: 5d, next: bye}
  bye:
    type: message
    channel: email
    template: {subject: "Bye", text: "bye"}
    next: done
  done: {type: exit}
"""


def c(name: str, engine: Engine) -> str:
    """A customer id per database: both runs share one Temporal server, which never
    reuses an enrollment's workflow id."""
    return f"{name}-{engine.dialect.name}"


def deploy(engine: Engine, text: str) -> None:
    j = Journey.model_validate(yaml.safe_load(text))
    with engine.begin() as conn:
        deploy_journey(conn, j.journey, j.definition(), text, "test")


def enrollments(engine: Engine) -> list[tuple[str, str, int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                EnrollmentRow.journey,
                EnrollmentRow.customer_id,
                EnrollmentRow.entry_no,
                EnrollmentRow.status,
            ).order_by(EnrollmentRow.workflow_id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def finished(env: WorkflowEnvironment, workflow_id: str) -> EnrollmentResult:
    """The result of an enrollment the dispatcher started (a handle of our own, so time
    is skipped explicitly first)."""
    await env.sleep(timedelta(minutes=1))
    handle = env.client.get_workflow_handle(workflow_id, result_type=EnrollmentResult)
    return await handle.result()


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(
            conn.execute(
                select(JourneyCommandRow.id).where(JourneyCommandRow.dispatched_at.is_(None))
            ).all()
        )


async def test_a_rule_enrolls_and_the_dispatcher_starts_the_journey_once(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, WELCOME)
    customers(engine, tmp_path, {"customer_id": c("W1", engine), "name": "Wen"})
    import_rows(
        engine, tmp_path / "e.jsonl", [event(1, c("W1", engine), "sign_up")]
    )  # welcome-bonus rule
    assert pending(engine) == 1
    async with worker(ts_env, engine) as queue:
        report = await dispatch_once(ts_env.client, engine, queue)
        assert (report.commands, report.started) == (1, 1)
        assert pending(engine) == 0
        await ts_env.sleep(timedelta(days=3))  # past the welcome journey's 2-day wait
        result = await finished(ts_env, f"journey:welcome:{c('W1', engine)}:1")
    assert result.outcome == "completed"
    assert [m.subject for m in outbox(engine, c("W1", engine))] == [
        "Welcome to Acme Rewards, Wen",
        "A welcome gift: 50 CNY off your first order",
    ]
    # the same command again (a dispatcher that crashed before marking it) starts nothing
    with engine.begin() as conn:
        conn.execute(update(JourneyCommandRow).values(dispatched_at=None))
    async with worker(ts_env, engine) as queue:
        again = await dispatch_once(ts_env.client, engine, queue)
    assert again.started == 0 and again.skipped == {"re-entry: never": 1}
    assert enrollments(engine) == [("welcome", c("W1", engine), 1, "completed")]


async def test_an_entry_event_enrolls_a_goal_event_converts_and_reentry_waits(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, ON_SIGN_UP)
    customers(engine, tmp_path, {"customer_id": c("S1", engine)}, {"customer_id": c("S2", engine)})
    import_rows(
        engine,
        tmp_path / "e.jsonl",
        [
            event(1, c("S1", engine), "sign_up", channel="app"),
            event(2, c("S2", engine), "sign_up", channel="web"),
        ],
    )
    async with worker(ts_env, engine) as queue:
        first = await dispatch_once(ts_env.client, engine, queue)
        assert first.started == 1 and first.skipped["entry condition does not hold"] == 1
        # (the example rules also enroll sign-ups in `welcome`, which is not deployed here)
        await ts_env.sleep(timedelta(days=1))
        at = (await ts_env.get_current_time()).isoformat()  # after entering, on the server's clock
        import_rows(
            engine, tmp_path / "e.jsonl", [event(3, c("S1", engine), "purchase", at=at, amount=5.0)]
        )
        second = await dispatch_once(ts_env.client, engine, queue)
        assert second.signalled == 1
        result = await finished(ts_env, f"journey:on-sign-up:{c('S1', engine)}:1")
        assert result.outcome == "converted"
        # signing up again within 30 days of the last enrollment: no second entry
        import_rows(
            engine, tmp_path / "e.jsonl", [event(4, c("S1", engine), "sign_up", channel="app")]
        )
        third = await dispatch_once(ts_env.client, engine, queue)
    assert third.started == 0
    assert "re-entry: 30 days after the last enrollment" in third.skipped
    assert [m.subject for m in outbox(engine, c("S1", engine))] == ["Hi"]


async def test_a_paused_journey_takes_no_one_in(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, ON_SIGN_UP)
    with engine.begin() as conn:
        set_status(conn, "on-sign-up", "paused")
    customers(engine, tmp_path, {"customer_id": c("P1", engine)})
    import_rows(engine, tmp_path / "e.jsonl", [event(1, c("P1", engine), "sign_up", channel="app")])
    async with worker(ts_env, engine) as queue:
        report = await dispatch_once(ts_env.client, engine, queue)
    assert report.started == 0 and report.skipped["journey paused"] == 1
    assert enrollments(engine) == []


async def test_a_new_version_is_used_by_new_enrollments_only(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, ON_SIGN_UP)
    first, second = c("V1", engine), c("V2", engine)
    customers(engine, tmp_path, {"customer_id": first}, {"customer_id": second})
    async with worker(ts_env, engine) as queue:
        import_rows(engine, tmp_path / "e.jsonl", [event(1, first, "sign_up", channel="app")])
        await dispatch_once(ts_env.client, engine, queue)
        await ts_env.sleep(timedelta(days=1))  # the first enrollment is in its 5-day wait
        deploy(engine, ON_SIGN_UP.replace('subject: "Bye"', 'subject: "Goodbye (v2)"'))
        import_rows(engine, tmp_path / "e.jsonl", [event(2, second, "sign_up", channel="app")])
        await dispatch_once(ts_env.client, engine, queue)
        await ts_env.sleep(timedelta(days=6))
        r1 = await finished(ts_env, f"journey:on-sign-up:{first}:1")
        r2 = await finished(ts_env, f"journey:on-sign-up:{second}:1")
    assert r1.outcome == r2.outcome == "completed"
    assert [m.subject for m in outbox(engine, first)] == ["Hi", "Bye"]  # the version it began on
    assert [m.subject for m in outbox(engine, second)] == ["Hi", "Goodbye (v2)"]
    with engine.connect() as conn:
        versions = dict(
            conn.execute(select(EnrollmentRow.customer_id, EnrollmentRow.version)).all()
        )
    assert versions[first] != versions[second]
