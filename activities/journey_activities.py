"""The journey workflow's I/O: send a message (once, after every check), test conditions on
a customer's facts and events, find when a calendar delay ends, record where an enrollment
is, apply an update node's effects.

What these return is kept in the workflow's history, which erasing a customer cannot
rewrite: statuses, booleans, times and fixed reasons, never the customer's profile, address,
message or event properties (those are read here, from the store, and stay there).

Every activity is idempotent by a key the workflow derives from its own id and position, so
a retried or replayed activity, or a worker killed mid-send, never sends or applies twice:

- a delivery is recorded under its step key before the send (status `sending`) and closed
  after it; a retry finding it closed returns the recorded outcome, one finding it still
  `sending` sends again with the same dedupe key, which the outbox channel ignores and the
  webhook channels pass on as `Idempotency-Key` (SMTP has no such thing: the e-mail carries
  a Message-ID derived from the key, so a rare duplicate after a crash is recognisable);
- steps are logged under unique keys; update effects key their lots and ledger entries.

Time is the workflow's (`at` in every request), never the worker's clock: on the
time-skipping test server a 90-day journey's checks see the simulated days.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, select
from temporalio import activity
from temporalio.exceptions import ApplicationError, FailureError

from activities.channels.base import (
    Channel,
    OutgoingMessage,
    PermanentSendError,
    SendResult,
    SyncChannel,
    TransientSendError,
)
from activities.channels.unsubscribe import make_unsubscribe_token, unsubscribe_url
from crmflow import metrics, segments
from crmflow.contracts.journeys import (
    JOURNEY_CONDITIONS,
    JOURNEY_DELAY,
    JOURNEY_DELIVER,
    JOURNEY_ENTER_SEGMENT,
    JOURNEY_FACTS,
    JOURNEY_RECORD,
    JOURNEY_UPDATE,
    ConditionsRequest,
    ConditionsResult,
    DelayRequest,
    DelayResult,
    DeliverRequest,
    DeliverResult,
    FactsRequest,
    RecordRequest,
    SegmentRequest,
    UpdateRequest,
    WaitState,
)
from crmflow.processing import active_pack, apply_effects, evaluate_facts
from crmflow.settings import Settings
from journeys.conditions import (
    conditions_from_json,
    evaluate,
    event_facts,
    needs_profile,
    reads_event_properties,
)
from journeys.interpret import calendar_delay_until
from journeys.models import DelayNode, MessageNode
from journeys.templates import RenderedMessage, render_message
from journeys.timing import next_send_time, parse_duration
from rules.models import Rule
from store import journeys as jstore
from store import send_limits
from store.db import utcnow
from store.models import EventRow

log = logging.getLogger(__name__)

# A rate limit's window: a minute, and a little more for the time between taking a place and
# the request reaching the provider, so that no 60 seconds of requests hold more than the rate.
RATE_WINDOW = timedelta(minutes=1, seconds=2)
ADDRESS_FIELD = {"email": "email", "sms": "phone", "wechat": "wechat_openid"}
NOT_STORED = "the customer is not in the store"
INTERRUPTED = "the send was interrupted (its worker stopped); not repeated over SMTP"
TEMPLATE_FAILED = "template did not render"
# The reasons crmflow writes itself, naming no address and quoting no message or customer
# data: a DeliverResult (kept in the workflow's history) carries these as they are. A
# channel's or a template's own error may quote the address or the customer's data: the
# delivery record keeps it; the result says only what kind of failure it was.
_OWN_REASONS = (
    NOT_STORED,
    INTERRUPTED,
    "later",
    "frequency cap: ",
    *(f"no consent for {channel}" for channel in (*ADDRESS_FIELD, "webhook")),
    *(f"no {field} for {channel}" for channel, field in ADDRESS_FIELD.items()),
)


F = TypeVar("F", bound=Callable[..., Any])


def _by_kind(exc: Exception, where: str) -> ApplicationError:
    """An activity's unexpected error as Temporal keeps it (in the workflow's history, with
    its cause): its kind only. Its text may quote the customer's data (a database error
    lists the statement's parameters): that goes to the worker's log."""
    name = type(exc).__name__
    log.error("journey activity %s failed", where, exc_info=exc)
    return ApplicationError(f"{name} (the worker's log has the details)", type=name)


def _failures_by_kind(fn: F) -> F:
    """Let `fn` (an activity) fail with its own `ApplicationError`s (their texts are
    crmflow's, naming ids only) and Temporal's own errors as they are, and with any other
    error's kind only: retries and `non_retryable_error_types` see the same type name."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except FailureError:  # crmflow's ApplicationErrors, a cancellation
                raise
            except Exception as exc:
                raise _by_kind(exc, fn.__name__) from None

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FailureError:
            raise
        except Exception as exc:
            raise _by_kind(exc, fn.__name__) from None

    return run  # type: ignore[return-value]


def _public(result: DeliverResult) -> DeliverResult:
    """`result` as the workflow may keep it: a fixed reason, never a channel's own words."""
    why = result.reason
    if why is None or why.startswith(_OWN_REASONS):
        return result
    if why.startswith(TEMPLATE_FAILED):
        public = f"{TEMPLATE_FAILED} (the delivery record says why)"
    else:
        public = f"{result.status}: the channel's answer is in the delivery record"
    return result.model_copy(update={"reason": public})


@dataclass(frozen=True)
class _Skip:
    """A message not sent, to record as such: why, and as what (suppressed, failed)."""

    why: str
    status: str = "suppressed"
    # a delivery row names its customer (a foreign key): none for one no longer stored
    # (erased, or never imported); the step log still says why nothing was sent
    delivery_row: bool = True


def _key_prefix(journey: str) -> str:
    return f"journey:{journey}:"


class JourneyActivities:
    def __init__(self, engine: Engine, settings: Settings, channels: dict[str, Channel]) -> None:
        self.engine = engine
        self.settings = settings
        self.channels = channels
        self._sync_channels: dict[int, tuple[Channel, SyncChannel | None]] = {}

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.deliver,
            self.conditions,
            self.delay,
            self.facts,
            self.record,
            self.update,
            self.enter_segment,
        ]

    @activity.defn(name=JOURNEY_ENTER_SEGMENT)
    @_failures_by_kind
    def enter_segment(self, req: SegmentRequest) -> dict[str, Any]:
        try:
            run = segments.enter_segment(self.engine, req.journey, req.run, req.at)
        except segments.SegmentError as exc:
            raise ApplicationError(str(exc), non_retryable=True) from exc
        return run.__dict__

    # ------------------------------------------------------------------ deliver

    @activity.defn(name=JOURNEY_DELIVER)
    @_failures_by_kind
    async def deliver(self, req: DeliverRequest) -> DeliverResult:
        # The checks and the places under the limits are at the time this attempt runs: the
        # workflow's time when it asked (simulated on a time-skipping server, ahead of the
        # clock), a retry's scheduled time, or the clock when the worker is late to run it
        # (queued behind others): a place taken at a stale time would let the requests a
        # provider sees in a minute exceed the rate.
        at = req.at
        if activity.in_activity():
            at = max(at, utcnow())
            info = activity.info()
            if info.attempt > 1:
                at = max(at, info.current_attempt_scheduled_time)
        if at > req.at:
            req = req.model_copy(update={"at": at})
        return _public(await self._deliver(req))

    async def _deliver(self, req: DeliverRequest) -> DeliverResult:
        channel = self.channels.get(req.channel) or self.channels["outbox"]
        sync = self._sync_form(channel)
        if sync is not None:
            # a channel that sends from a thread (outbox, SMTP): the whole delivery in one
            # trip to a thread, instead of one trip per step, each waiting for the busy loop
            return await asyncio.to_thread(self._deliver_sync, req, sync)
        at = req.at  # the workflow's time when it asked (simulated on a time-skipping server)
        checked = await asyncio.to_thread(self._check_and_open, req, at)
        if isinstance(checked, DeliverResult):
            return checked
        message, interrupted = checked
        if interrupted and channel.name == "email":
            return await asyncio.to_thread(self._interrupted, req, at)
        started = time.monotonic()
        try:
            result = await channel.send(message)
        except PermanentSendError as exc:
            return await asyncio.to_thread(self._failed, req, at, exc, _ms(started))
        except TransientSendError as exc:
            await asyncio.to_thread(self._retrying, req, at, exc, _ms(started))
            raise _transient(req, exc) from None
        return await asyncio.to_thread(self._sent, req, at, channel, result, _ms(started))

    def _sync_form(self, channel: Channel) -> SyncChannel | None:
        """The channel as a SyncChannel when it has a blocking send (looked up once: an
        isinstance check against a runtime protocol costs tens of microseconds)."""
        known = self._sync_channels.get(id(channel))
        if known is None or known[0] is not channel:
            known = (channel, channel if isinstance(channel, SyncChannel) else None)
            self._sync_channels[id(channel)] = known
        return known[1]

    def _deliver_sync(self, req: DeliverRequest, channel: SyncChannel) -> DeliverResult:
        """`deliver` for a channel with a synchronous send, in one thread: the same steps."""
        at = req.at
        checked = self._check_and_open(req, at)
        if isinstance(checked, DeliverResult):
            return checked
        message, interrupted = checked
        if interrupted and channel.name == "email":
            return self._interrupted(req, at)
        started = time.monotonic()
        try:
            result = channel.send_sync(message)
        except PermanentSendError as exc:
            return self._failed(req, at, exc, _ms(started))
        except TransientSendError as exc:
            self._retrying(req, at, exc, _ms(started))
            raise _transient(req, exc) from None
        return self._sent(req, at, channel, result, _ms(started))

    def _interrupted(self, req: DeliverRequest, at: datetime) -> DeliverResult:
        # A send was under way when its worker stopped: the SMTP server may have taken the
        # message. SMTP cannot ignore a repeated one, so it is not sent again.
        # It may have gone out: it keeps its place under the limits.
        attempt = _AttemptLog("interrupted", INTERRUPTED, None)
        self._close(req, at, "failed", {"error": INTERRUPTED}, attempt)
        return DeliverResult(status="failed", reason=INTERRUPTED)

    def _failed(
        self, req: DeliverRequest, at: datetime, exc: PermanentSendError, ms: int
    ) -> DeliverResult:
        # abandoned: its place under the rate limit and the frequency cap is free again
        attempt = _AttemptLog("permanent", str(exc), ms)
        self._close(req, at, "failed", {"error": str(exc)}, attempt)
        return DeliverResult(status="failed", reason=str(exc))

    def _retrying(
        self, req: DeliverRequest, at: datetime, exc: TransientSendError, ms: int
    ) -> None:
        """A send that failed for now: it keeps its place (held) and will be tried again."""
        with self.engine.begin() as conn:
            jstore.set_delivery_status(conn, req.step_key, "retrying")
            self._log_attempt(conn, req, at, _AttemptLog("transient", str(exc), ms))
        metrics.record_send(req.channel, "retried")

    def _sent(
        self, req: DeliverRequest, at: datetime, channel: Channel, result: SendResult, ms: int
    ) -> DeliverResult:
        meta = {"provider_message_id": result.provider_message_id, "via": channel.name}
        answer = result.provider_message_id
        self._close(req, at, "sent", meta, _AttemptLog("sent", answer, ms))
        return DeliverResult(status="sent", sent_at=at)

    def _log_attempt(
        self, conn: Connection, req: DeliverRequest, at: datetime, attempt: _AttemptLog
    ) -> None:
        send_limits.record_attempt(
            conn,
            dedupe_key=req.step_key,
            customer_id=req.customer_id,
            at=at,
            channel=req.channel,
            outcome=attempt.outcome,
            response=attempt.response,
            latency_ms=attempt.latency_ms,
        )
        # the attempt happened: its place under the rate limit is used, whatever its outcome;
        # the message's place under the cap is used once it (may have) gone out, given back
        # when it is abandoned, and kept meanwhile
        if req.rate_limit_per_minute:
            send_limits.settle_attempt(conn, req.step_key, at)
        if self._capped(req):
            if attempt.outcome in ("sent", "interrupted"):
                send_limits.settle(conn, [req.step_key], send_limits.USED, at)
            elif attempt.outcome == "permanent":
                send_limits.settle(conn, [req.step_key], send_limits.RELEASED, at)

    def _check_and_open(
        self, req: DeliverRequest, at: datetime
    ) -> DeliverResult | tuple[OutgoingMessage, bool]:
        """Checks, rendering and the delivery record (`sending`) before the send; with the
        message, whether an earlier attempt was interrupted mid-send.

        One transaction, reads and rendering first, writes last: on SQLite a transaction
        holds the database's one write lock from its first write to its commit, and the
        worker's activity threads all want it."""
        with self.engine.begin() as conn:
            done = jstore.find_delivery(conn, req.step_key)
            decided = self._decide(conn, req, at, done)
            self._ensure_enrollment(conn, req)  # the first write
            if isinstance(decided, _Skip):
                return self._suppress(conn, req, at, decided)
            if isinstance(decided, _Wait):
                return self._hold_back(conn, req, decided)
            if isinstance(decided, DeliverResult):
                return decided
            message, rendered = decided
            # the place under the rate limit and the frequency cap, taken (or, for a retry,
            # taken again at this attempt's time) while this transaction holds their locks
            full = self._reserve(conn, req, at, first=done is None)
            if isinstance(full, _Skip):
                return self._suppress(conn, req, at, full)
            if isinstance(full, _Wait):
                return self._hold_back(conn, req, full)
            if done is None:
                opened = jstore.open_delivery(
                    conn,
                    dedupe_key=req.step_key,
                    customer_id=req.customer_id,
                    channel=req.channel,
                    status="sending",
                    at=at,
                    subject=rendered.subject,
                    body=rendered.text or rendered.html,
                    meta={"journey": req.journey, "node": req.node, "variant": req.variant},
                )
                if opened:
                    return message, False
                # another attempt of this step recorded it since it was read: carry on as
                # if this one had come after it (it holds the write lock now)
                done = jstore.find_delivery(conn, req.step_key)
                if done is None:  # pragma: no cover - the insert found the key there
                    raise RuntimeError(f"delivery {req.step_key!r} neither new nor found")
                if done.status not in ("sending", "retrying"):
                    return DeliverResult(
                        status=done.status, reason=done.reason, sent_at=done.sent_at
                    )
            jstore.set_delivery_status(conn, req.step_key, "sending")
        return message, done.status == "sending"

    def _decide(
        self, conn: Any, req: DeliverRequest, at: datetime, done: jstore.Delivery | None
    ) -> DeliverResult | _Skip | _Wait | tuple[OutgoingMessage, RenderedMessage]:
        """What to do, from reads only: a result to return as it is (a step already
        decided), a suppression to record, a wait (quiet hours), or the message to send."""
        s = self.settings
        if done is not None and done.status not in ("sending", "retrying"):
            # a retry or replay of a step already decided: the same answer, nothing sent
            return DeliverResult(status=done.status, reason=done.reason, sent_at=done.sent_at)
        profile = jstore.message_profile(conn, req.customer_id, at)
        if profile is None:
            return _Skip(NOT_STORED, delivery_row=False)
        if done is None:
            why = self._why_not(req, profile)
            if why is not None:
                return _Skip(why)
            wait = self._quiet_hours(profile, at)
            if wait is not None:
                return wait
        node = MessageNode.model_validate(
            {"type": "message", "channel": req.channel, "template": req.template, "next": "x"}
        )
        token = make_unsubscribe_token(
            s.unsubscribe_secret.get_secret_value(), req.customer_id, req.channel, req.journey
        )
        link = unsubscribe_url(s.public_base_url, token)
        event, data = _entry_event(conn, req)
        try:
            rendered = render_message(
                node, profile, unsubscribe_url=link, journey=req.journey, event=event, data=data
            )
        except Exception as exc:  # jinja2 errors: the template cannot render for them
            return _Skip(f"{TEMPLATE_FAILED}: {exc}", "failed")
        message = OutgoingMessage(
            dedupe_key=req.step_key,
            customer_id=req.customer_id,
            channel=req.channel,
            to=_address(req.channel, profile),
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            unsubscribe_url=link if req.channel == "email" else None,
            data={**req.data, "journey": req.journey, "node": req.node},
        )
        return message, rendered

    @staticmethod
    def _ensure_enrollment(conn: Any, req: DeliverRequest | RecordRequest) -> None:
        jstore.ensure_enrollment(
            conn,
            workflow_id=req.workflow_id,
            journey=req.journey,
            version=req.version,
            customer_id=req.customer_id,
            entry_no=req.entry_no,
            entered_at=req.entered_at,
            node=req.node,
        )

    def _why_not(self, req: DeliverRequest, profile: dict[str, Any]) -> str | None:
        consent = profile.get("consent") or {}
        needs_consent = req.channel in ADDRESS_FIELD or req.channel == "webhook"
        if needs_consent and consent.get(req.channel) is not True:
            return f"no consent for {req.channel}"
        if req.channel in ADDRESS_FIELD and not _address(req.channel, profile):
            return f"no {ADDRESS_FIELD[req.channel]} for {req.channel}"
        return None

    def _quiet_hours(self, profile: dict[str, Any], at: datetime) -> _Wait | None:
        """A wait until the customer's quiet hours end (None: not in them)."""
        s = self.settings
        zone = profile.get("timezone") or "UTC"
        send_at = next_send_time(at, zone, s.quiet_hours_start, s.quiet_hours_end)
        if send_at <= at:
            return None
        local = send_at.astimezone(_zone(zone))
        return _Wait("quiet_hours", send_at, f"quiet hours end {local:%Y-%m-%d %H:%M} {zone}")

    def _capped(self, req: DeliverRequest) -> bool:
        """The message counts under the customer's frequency cap."""
        return self.settings.frequency_cap_messages > 0 and req.frequency_cap_policy != "exempt"

    def _places(self, conn: Connection, req: DeliverRequest) -> list[tuple[send_limits.Limit, str]]:
        """The places this attempt needs: the message's under the customer's frequency cap,
        and the attempt's own under the journey's rate limit."""
        s = self.settings
        places = []
        if self._capped(req):
            window = timedelta(days=s.frequency_cap_days)
            scope = send_limits.cap_scope(req.customer_id)
            cap = send_limits.Limit(scope, s.frequency_cap_messages, window)
            places.append((cap, req.step_key))
        if req.rate_limit_per_minute:
            scope = send_limits.rate_scope(req.journey)
            rate = send_limits.Limit(scope, req.rate_limit_per_minute, RATE_WINDOW)
            number = send_limits.attempt_count(conn, req.step_key) + 1
            places.append((rate, _attempt_key(req.step_key, number)))
        return places

    def _reserve(
        self, conn: Connection, req: DeliverRequest, at: datetime, *, first: bool
    ) -> _Skip | _Wait | None:
        """Take the message's place under its limits; a skip (frequency cap, policy skip) or
        a wait when one is full; None when the place is taken."""
        places = self._places(conn, req)
        if not places:
            return None
        full = send_limits.reserve(conn, places, workflow_id=req.workflow_id, at=at)
        if full is None:
            return None
        limit, room_at = full
        if limit.scope.startswith("cap:"):
            days = f"{self.settings.frequency_cap_days:g}"
            cap = f"frequency cap: {limit.count} messages in {days} days"
            if first and req.frequency_cap_policy == "skip":
                return _Skip(cap)
            return _Wait("frequency_cap", room_at, cap)
        return _Wait("rate_limit", room_at, f"rate limit: {limit.count} per minute")

    def _hold_back(self, conn: Connection, req: DeliverRequest, wait: _Wait) -> DeliverResult:
        """Record what the enrollment waits for at this message; the workflow waits."""
        jstore.set_wait(conn, req.workflow_id, jstore.Wait(wait.kind, wait.until, wait.detail))
        return DeliverResult(
            status="wait", reason="later", retry_at=wait.until, waiting_for=wait.kind
        )

    def _suppress(self, conn: Any, req: DeliverRequest, at: datetime, skip: _Skip) -> DeliverResult:
        why, status = skip.why, skip.status
        if skip.delivery_row:
            jstore.open_delivery(
                conn,
                dedupe_key=req.step_key,
                customer_id=req.customer_id,
                channel=req.channel,
                status=status,
                reason=why,
                at=at,
                meta={"journey": req.journey, "node": req.node, "variant": req.variant},
            )
        self._after(conn, req, at, status, why)
        metrics.record_send(req.channel, status)
        return DeliverResult(status=status, reason=why)

    def _close(
        self,
        req: DeliverRequest,
        at: datetime,
        status: str,
        meta: dict[str, Any],
        attempt: _AttemptLog,
    ) -> None:
        steps = self._steps(req, at, status, meta.get("error"))
        # the record keeps naming its journey and node (a re-send renders that node again)
        meta = {"journey": req.journey, "node": req.node, "variant": req.variant, **meta}
        with self.engine.begin() as conn:
            jstore.close_delivery(conn, req.step_key, status, at, meta)
            self._log_attempt(conn, req, at, attempt)
            self._record_outcome(conn, req, at, steps)
        metrics.record_send(req.channel, status)

    def _after(self, conn: Any, req: DeliverRequest, at: datetime, kind: str, why: Any) -> None:
        self._record_outcome(conn, req, at, self._steps(req, at, kind, why))

    def _record_outcome(
        self, conn: Any, req: DeliverRequest, at: datetime, steps: list[dict[str, Any]]
    ) -> None:
        """Log the steps (one statement) and move the enrollment on."""
        jstore.record_steps(conn, steps)
        ended = jstore.move_enrollment(
            conn,
            req.workflow_id,
            node=req.next_node,
            at=at,
            finish="completed" if req.finish else None,
            wait=_wait(req.next_wait, at),
        )
        if ended:
            metrics.record_enrollment_finished(req.journey, "completed")

    @staticmethod
    def _steps(req: DeliverRequest, at: datetime, kind: str, why: Any) -> list[dict[str, Any]]:
        """The steps a delivery's outcome logs: the outcome, the node's entry, and the entry
        of the next node (or the enrollment's completion)."""

        def step(key: str, node: str, step_kind: str, reason: Any = None) -> dict[str, Any]:
            return _step_row(req, key, node, step_kind, at, reason, req.variant)

        steps = [
            step(f"{req.step_key}:{kind}", req.node, kind, why),
            step(f"{req.step_key}:entered", req.node, "entered"),
        ]
        if req.finish:
            steps.append(
                step(f"{req.workflow_id}:end:completed", req.next_node or req.node, "completed")
            )
        elif req.next_node:
            # the enrollment is now at the next node: its entry, logged here, saves the
            # workflow an activity when that node is a wait (`_placed_by_deliver`)
            key = f"{req.workflow_id}:{req.next_node}:{req.visit + 1}:entered"
            steps.append(step(key, req.next_node, "entered"))
        return steps

    # ------------------------------------------------------------------ facts, record, update

    @activity.defn(name=JOURNEY_CONDITIONS)
    @_failures_by_kind
    def conditions(self, req: ConditionsRequest) -> ConditionsResult:
        """Whether each condition holds on the customer's facts at `at` and the event's
        properties (read from the store when the event does not carry them)."""
        conditions = conditions_from_json(req.conditions)
        facts: dict[str, Any] = {}
        with self.engine.connect() as conn:
            if any(needs_profile(c) for c in conditions):
                facts = self._rule_facts(conn, req.customer_id, req.at)
            ev = req.event
            if ev is not None:
                props = ev.properties
                if ev.properties_in_store and any(reads_event_properties(c) for c in conditions):
                    props = _stored_properties(conn, req.customer_id, ev.event_id, ev.type)
                facts = {**facts, **event_facts(ev.type, props)}
        return ConditionsResult(holds=[evaluate(c, facts) for c in conditions])

    @activity.defn(name=JOURNEY_DELAY)
    @_failures_by_kind
    def delay(self, req: DelayRequest) -> DelayResult:
        """When a delay until a local time in the customer's zone, or until a date in their
        attributes, ends (None: they have no such date)."""
        node = DelayNode.model_validate(req.node)
        with self.engine.connect() as conn:
            profile = self._profile(conn, req.customer_id, req.at)
        until = calendar_delay_until(
            node, req.at, profile.get("timezone"), profile.get("attributes") or {}
        )
        if req.workflow_id is not None and until is not None:
            with self.engine.begin() as conn:
                wait = jstore.Wait("delay", until, _delay_detail(node))
                jstore.set_wait(conn, req.workflow_id, wait)
        return DelayResult(until=until)

    @activity.defn(name=JOURNEY_FACTS)
    @_failures_by_kind
    def facts(self, req: FactsRequest) -> dict[str, Any]:
        """For enrollments that started before `journey_conditions` and `journey_delay`
        (they replay this): only what their workflow reads, no name, address or phone."""
        with self.engine.connect() as conn:
            profile = self._profile(conn, req.customer_id, req.at)
            facts = self._rule_facts(conn, req.customer_id, req.at)
        return {
            "timezone": profile.get("timezone"),
            "attributes": profile.get("attributes") or {},
            "facts": facts,
        }

    @staticmethod
    def _profile(conn: Connection, customer_id: str, at: datetime) -> dict[str, Any]:
        profile = jstore.message_profile(conn, customer_id, at)
        if profile is None:
            raise ApplicationError(f"no customer {customer_id!r}", non_retryable=True)
        return profile

    def _rule_facts(self, conn: Connection, customer_id: str, at: datetime) -> dict[str, Any]:
        """The customer's facts as the rules build them (a missing customer is an error)."""
        self._profile(conn, customer_id, at)
        pack = active_pack(conn)
        return evaluate_facts(conn, pack, customer_id, at) if pack else {}

    @activity.defn(name=JOURNEY_RECORD)
    @_failures_by_kind
    def record(self, req: RecordRequest) -> None:
        with self.engine.begin() as conn:
            self._ensure_enrollment(conn, req)
            if req.kind and req.step_key and req.node:
                row = _step_row(
                    req, req.step_key, req.node, req.kind, req.at, req.reason, req.variant
                )
                jstore.record_step(conn, row)
            ended = jstore.move_enrollment(
                conn,
                req.workflow_id,
                node=req.node,
                at=req.at,
                finish=req.finish,
                outcome=req.reason,
                variant=req.variant,
                wait=_wait(req.wait, req.at),
            )
            if req.finish:  # a send it waited for or retried is abandoned: free its places
                send_limits.release_enrollment(conn, req.workflow_id, req.at)
        if ended and req.finish:
            metrics.record_enrollment_finished(req.journey, req.finish)

    @activity.defn(name=JOURNEY_UPDATE)
    @_failures_by_kind
    def update(self, req: UpdateRequest) -> None:
        rule = Rule.model_validate(
            {"name": f"journey:{req.journey}:{req.node}", "then": req.effects}
        )
        with self.engine.begin() as conn:
            pack = active_pack(conn)
            if pack is None:
                raise ApplicationError(
                    "no rules version is deployed: an update node needs the programme "
                    "(crmflow rules deploy)",
                    non_retryable=True,
                )
            row = _step_row(req, f"{req.step_key}:update", req.node, "entered", req.at)
            first = jstore.record_step(conn, row)
            if first:  # the step log's unique key makes the effects apply once
                apply_effects(conn, pack, req.customer_id, rule, req.step_key, req.at)


def _step_row(
    req: DeliverRequest | RecordRequest | UpdateRequest,
    key: str,
    node: str,
    kind: str,
    at: datetime,
    reason: Any = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """One step of `req`'s enrollment for the step log."""
    return jstore.step_row(
        step_key=key,
        workflow_id=req.workflow_id,
        journey=req.journey,
        version=req.version,
        customer_id=req.customer_id,
        node=node,
        kind=kind,
        at=at,
        reason=reason,
        variant=variant,
    )


def _transient(req: DeliverRequest, exc: TransientSendError) -> ApplicationError:
    """The error that makes Temporal retry a send: its kind only. The channel's own words
    (an SMTP or provider answer may quote the address) go to the worker's log, not into the
    workflow's history (an activity's failure is kept there, cause and all)."""
    log.warning("%s send for %s will be retried: %s", req.channel, req.step_key, exc)
    return ApplicationError(
        f"{req.channel} send failed for now ({type(exc).__name__}); retrying",
        type="TransientSendError",
    )


def _entry_event(
    conn: Connection, req: DeliverRequest
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The entry event as a template sees it ({type, occurred_at, properties}; its
    properties read from the store) and the `data` handed over: the enroll command's, and a
    rule's `journey_event` data (that event's own properties). No entry event: None."""
    ev = req.entry_event
    data = dict(req.data)
    if ev is None:
        return None, data
    if ev.properties_in_store:
        props = _stored_properties(conn, req.customer_id, ev.event_id, ev.type)
    else:  # made by a rule: its properties are the rule's data
        props = dict(ev.properties)
        data = {**props, **data}
    return {"type": ev.type, "occurred_at": ev.occurred_at.isoformat(), "properties": props}, data


def _stored_properties(
    conn: Connection, customer_id: str, event_id: str, event_type: str
) -> dict[str, Any]:
    """An event's properties from the store (none when it is not there, or is another
    customer's or another type's)."""
    e = EventRow
    row = conn.execute(
        select(e.type, e.properties).where(e.event_id == event_id, e.customer_id == customer_id)
    ).first()
    if row is None or row.type != event_type:
        return {}
    return dict(row.properties or {})


def _address(channel: str, profile: dict[str, Any]) -> str | None:
    if channel == "email":
        return profile.get("email")
    if channel == "sms":
        return profile.get("phone")
    if channel == "wechat":
        value = (profile.get("attributes") or {}).get("wechat_openid")
        return value if isinstance(value, str) else None
    return None


@dataclass(frozen=True)
class _Wait:
    """A message held back: by what (quiet_hours, rate_limit, frequency_cap), until when."""

    kind: str
    until: datetime
    detail: str


@dataclass(frozen=True)
class _AttemptLog:
    """One try of a send, for the attempt log: sent, transient, permanent, interrupted."""

    outcome: str
    response: str | None
    latency_ms: int | None


def _attempt_key(step_key: str, number: int) -> str:
    """An attempt's place under the rate limit."""
    return f"{step_key}#{number}"


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _wait(state: WaitState | None, at: datetime) -> jstore.Wait | None:
    """A wait as the store keeps it, its end counted from `at` when given as a duration."""
    if state is None:
        return None
    until = state.until
    if until is None and state.after:
        until = at + parse_duration(state.after)
    return jstore.Wait(state.waiting_for, until, state.detail)


def _delay_detail(node: DelayNode) -> str:
    data = node.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    shown = {k: v for k, v in data.items() if k not in ("type", "next")}
    return "delay " + ", ".join(f"{k} {v}" for k, v in shown.items())


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception:  # an unknown zone was refused at import; show UTC rather than fail
        return ZoneInfo("UTC")
