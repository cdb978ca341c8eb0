"""No personal data in Temporal: real journeys run on the time-skipping server for customers
whose name, e-mail, phone, attributes and event properties are distinctive strings, and no
payload of any event of any of their workflows' histories (inputs, activity requests and
results, signals, memos, search attributes, failures, results) holds one of those strings.

Erasing a customer therefore never needs to rewrite a workflow history. Enrollments that
began before the change (their histories hold the `journey_facts` profile) still replay.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, select
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.channels.base import Channel, TransientSendError
from activities.channels.outbox import OutboxChannel
from activities.channels.webhook import WebhookChannel
from activities.journey_activities import (
    JourneyActivities,
    _failures_by_kind,
    _public,
    _transient,
)
from crmflow.contracts.journeys import (
    DeliverRequest,
    DeliverResult,
    EnrollmentInput,
    EnrollmentResult,
    FactsRequest,
    enrollment_workflow_id,
)
from crmflow.dispatch import dispatch_once
from journeys.models import Journey
from store.journeys import content_version, deploy_journey
from store.models import DeliveryRow
from tests.channel_servers import RecordingHTTPServer
from tests.rules_helpers import REPO, deploy_dir, import_rows
from tests.test_journey_workflow import customers, outbox, settings
from workflows.journey import JourneyWorkflow
from workflows.segment_entry import SegmentEntryWorkflow

HISTORIES = Path(__file__).parent / "histories"

NAME = "Zelda Quixotebrand"
EMAIL = "zelda.quixote8841@canarymail.example.com"
PHONE = "+8613987654321"
NOTE = "PII-ATTR-Marmalade-Orchid-5531"
SIGN_UP_NOTE = "PII-EVENT-Thistle-Lantern-7712"
CLICK_COMMENT = "PII-CLICK-Quartz-Comment-3391"
GIFT_MESSAGE = "PII-PURCHASE-Walrus-Sonnet-2280"
# the strings no history may hold (parts too: a name split, a phone without its +)
CANARIES = [
    NAME,
    "Quixotebrand",
    EMAIL,
    "zelda.quixote8841",
    "canarymail",
    PHONE,
    PHONE[1:],
    NOTE,
    SIGN_UP_NOTE,
    CLICK_COMMENT,
    GIFT_MESSAGE,
]

TOUR = """
journey: pii-tour
entry: {event: sign_up, when: event.channel == "app"}
goal:
  event: purchase
  within_days: 400
  when: {all: ["event.amount >= 10", "attributes.vip == true"]}
exit_on: [unsubscribed]
channels: [email, sms, webhook]
start: hello
nodes:
  hello:
    type: message
    channel: email
    template:
      subject: "Hello {{ customer.name }}"
      text: "{{ customer.attributes.note }} {{ customer.phone }} {{ unsubscribe_url }}"
    next: check
  check:
    type: branch
    cases:
      - {when: attributes.vip == true, next: text}
    default: done
  text:
    type: message
    channel: sms
    template: {text: "Hi {{ customer.name }}, {{ customer.email }}"}
    next: hook
  hook:
    type: message
    channel: webhook
    template: {subject: "{{ customer.name }}", text: "{{ customer.attributes.note }}"}
    next: birthday
  birthday:
    type: delay
    until_attribute: birthday
    offset_days: -1
    at_local_time: "10:00"
    next: morning
  morning: {type: delay, until_local_time: "09:00", next: wait}
  wait:
    type: wait_for
    event: clicked
    when: event.link == "offer"
    timeout: 5d
    on_event: long
    on_timeout: done
  long: {type: delay, duration: 30d, next: done}
  done: {type: exit}
"""

SEGMENT = """
journey: pii-segment
entry: {segment: "attributes.vip == true", schedule: "0 9 * * *"}
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template: {subject: "Hi {{ customer.name }}", text: "{{ customer.attributes.note }}"}
    next: check
  check:
    type: branch
    cases:
      - {when: 'attributes.note == "nobody"', next: done}
    default: later
  later: {type: delay, until_attribute: birthday, next: done}
  done: {type: exit}
"""


def cid(name: str, engine: Engine) -> str:
    """A customer id per database: both runs share one server, which never reuses ids."""
    return f"{name}-{engine.dialect.name}-{uuid.uuid4().hex[:6]}"


def deploy(engine: Engine, text: str) -> Journey:
    j = Journey.model_validate(yaml.safe_load(text))
    with engine.begin() as conn:
        deploy_journey(conn, j.journey, j.definition(), text, "test")
    return j


def canary_customer(engine: Engine, tmp_path: Path, customer_id: str, birthday: str) -> None:
    customers(
        engine,
        tmp_path,
        {
            "customer_id": customer_id,
            "name": NAME,
            "email": EMAIL,
            "phone": PHONE,
            "consent": {"email": True, "sms": True, "webhook": True},
            "attributes": {"vip": True, "note": NOTE, "birthday": birthday},
        },
    )


@asynccontextmanager
async def journey_worker(
    env: WorkflowEnvironment, engine: Engine, webhook_url: str | None = None
) -> AsyncIterator[str]:
    queue = f"pii-{uuid.uuid4()}"
    channels: dict[str, Channel] = {"outbox": OutboxChannel(engine)}
    if webhook_url:
        channels["webhook"] = WebhookChannel(webhook_url, "whsec-pii", attempts=1, base_delay=0)
    acts = JourneyActivities(engine, settings(), channels)
    with ThreadPoolExecutor(8) as pool:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[JourneyWorkflow, SegmentEntryWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            yield queue


async def position(env: WorkflowEnvironment, workflow_id: str) -> str | None:
    node: str | None = (await env.client.get_workflow_handle(workflow_id).query("position"))["node"]
    return node


async def until_at(env: WorkflowEnvironment, workflow_id: str, node: str, step: timedelta) -> None:
    """Let (simulated) time pass, `step` at a time, until the enrollment is at `node` and
    waits there (time is skipped only while no activity runs: the node's entry is recorded)."""
    for _ in range(200):
        if await position(env, workflow_id) == node:
            await env.sleep(timedelta(minutes=1))
            return
        await env.sleep(step)
    raise AssertionError(f"{workflow_id} never reached {node}")


async def histories(env: WorkflowEnvironment, workflow_id: str) -> list[WorkflowHistory]:
    """Every run's history of a workflow, the latest first (continue-as-new included)."""
    out: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        out.append(history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
        if run_id is None:
            return out


def _payload_texts(node: Any, into: list[str]) -> None:
    """The decoded data of every payload under `node` (a history as JSON), and every string
    in it when it is JSON."""
    if isinstance(node, dict):
        data = node.get("data")
        if "metadata" in node and isinstance(data, str):
            raw = base64.b64decode(data)
            into.append(raw.decode("utf-8", "replace"))
            with suppress(ValueError):
                _strings(json.loads(raw), into)
        for value in node.values():
            _payload_texts(value, into)
    elif isinstance(node, list):
        for value in node:
            _payload_texts(value, into)


def _strings(value: Any, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            into.append(str(k))
            _strings(v, into)
    elif isinstance(value, list):
        for v in value:
            _strings(v, into)


def leaks(history: WorkflowHistory) -> list[tuple[str, str]]:
    """(event type, canary) for every canary found anywhere in the history: the JSON as the
    server hands it over (failures, plain fields) and each payload decoded."""
    found: list[tuple[str, str]] = []
    for event in json.loads(history.to_json())["events"]:
        texts = [json.dumps(event, ensure_ascii=False)]
        _payload_texts(event, texts)
        for canary in CANARIES:
            if any(canary.casefold() in text.casefold() for text in texts):
                found.append((str(event.get("eventType")), canary))
    return found


def decoded(history: WorkflowHistory) -> str:
    texts: list[str] = []
    _payload_texts(json.loads(history.to_json()), texts)
    return "\n".join(texts)


async def assert_no_personal_data(env: WorkflowEnvironment, workflow_id: str, *ids: str) -> int:
    """No canary in any run of `workflow_id`; what the workflow should name is there (`ids`
    in the history as JSON and in its decoded payloads: the search does read them). Each
    run replays (the patches are where they were). The number of events looked at."""
    runs = await histories(env, workflow_id)
    events = 0
    replayer = Replayer(
        workflows=[JourneyWorkflow, SegmentEntryWorkflow], data_converter=pydantic_data_converter
    )
    for history in runs:
        assert leaks(history) == [], workflow_id
        assert (await replayer.replay_workflow(history)).replay_failure is None
        events += len(history.events)
    text = "\n".join(decoded(h) + h.to_json() for h in runs)
    for expected in ids:
        assert expected in text, expected
    return events


# --------------------------------------------------------------------------- journeys


async def test_an_event_entered_journey_carries_no_personal_data_into_temporal(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """Entry event with free text, e-mail, branch on an attribute, SMS, a webhook that fails
    (its answer quoting the address), delays on the customer's birthday and local time, a
    wait for a click matched on a property, a goal on an event property and an attribute."""
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, TOUR)
    customer = cid("PII1", engine)
    soon = await ts_env.get_current_time() + timedelta(days=10)
    canary_customer(engine, tmp_path, customer, f"1987-{soon:%m-%d}")
    wid = enrollment_workflow_id("pii-tour", customer, 1)

    def event(n: str, type_: str, at: datetime, **props: Any) -> None:
        row = {
            "event_id": f"{customer}-{n}",
            "customer_id": customer,
            "type": type_,
            "occurred_at": at.isoformat(),
            "properties": props,
        }
        report = import_rows(engine, tmp_path / f"{n}.jsonl", [row])
        assert report.rejected == 0, report.faults

    answer = {"error": f"recipient {EMAIL} ({PHONE}) refused: {NAME}"}
    with RecordingHTTPServer([503], default=400, answer=answer) as hook:
        async with journey_worker(ts_env, engine, hook.url) as queue:
            event("signup", "sign_up", await ts_env.get_current_time(), channel="app",
                  note=SIGN_UP_NOTE)  # fmt: skip
            report = await dispatch_once(ts_env.client, engine, queue)
            assert report.started == 1, report
            await until_at(ts_env, wid, "wait", timedelta(days=1))
            now = await ts_env.get_current_time()
            event("click-other", "clicked", now, link="other", comment=CLICK_COMMENT)
            event("click", "clicked", now, link="offer", comment=CLICK_COMMENT)
            assert (await dispatch_once(ts_env.client, engine, queue)).signalled == 2
            await until_at(ts_env, wid, "long", timedelta(hours=1))
            now = await ts_env.get_current_time()
            event("buy-small", "purchase", now, amount=5, gift_message=GIFT_MESSAGE)
            event("buy", "purchase", now, amount=25, gift_message=GIFT_MESSAGE)
            assert (await dispatch_once(ts_env.client, engine, queue)).signalled == 2
            await ts_env.sleep(timedelta(minutes=1))
            handle = ts_env.client.get_workflow_handle(wid, result_type=EnrollmentResult)
            result = await handle.result()
        assert len(hook.requests) == 2  # a 503 (retried by Temporal), then a 400
        assert NAME in hook.requests[0].body.decode()  # the message went out

    assert result.outcome == "converted", result
    assert result.reason == f"goal purchase ({customer}-buy)"
    assert result.path == [
        "hello", "check", "text", "hook", "birthday", "morning", "wait", "long",
    ]  # fmt: skip
    sent = outbox(engine, customer)
    assert [m.channel for m in sent] == ["email", "sms"]
    assert NAME in (sent[0].subject or "") and NOTE in (sent[0].body_text or "")
    with engine.connect() as conn:
        hook_row = conn.execute(
            select(DeliveryRow.status, DeliveryRow.meta).where(
                DeliveryRow.customer_id == customer, DeliveryRow.channel == "webhook"
            )
        ).one()
    # the store keeps the channel's own words; the workflow got a fixed reason
    assert hook_row.status == "failed" and EMAIL in str(hook_row.meta["error"])
    # the decisions came from activities; the send's failure is in the history by kind only
    # (the test server keeps no failure of a retried attempt: see the test of `_transient`)
    events = await assert_no_personal_data(
        ts_env,
        wid,
        customer,
        '"holds":[true]',
        "journey_delay",
        "failed: the channel's answer is in the delivery record",
    )
    assert events > 40


async def test_segment_entry_and_its_enrollment_carry_no_personal_data(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, SEGMENT)
    customer = cid("PII2", engine)
    canary_customer(engine, tmp_path, customer, "1987-03-09")
    seg_id = f"segment-pii-{uuid.uuid4().hex[:6]}"
    async with journey_worker(ts_env, engine) as queue:
        run = await ts_env.client.execute_workflow(
            "SegmentEntryWorkflow", "pii-segment", id=seg_id, task_queue=queue
        )
        assert (run["matched"], run["queued"]) == (1, 1)
        assert (await dispatch_once(ts_env.client, engine, queue)).started == 1
        wid = enrollment_workflow_id("pii-segment", customer, 1)
        await ts_env.sleep(timedelta(days=400))
        result = await ts_env.client.get_workflow_handle(wid, result_type=EnrollmentResult).result()
    assert result.path == ["hi", "check", "later", "done"]
    assert [m.subject for m in outbox(engine, customer)] == [f"Hi {NAME}"]
    await assert_no_personal_data(ts_env, seg_id, "pii-segment")
    await assert_no_personal_data(ts_env, wid, customer, "segment_run")


async def test_an_enrollment_continued_as_new_carries_no_personal_data(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """Each run's input carries the enrollment's position, path and any events still to
    look at (by id, as the dispatcher signalled them): nothing personal in any run."""
    deploy_dir(engine, REPO / "examples/rules")
    j = deploy(engine, TOUR.replace("on_timeout: done", "on_timeout: long"))
    customer = cid("PII3", engine)
    soon = await ts_env.get_current_time() + timedelta(days=3)
    canary_customer(engine, tmp_path, customer, f"1990-{soon:%m-%d}")
    definition = j.definition()
    wid = enrollment_workflow_id(j.journey, customer, 1)
    async with journey_worker(ts_env, engine) as queue:
        await ts_env.client.start_workflow(
            JourneyWorkflow.run,
            EnrollmentInput(
                journey=j.journey,
                version=content_version(json.dumps(definition, sort_keys=True)),
                definition=definition,
                customer_id=customer,
                continue_after_nodes=2,
            ),
            id=wid,
            task_queue=queue,
        )
        await until_at(ts_env, wid, "wait", timedelta(days=1))
        row = {
            "event_id": f"{customer}-buy",
            "customer_id": customer,
            "type": "purchase",
            "occurred_at": (await ts_env.get_current_time()).isoformat(),
            "properties": {"amount": 50, "gift_message": GIFT_MESSAGE},
        }
        import_rows(engine, tmp_path / "buy.jsonl", [row])
        assert (await dispatch_once(ts_env.client, engine, queue)).signalled == 1
        await ts_env.sleep(timedelta(minutes=1))
        result = await ts_env.client.get_workflow_handle(wid, result_type=EnrollmentResult).result()
    assert result.outcome == "converted", result
    runs = await histories(ts_env, wid)
    assert len(runs) >= 3
    await assert_no_personal_data(ts_env, wid, customer)


# --------------------------------------------------------------------------- pieces


def test_a_delivery_result_never_quotes_a_channel_or_a_template() -> None:
    kept = [
        "no consent for sms",
        "no phone for sms",
        "frequency cap: 3 messages in 7 days",
        "the customer is not in the store",
    ]
    for why in kept:
        assert _public(DeliverResult(status="suppressed", reason=why)).reason == why
    refused = _public(DeliverResult(status="failed", reason=f"'{PHONE}' is not in E.164 form"))
    assert refused.status == "failed" and PHONE not in str(refused.reason)
    template = _public(DeliverResult(status="failed", reason=f"template did not render: {NOTE}"))
    assert template.reason == "template did not render (the delivery record says why)"


def test_a_send_to_retry_fails_by_kind_only() -> None:
    """A retried activity's failure is kept in the history (with its cause): the channel's
    answer, which may quote the address, is not in it."""
    at = datetime.now().astimezone()
    req = DeliverRequest(
        workflow_id="w", journey="j", version="v", customer_id="c", node="n", step_key="k",
        channel="sms", template={"text": "t"}, entered_at=at, at=at,
    )  # fmt: skip
    try:
        try:
            raise TransientSendError(f"HTTP 503: {PHONE} is busy")
        except TransientSendError as exc:
            raise _transient(req, exc) from None
    except ApplicationError as err:
        assert PHONE not in str(err) and err.type == "TransientSendError"
        assert err.__cause__ is None and err.__suppress_context__


async def test_an_activity_fails_by_kind_only() -> None:
    """Any other error of a journey activity (a database error lists its parameters) is
    handed to Temporal by its type name; crmflow's own ApplicationErrors pass as they are."""

    @_failures_by_kind
    def broken(why: str) -> None:
        raise ValueError(f"duplicate key ({EMAIL}, {PHONE})")

    @_failures_by_kind
    async def refused(why: str) -> None:
        raise ApplicationError(why, non_retryable=True)

    try:
        broken("x")
    except ApplicationError as err:
        assert err.type == "ValueError" and EMAIL not in str(err) and err.__cause__ is None
    try:
        await refused("no customer 'C1'")
    except ApplicationError as err:
        assert str(err) == "no customer 'C1'" and err.non_retryable


def test_journey_facts_for_old_enrollments_brings_no_name_or_address(
    engine: Engine, tmp_path: Path
) -> None:
    customer = cid("PII4", engine)
    canary_customer(engine, tmp_path, customer, "1987-03-09")
    acts = JourneyActivities(engine, settings(), {"outbox": OutboxChannel(engine)})
    got = acts.facts(FactsRequest(customer_id=customer, at=datetime.now().astimezone()))
    assert set(got) == {"timezone", "attributes", "facts"}
    text = json.dumps(got)
    for canary in (NAME, EMAIL, PHONE):
        assert canary not in text


async def test_an_enrollment_from_before_the_change_still_replays() -> None:
    """Recorded with the workflow as it was (`journey_facts` for the branch, the birthday
    delay and the goal's condition on the profile): it replays unchanged."""
    path = HISTORIES / "journey_before_facts_stay_in_store.json"
    history = WorkflowHistory.from_json("journey:replay-old:R1:1", path.read_text())
    assert "journey_facts" in history.to_json()
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None
