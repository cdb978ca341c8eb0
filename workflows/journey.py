"""JourneyWorkflow: one enrollment of one customer in one journey, interpreting its graph.

The definition comes in with the input (the version the enrollment started on), so a new
deployment never changes a running enrollment. Time is `workflow.now()`, waits are durable
timers, and every choice is a pure function of `journeys.interpret` (split variants are a
hash of journey, node and customer: stable without storing them). Customer events arrive
as signals (sent by the outbox dispatcher after the event's transaction commits): an exit
event ends the enrollment at once; a goal event within the goal window converts it; a
`wait_for` node takes the first matching event that arrives while it waits.

I/O is in activities: `journey_deliver` (checks, render, send, record — once per step key),
`journey_conditions` (whether a branch's cases or an event's condition hold on the customer's
facts and the event's properties), `journey_delay` (when a delay on the customer's calendar
ends), `journey_record` (where the enrollment is), `journey_update` (an update node's
effects). Long enrollments continue as new with their position carried over.

No personal data enters the workflow's history: the customer's profile and facts and their
events' properties stay in the store and the activities send back decisions (which case
holds, when a delay ends, whether a message went out). Enrollments that began before this
(`journey_facts` brought the whole profile in) keep doing so until they end or continue as
new: the patch `FACTS_IN_STORE` tells the two apart on replay.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.journey_activities import JourneyActivities
    from crmflow.contracts.journeys import (
        JOURNEY_EVENT_SIGNAL,
        JOURNEY_POSITION_QUERY,
        ConditionsRequest,
        DelayRequest,
        DeliverRequest,
        EnrollmentInput,
        EnrollmentPosition,
        EnrollmentResult,
        FactsRequest,
        JourneyEvent,
        RecordRequest,
        UpdateRequest,
        WaitState,
    )
    from journeys.conditions import (
        conditions_to_json,
        evaluate,
        event_facts,
        needs_profile,
        reads_event_properties,
    )
    from journeys.interpret import HOLDOUT, assign_variant, calendar_delay_until, choose_case
    from journeys.models import (
        BranchNode,
        DelayNode,
        EventEntry,
        ExitNode,
        Journey,
        MessageNode,
        SplitNode,
        UpdateNode,
        WaitForNode,
    )
    from journeys.timing import parse_duration

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["PermanentSendError"],
)
# How long before an activity on a worker that died is tried again elsewhere: store work
# takes milliseconds; a send gets longer (an SMTP or webhook provider may be slow).
ACTIVITY_TIMEOUT = timedelta(seconds=20)
SEND_TIMEOUT = timedelta(seconds=45)
# Branches, calendar delays and conditions on the customer's facts are decided by activities
# (`journey_conditions`, `journey_delay`) instead of `journey_facts` bringing the profile in.
FACTS_IN_STORE = "journey-facts-stay-in-store"
# A wait_for tests the events that arrive while it tests another one (an activity).
WAIT_FOR_EVERY_EVENT = "journey-wait-for-every-event"
# A message names the enrollment's entry event (by id) so its template can show the event's
# properties, which the deliver activity reads from the store.
DELIVER_ENTRY_EVENT = "deliver-entry-event"


class _Finished(Exception):
    def __init__(self, outcome: str, reason: str | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.reason = reason


# a definition that does not validate fails the enrollment instead of retrying it forever
@workflow.defn(name="JourneyWorkflow", failure_exception_types=[ValidationError])
class JourneyWorkflow:
    @workflow.init
    def __init__(self, inp: EnrollmentInput) -> None:
        # The state exists before the first signal or query is handled, from the input.
        self.inp = inp
        self.journey = Journey.model_validate(inp.definition)
        self.events: list[JourneyEvent] = []
        self.seen: set[str] = set()
        self.node: str | None = None
        self.since: datetime | None = None
        self.waiting: WaitState | None = None
        self.sent = 0
        self.checked = 0  # events already looked at for exit and goal

    # ------------------------------------------------------------------ messages in/out

    @workflow.signal(name=JOURNEY_EVENT_SIGNAL)
    def on_event(self, event: JourneyEvent) -> None:
        if event.event_id not in self.seen:  # the dispatcher may hand an event over twice
            self.seen.add(event.event_id)
            self.events.append(event)

    @workflow.query(name=JOURNEY_POSITION_QUERY)
    def position(self) -> EnrollmentPosition:
        inp = self.inp
        return EnrollmentPosition(
            node=self.node,
            since=self.since,
            path=list(inp.path),
            variants=dict(inp.variants),
            sent=self.sent,
            waiting=self.waiting,
        )

    # ------------------------------------------------------------------ the interpreter

    @workflow.run
    async def run(self, inp: EnrollmentInput) -> EnrollmentResult:
        self.events.extend(e for e in inp.pending if e.event_id not in self.seen)
        self.seen.update(e.event_id for e in inp.pending)
        if inp.entered_at is None:
            inp.entered_at = workflow.now()
        self.entered_at = inp.entered_at
        goal = self.journey.goal
        self.goal_until = self.entered_at + timedelta(days=goal.within_days) if goal else None
        node_id = inp.node or self.journey.start
        first = inp.node is None
        entry = self.journey.entry
        if first and inp.entry_event is None and isinstance(entry, EventEntry):
            # the dispatcher starts an event-entered enrollment with that event as its signal
            inp.entry_event = next((e for e in self.events if e.type == entry.event), None)
        try:
            if first and not isinstance(self.journey.node(node_id), MessageNode):
                await self._record(node_id, "entered", step=f"{node_id}:entered")
            steps = 0
            while True:
                await self._check_events()
                if self._should_continue_as_new(steps):
                    inp.node = node_id
                    inp.pending = self.events[self.checked :]
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(inp)
                inp.visits += 1
                inp.path.append(node_id)
                steps += 1
                self.node, self.since, self.waiting = node_id, workflow.now(), None
                nxt = await self._step(node_id)
                if nxt is None:
                    raise _Finished("completed")
                node_id = nxt
        except _Finished as done:
            if done.outcome != "completed" or not self._finished_by_deliver:
                await self._record(
                    self.node,
                    done.outcome,
                    step=f"end:{done.outcome}",
                    finish=done.outcome,
                    reason=done.reason,
                )
            return EnrollmentResult(
                outcome=done.outcome,
                reason=done.reason,
                path=list(inp.path),
                sent=self.sent,
            )

    _finished_by_deliver = False
    _delivered_before: str | None = None

    def _should_continue_as_new(self, steps: int) -> bool:
        if self.inp.continue_after_nodes and steps >= self.inp.continue_after_nodes:
            return True
        return steps > 0 and workflow.info().is_continue_as_new_suggested()

    async def _step(self, node_id: str) -> str | None:
        node = self.journey.node(node_id)
        if isinstance(node, ExitNode):
            return None
        if isinstance(node, MessageNode):
            await self._message(node_id, node)
            return node.next
        if isinstance(node, DelayNode):
            until = await self._delay_until(node)
            if until is None:
                if node.if_missing == "exit":
                    raise _Finished("exited", f"no {node.until_attribute} for delay {node_id}")
                return node.next
            self.waiting = WaitState(waiting_for="delay", until=until, detail=f"delay {node_id}")
            if not self._placed_by_deliver(node_id):
                step = self._visit(node_id, "entered")
                await self._record(node_id, "entered", step=step, wait=self.waiting)
            await self._sleep_until(until)
            return node.next
        if isinstance(node, WaitForNode):
            until = workflow.now() + parse_duration(node.timeout)
            self.waiting = WaitState(waiting_for="event", until=until, detail=node.event)
            if not self._placed_by_deliver(node_id):
                step = self._visit(node_id, "entered")
                await self._record(node_id, "entered", step=step, wait=self.waiting)
            return node.on_event if await self._wait_for(node) else node.on_timeout
        if isinstance(node, BranchNode):
            if workflow.patched(FACTS_IN_STORE):
                holds = await self._conditions([case.when for case in node.cases])
                chosen = (c.next for c, ok in zip(node.cases, holds, strict=True) if ok)
                return next(chosen, node.default)
            return choose_case(node, await self._facts())
        if isinstance(node, SplitNode):
            return await self._split(node_id, node)
        if isinstance(node, UpdateNode):
            await self._update(node_id, node)
            return node.next
        raise TypeError(f"unknown node {node_id!r}")

    # ------------------------------------------------------------------ nodes

    async def _message(self, node_id: str, node: MessageNode) -> None:
        assert self.entered_at is not None
        nxt = node.next
        finish = isinstance(self.journey.node(nxt), ExitNode)
        req = DeliverRequest(
            workflow_id=workflow.info().workflow_id,
            journey=self.inp.journey,
            version=self.inp.version,
            customer_id=self.inp.customer_id,
            entry_no=self.inp.entry_no,
            node=node_id,
            visit=self.inp.visits,
            step_key=f"{workflow.info().workflow_id}:{node_id}:{self.inp.visits}",
            channel=node.channel,
            template=node.template.model_dump(mode="json", exclude_none=True),
            data=self.inp.data,
            entry_event=(
                self.inp.entry_event
                if self.inp.entry_event is not None and workflow.patched(DELIVER_ENTRY_EVENT)
                else None
            ),
            variant=self._variant(),
            frequency_cap_policy=self.journey.frequency_cap_policy,
            rate_limit_per_minute=self.journey.rate_limit_per_minute,
            next_node=nxt,
            next_wait=self._wait_at(nxt),
            finish=finish,
            entered_at=self.entered_at,
            at=workflow.now(),
        )
        while True:
            result = await workflow.execute_activity_method(
                JourneyActivities.deliver,
                req,
                start_to_close_timeout=SEND_TIMEOUT,
                retry_policy=RETRY,
            )
            if result.status != "wait" or result.retry_at is None:
                break
            # quiet hours, a deferred frequency cap or the rate limit: wait, durably
            self.waiting = WaitState(
                waiting_for=result.waiting_for or "quiet_hours", until=result.retry_at
            )
            await self._sleep_until(result.retry_at)
            req.at = workflow.now()
        self.waiting = None
        if result.status == "sent":
            self.sent += 1
        self._finished_by_deliver = finish
        self._delivered_before = node_id

    async def _delay_until(self, node: DelayNode) -> datetime | None:
        now = workflow.now()
        if node.kind() == "duration":
            return now + node.delta()
        if workflow.patched(FACTS_IN_STORE):
            result = await workflow.execute_activity_method(
                JourneyActivities.delay,
                DelayRequest(
                    customer_id=self.inp.customer_id,
                    at=now,
                    workflow_id=workflow.info().workflow_id,
                    node=node.model_dump(mode="json", by_alias=True, exclude_unset=True),
                ),
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=RETRY,
            )
            return result.until
        profile = await self._profile()
        return calendar_delay_until(
            node, now, profile.get("timezone"), profile.get("attributes") or {}
        )

    async def _wait_for(self, node: WaitForNode) -> bool:
        """True when a matching event arrived before the timeout."""
        start = len(self.events)  # only events that arrive while waiting count
        deadline = workflow.now() + parse_duration(node.timeout)
        looked = start
        while True:
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                return False
            try:
                await workflow.wait_condition(self._more_than(looked), timeout=remaining)
            except TimeoutError:
                return False
            await self._check_events()
            tested = len(self.events)
            for ev in self.events[looked:tested]:
                if ev.type == node.event and await self._holds(node.when, ev):
                    return True
            # Events that arrived while a condition was tested (by an activity) are tested
            # next time round; enrollments from before WAIT_FOR_EVERY_EVENT passed over them.
            if len(self.events) > tested and workflow.patched(WAIT_FOR_EVERY_EVENT):
                looked = tested
            else:
                looked = len(self.events)

    async def _split(self, node_id: str, node: SplitNode) -> str | None:
        variant = assign_variant(self.inp.journey, self.inp.customer_id, node, node_id)
        self.inp.variants[node_id] = variant
        await self._record(node_id, "entered", step=f"{node_id}:split", variant=variant)
        if variant == HOLDOUT:
            raise _Finished("held_out", f"holdout at {node_id}")
        return next(v.next for v in node.variants if v.name == variant)

    async def _update(self, node_id: str, node: UpdateNode) -> None:
        await workflow.execute_activity_method(
            JourneyActivities.update,
            UpdateRequest(
                workflow_id=workflow.info().workflow_id,
                journey=self.inp.journey,
                version=self.inp.version,
                customer_id=self.inp.customer_id,
                node=node_id,
                step_key=f"{workflow.info().workflow_id}:{node_id}:{self.inp.visits}",
                effects=[e.model_dump(mode="json", exclude_none=True) for e in node.effects],
                at=workflow.now(),
            ),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=RETRY,
        )

    # ------------------------------------------------------------------ helpers

    def _wait_at(self, node_id: str | None) -> WaitState | None:
        """What the enrollment will wait for at `node_id` once a message before it is sent
        (recorded by the send, which moves the enrollment there): a duration or an event's
        timeout counted from the send; a calendar delay's end is recorded by its activity."""
        node = self.journey.node(node_id) if node_id else None
        if isinstance(node, DelayNode):
            if node.kind() == "duration":
                return WaitState(
                    waiting_for="delay", after=node.duration, detail=f"delay {node_id}"
                )
            return WaitState(waiting_for="delay", detail=f"delay {node_id}")
        if isinstance(node, WaitForNode):
            return WaitState(waiting_for="event", after=node.timeout, detail=node.event)
        return None

    def _placed_by_deliver(self, node_id: str) -> bool:
        """The message just before this node already moved the enrollment here and logged
        the entry (one activity less per message followed by a wait)."""
        path = self.inp.path
        return len(path) >= 2 and path[-2] == self._delivered_before

    def _visit(self, node_id: str, what: str) -> str:
        return f"{node_id}:{self.inp.visits}:{what}"

    def _more_than(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.events) > count

    def _variant(self) -> str | None:
        return next(reversed(self.inp.variants.values()), None) if self.inp.variants else None

    async def _sleep_until(self, until: datetime) -> None:
        """Sleep until `until`; an exit or goal event that arrives meanwhile ends the
        enrollment at once."""
        while True:
            remaining = until - workflow.now()
            if remaining <= timedelta(0):
                return
            seen = len(self.events)
            try:
                await workflow.wait_condition(self._more_than(seen), timeout=remaining)
            except TimeoutError:
                return
            await self._check_events()

    async def _check_events(self) -> None:
        """Exit and goal events among those not looked at yet."""
        goal = self.journey.goal
        while self.checked < len(self.events):
            ev = self.events[self.checked]
            self.checked += 1
            if ev.type in self.journey.exit_on:
                raise _Finished("exited", f"event {ev.type} ({ev.event_id})")
            if (
                goal is not None
                and ev.type == goal.event
                and self.goal_until is not None
                and ev.occurred_at <= self.goal_until
                and ev.occurred_at >= (self.entered_at or ev.occurred_at)
                and await self._holds(goal.when, ev)
            ):
                raise _Finished("converted", f"goal {goal.event} ({ev.event_id})")

    async def _holds(self, condition: Any, ev: JourneyEvent) -> bool:
        if condition is None:
            return True
        profile = needs_profile(condition)
        if (ev.properties_in_store and reads_event_properties(condition)) or (
            profile and workflow.patched(FACTS_IN_STORE)
        ):
            return (await self._conditions([condition], ev))[0]
        facts = event_facts(ev.type, ev.properties)
        if profile:  # an enrollment from before FACTS_IN_STORE
            facts = {**(await self._facts()), **facts}
        return evaluate(condition, facts)

    async def _conditions(
        self, conditions: list[Any], ev: JourneyEvent | None = None
    ) -> list[bool]:
        """Whether each condition holds, tested by an activity on the store's data."""
        result = await workflow.execute_activity_method(
            JourneyActivities.conditions,
            ConditionsRequest(
                customer_id=self.inp.customer_id,
                at=workflow.now(),
                conditions=conditions_to_json(conditions),
                event=ev,
            ),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=RETRY,
        )
        return result.holds

    # enrollments from before FACTS_IN_STORE: the profile and facts came into the workflow

    async def _facts(self) -> dict[str, Any]:
        return dict((await self._profile()).get("facts") or {})

    async def _profile(self) -> dict[str, Any]:
        result = await workflow.execute_activity_method(
            JourneyActivities.facts,
            FactsRequest(customer_id=self.inp.customer_id, at=workflow.now()),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=RETRY,
        )
        return result

    async def _record(
        self,
        node_id: str | None,
        kind: str | None,
        *,
        step: str | None = None,
        variant: str | None = None,
        finish: str | None = None,
        reason: str | None = None,
        wait: WaitState | None = None,
    ) -> None:
        assert self.entered_at is not None
        wid = workflow.info().workflow_id
        await workflow.execute_activity_method(
            JourneyActivities.record,
            RecordRequest(
                workflow_id=wid,
                journey=self.inp.journey,
                version=self.inp.version,
                customer_id=self.inp.customer_id,
                entry_no=self.inp.entry_no,
                node=node_id,
                kind=kind,
                step_key=f"{wid}:{step}" if step else None,
                variant=variant or self._variant(),
                reason=reason,
                at=workflow.now(),
                entered_at=self.entered_at,
                finish=finish,
                wait=wait,
            ),
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=RETRY,
        )
