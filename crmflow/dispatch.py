"""Hand journey commands from the outbox to Temporal, after the events' transactions commit.

The outbox (`journey_outbox`) is written in the same transaction as the event and the
rules' effects, so a crash between the commit and Temporal loses nothing: a row stays
pending until a dispatcher has handed it over. Handing over twice is harmless:

- an enrollment's workflow id is (journey, customer, entry number) and ids are never
  reused, so a second start of the same entry is refused by Temporal;
- an event signal carries the event id, and the workflow ignores one it has seen.

What goes to Temporal names the customer and the event by id only: an enrollment's input is
the journey and its definition, the customer's id and the enroll command's data (a rule
file's constants, a segment run); an event's signal is its id, type and time. Its
properties stay in the store (the workflow's `journey_conditions` activity reads them there
when a condition tests them), so erasing a customer never needs to rewrite a history.

Enroll commands (a rule's `enroll_journey`) and events of a journey's entry type start an
enrollment when the journey is active and its re-entry policy allows; every event is also
signalled to the customer's running enrollments of that journey (goals, exits, waits).
Any number of workers may run a dispatcher at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from crmflow import metrics
from crmflow.contracts.journeys import (
    JOURNEY_EVENT_SIGNAL,
    EnrollmentInput,
    JourneyEvent,
    enrollment_workflow_id,
)
from crmflow.processing import active_pack, evaluate_facts
from journeys.conditions import evaluate
from journeys.models import EventEntry, Journey, ReentryPolicy
from store import journeys as jstore
from store.db import utcnow
from store.models import JourneyCommandRow

log = logging.getLogger(__name__)


@dataclass
class DispatchReport:
    commands: int = 0
    started: int = 0
    signalled: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def may_enter(
    policy: str | ReentryPolicy, past: jstore.PastEnrollments, now: datetime
) -> str | None:
    """Why the customer may not enter again (None: they may)."""
    if past.active:
        return "already enrolled"
    if past.count == 0:
        return None
    if policy == "never":
        return "re-entry: never"
    assert isinstance(policy, ReentryPolicy)
    if policy.max_times is not None and past.count >= policy.max_times:
        return f"re-entry: at most {policy.max_times} times"
    if policy.after_days is not None:
        last = past.last_finished or past.last_entered
        if last is not None and now - last < timedelta(days=policy.after_days):
            return f"re-entry: {policy.after_days} days after the last enrollment"
    return None


CONCURRENCY = 20  # customers handed over at once
# New enrollments are started only while fewer workflow tasks than this wait for a worker on
# the task queue: starting faster than the workers take them only lengthens the queue, and
# with thousands in flight the workers' caches evict enrollments they must then replay.
BACKLOG_LIMIT = 40
BACKLOG_CHECK_S = 0.25  # how often the backlog is asked for while starting
# a start waits at most this long for room; then the workers are not taking tasks (none is
# running, or all are stuck) and holding back helps nobody: the rest of the pass is unpaced
MAX_HOLD_S = 5.0


class Pacer:
    """Paces starts to what the workers take: before a start, the task queue's backlog of
    workflow tasks (the server's approximate count, asked for at most every
    `BACKLOG_CHECK_S`) must be under `BACKLOG_LIMIT`. A server that does not report it is
    not paced."""

    def __init__(self, client: Client, task_queue: str, limit: int = BACKLOG_LIMIT) -> None:
        self.client = client
        self.task_queue = task_queue
        self.limit = limit
        self.backlog = 0
        self.checked = -BACKLOG_CHECK_S
        self.enabled = limit > 0
        self.held_s = 0.0  # time starts waited for room, for reports
        self._lock = asyncio.Lock()

    async def room(self) -> None:
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        async with self._lock:  # one waiter at a time: the others queue behind it
            start = loop.time()
            while True:
                now = loop.time()
                if now - self.checked >= BACKLOG_CHECK_S:
                    self.backlog = await self._backlog()
                    self.checked = loop.time()
                if now - start >= MAX_HOLD_S:
                    log.info(
                        "task queue %s: %d workflow tasks wait and none was taken in %.0f s; "
                        "the rest of this pass is not paced",
                        self.task_queue,
                        self.backlog,
                        MAX_HOLD_S,
                    )
                    self.enabled = False
                if self.backlog < self.limit or not self.enabled:
                    self.held_s += loop.time() - start
                    self.backlog += 1  # this start adds one until the next count
                    return
                await asyncio.sleep(BACKLOG_CHECK_S)

    async def _backlog(self) -> int:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        try:
            answer = await self.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self.client.namespace,
                    task_queue=TaskQueue(name=self.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    report_stats=True,
                )
            )
        except RPCError as exc:  # a server without the statistics: start unpaced
            log.info("task queue backlog not available (%s): enrollments are not paced", exc)
            self.enabled = False
            return 0
        return int(answer.stats.approximate_backlog_count) if answer.HasField("stats") else 0


async def dispatch_once(
    client: Client, engine: Engine, task_queue: str, limit: int = 500
) -> DispatchReport:
    """Hand over up to `limit` pending commands, oldest first: a customer's commands in
    order, different customers' side by side; database work off the event loop (a worker
    shares it)."""
    report = DispatchReport()
    c = JourneyCommandRow

    def pending() -> tuple[list[Any], dict[str, jstore.DeployedJourney]]:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    c.id, c.customer_id, c.journey, c.command, c.event, c.data, c.event_id, c.rule
                )
                .where(c.dispatched_at.is_(None))
                .order_by(c.id)
                .limit(limit)
            ).all()
            return list(rows), {d.name: d for d in jstore.deployed(conn)}

    rows, deployed = await asyncio.to_thread(pending)
    journeys = {name: Journey.model_validate(d.definition) for name, d in deployed.items()}
    by_customer: dict[str, list[Any]] = {}
    for row in rows:
        by_customer.setdefault(row.customer_id, []).append(row)
    gate = asyncio.Semaphore(CONCURRENCY)
    pacer = Pacer(client, task_queue)

    async def one(row: Any) -> None:
        report.commands += 1
        d = deployed.get(row.journey)
        if d is None:
            report.skip(f"journey {row.journey!r} is not deployed")
        elif row.command == "enroll":
            await _enroll(
                client, engine, task_queue, d, journeys[d.name], row.customer_id,
                row.data or {}, None, report, pacer,
            )  # fmt: skip
        else:
            data = row.data or {}
            at = data.get("occurred_at")
            ev = JourneyEvent(
                event_id=str(data.get("event_id") or row.event_id or row.id),
                type=row.event or "",
                occurred_at=datetime.fromisoformat(at) if isinstance(at, str) else utcnow(),
                # a rule's journey_event: its data are the event's properties
                properties=dict(data if row.rule is not None else data.get("properties") or {}),
            )
            signalled = _for_temporal(ev, made_by_rule=row.rule is not None)
            await _signal(client, engine, d, row.customer_id, signalled, report)
            entry = journeys[d.name].entry
            if isinstance(entry, EventEntry) and entry.event == ev.type:
                if await asyncio.to_thread(_entry_holds, engine, entry, row.customer_id, ev):
                    await _enroll(
                        client, engine, task_queue, d, journeys[d.name], row.customer_id,
                        {}, signalled, report, pacer,
                    )  # fmt: skip
                else:
                    report.skip("entry condition does not hold")

    async def customer(commands: list[Any]) -> list[int]:
        async with gate:
            for row in commands:
                await one(row)
        return [row.id for row in commands]

    done = await asyncio.gather(*(customer(cmds) for cmds in by_customer.values()))
    ids = [i for part in done for i in part]

    def mark() -> None:
        with engine.begin() as conn:
            for part in range(0, len(ids), 900):
                conn.execute(
                    update(c).where(c.id.in_(ids[part : part + 900])).values(dispatched_at=utcnow())
                )

    if ids:
        await asyncio.to_thread(mark)
    return report


def _for_temporal(ev: JourneyEvent, *, made_by_rule: bool) -> JourneyEvent:
    """The event as a signal carries it: a customer's event by id, type and time (its
    properties, which may hold anything they typed, stay in the store); an event a rule's
    `journey_event` makes keeps the rule file's properties (no customer data in them)."""
    if made_by_rule:
        return ev
    return ev.model_copy(update={"properties": {}, "properties_in_store": True})


def _entry_holds(engine: Engine, entry: EventEntry, customer_id: str, ev: JourneyEvent) -> bool:
    if entry.when is None:
        return True
    facts: dict[str, Any] = {}
    with engine.connect() as conn:
        pack = active_pack(conn)
        if pack is not None:
            facts = evaluate_facts(conn, pack, customer_id, ev.occurred_at)
    facts["event.type"] = ev.type
    facts.update({f"event.{k}": v for k, v in ev.properties.items()})
    return evaluate(entry.when, facts)


async def _enroll(
    client: Client,
    engine: Engine,
    task_queue: str,
    d: jstore.DeployedJourney,
    journey: Journey,
    customer_id: str,
    data: dict[str, Any],
    start_event: JourneyEvent | None,
    report: DispatchReport,
    pacer: Pacer | None = None,
) -> None:
    if d.status != "active":
        report.skip(f"journey {d.status}")
        return
    now = utcnow()

    def past() -> jstore.PastEnrollments:
        with engine.connect() as conn:
            return jstore.past_enrollments(conn, d.name, customer_id)

    before = await asyncio.to_thread(past)
    why = may_enter(journey.reentry, before, now)
    if why is not None:
        report.skip(why)
        return
    entry_no = before.count + 1
    wid = enrollment_workflow_id(d.name, customer_id, entry_no)
    inp = EnrollmentInput(
        journey=d.name,
        version=d.version,
        definition=d.definition,
        customer_id=customer_id,
        entry_no=entry_no,
        data=data,
    )
    if pacer is not None:
        await pacer.room()
    try:
        await client.start_workflow(
            "JourneyWorkflow",
            inp,
            id=wid,
            task_queue=task_queue,
            # an entry is started once, ever: a second hand-over of the same command is refused
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            start_signal=JOURNEY_EVENT_SIGNAL if start_event else None,
            start_signal_args=[start_event] if start_event else [],
        )
        report.started += 1
        metrics.record_enrollment_started(d.name)
    except WorkflowAlreadyStartedError:
        report.skip("already started")

    def remember() -> None:
        with engine.begin() as conn:
            jstore.ensure_enrollment(
                conn,
                workflow_id=wid,
                journey=d.name,
                version=d.version,
                customer_id=customer_id,
                entry_no=entry_no,
                entered_at=now,
                node=journey.start,
            )

    await asyncio.to_thread(remember)


async def _signal(
    client: Client,
    engine: Engine,
    d: jstore.DeployedJourney,
    customer_id: str,
    ev: JourneyEvent,
    report: DispatchReport,
) -> None:
    def active() -> list[str]:
        with engine.connect() as conn:
            return jstore.past_enrollments(conn, d.name, customer_id).active

    for wid in await asyncio.to_thread(active):
        try:
            await client.get_workflow_handle(wid).signal(JOURNEY_EVENT_SIGNAL, ev)
            report.signalled += 1
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            report.skip("enrollment already finished")  # its row is updated by its last step


async def dispatch_forever(
    client: Client, engine: Engine, task_queue: str, interval: float, stop: asyncio.Event
) -> None:
    """A worker's dispatcher: hand over what is pending every `interval` seconds."""
    while not stop.is_set():
        try:
            report = await dispatch_once(client, engine, task_queue)
            if report.commands:
                log.info("dispatched %s", report)
        except Exception:  # keep dispatching: the rows stay pending and are retried
            log.exception("journey dispatch failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
