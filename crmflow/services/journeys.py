"""Journeys: validate, deploy, list and show; pause, resume and archive; segment entry; stats
and who is where; simulation; dispatch. Every face (CLI, HTTP API, console) calls these.

A journey comes as a file (`JourneyFile`: checked against the programme beside it, as the
CLI always did) or as YAML text (`JourneyText`: checked against the programme of the active
rules version, the one its conditions will be evaluated with).

Deploying stores the version and, for a journey entered by a segment once, enters that
segment in the same database transaction: either both happen or neither (a segment that
cannot be evaluated leaves nothing deployed). A journey entered by a segment on a schedule
gets its Temporal Schedule made to match after the commit; when Temporal cannot be reached
the report says so (`schedule_problem`) and the journey stays deployed — deploying again or
changing its status syncs the schedule once Temporal is up.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, func, select

from crmflow.domain import Event
from crmflow.processing import active_pack
from crmflow.services.errors import FieldProblem, Invalid, NotFound, Refused, Unavailable
from crmflow.services.runtime import Runtime
from journeys import validate as jv
from journeys.models import EventEntry, Journey, MessageNode, SegmentEntry, edges
from rules.models import Rule
from rules.pack import find_program, load_pack, load_program
from rules.source import SourceError, SourceProblem, parse_yaml
from store import journey_stats as jstats
from store import journeys as jstore
from store.db import utcnow
from store.models import EnrollmentRow, JourneyRow, JourneyVersionRow
from store.rule_versions import active_source

if TYPE_CHECKING:
    from crmflow.simulate import SimulationReport

MAX_YAML_CHARS = 200_000  # a journey file is a few kB; this bounds what a request may send
MAX_ENROLLMENTS = 10_000  # most enrollments listed at once
MAX_SIMULATED_EVENTS = 1_000
TEXT_PATH = "journey.yaml"  # the file name problems of a journey sent as text are reported at
STATUSES = jstore.STATUSES
EnrollmentStatus = Literal["active", "completed", "converted", "exited", "held_out", "failed"]


# --------------------------------------------------------------------------- inputs


class JourneyFile(BaseModel):
    """A journey file on this machine, with its programme (default: `program.yaml` beside
    the journey's folder or in its parent)."""

    path: Path
    program: Path | None = None
    rules: Path | None = Field(
        None,
        description="the rules folder whose data the journey's messages may show (default: "
        "`rules/` beside the programme, when there is one)",
    )


class JourneyText(BaseModel):
    """A journey as YAML text; checked against the active rules version's programme."""

    model_config = ConfigDict(extra="forbid")

    yaml: str = Field(
        min_length=1,
        max_length=MAX_YAML_CHARS,
        description="The journey file's text (YAML), as `crmflow journeys validate` reads it",
    )


JourneySource = JourneyFile | JourneyText


class InvalidJourney(Invalid):
    """A journey that does not validate: `errors` has each problem with its file, line and
    node; `problems` names the node (`yaml.nodes.<id>`) and says the line."""

    def __init__(self, errors: list[SourceProblem]) -> None:
        self.errors = errors
        super().__init__([_problem(e) for e in errors])


def _problem(e: SourceProblem) -> FieldProblem:
    node = getattr(e, "node", None)
    field = f"yaml.nodes.{node}" if node else "yaml"
    reason = f"line {e.line}: {e.message}" if e.line else e.message
    return FieldProblem(field, reason)


# --------------------------------------------------------------------------- validate


class EventEntryInfo(BaseModel):
    kind: Literal["event"] = "event"
    event: str
    when: bool = Field(description="the entry has a condition")


class SegmentEntryInfo(BaseModel):
    kind: Literal["segment"] = "segment"
    schedule: str | None = Field(description="cron expression; None: entered once at deploy")
    once: bool


class RuleEntryInfo(BaseModel):
    kind: Literal["rule"] = "rule"


EntryInfo = Annotated[
    EventEntryInfo | SegmentEntryInfo | RuleEntryInfo, Field(discriminator="kind")
]


class JourneySummary(BaseModel):
    """What validating a journey reports about a valid one."""

    ok: bool = True
    file: str
    program: str = Field(description="the programme it was checked against")
    journey: str
    entry: EntryInfo
    start: str
    nodes: dict[str, str] = Field(description="node id -> type")
    node_types: dict[str, int]
    channels: list[str] = Field(description="channels its messages use")
    goal: dict[str, Any] | None


def entry_info(journey: Journey) -> EventEntryInfo | SegmentEntryInfo | RuleEntryInfo:
    entry = journey.entry
    if isinstance(entry, EventEntry):
        return EventEntryInfo(event=entry.event, when=entry.when is not None)
    if isinstance(entry, SegmentEntry):
        return SegmentEntryInfo(schedule=entry.schedule, once=entry.once)
    return RuleEntryInfo()


def summary(loaded: jv.LoadedJourney) -> JourneySummary:
    j = loaded.journey
    used = sorted({n.channel for n in j.nodes.values() if isinstance(n, MessageNode)})
    return JourneySummary(
        file=loaded.path,
        program=loaded.program_path,
        journey=j.journey,
        entry=entry_info(j),
        start=j.start,
        nodes={nid: node.type for nid, node in j.nodes.items()},
        node_types=dict(Counter(node.type for node in j.nodes.values())),
        channels=used,
        goal=j.goal.model_dump(mode="json", exclude_none=True) if j.goal else None,
    )


def _active_program(rt: Runtime) -> tuple[Any, str, str]:
    """The active rules version's programme, its path and the version; `Refused` without one."""
    with rt.engine.connect() as conn:
        found = active_source(conn)
    if found is None:
        raise Refused(
            "a journey is checked against the programme of the active rules version, and "
            "none is deployed: deploy a rules version first"
        )
    version, source = found
    try:
        program = load_program(parse_yaml(source.program_text, source.program_path))
    except SourceError as exc:  # deployed versions validated; a later schema may differ
        raise Unavailable(f"the active rules version's programme does not load: {exc}") from exc
    return program, source.program_path, version


def _file_rules(source: JourneyFile) -> list[Rule] | None:
    """The rules a journey file is checked with (what their journey effects hand over is the
    `data` its messages may show): `source.rules`, or `rules/` beside the programme; None
    when there is no such folder (any `data.<name>` is accepted then)."""
    folder = source.rules
    program = source.program
    if folder is None:
        try:
            program = find_program(source.path.parent, source.program)
        except SourceError:
            return None
        folder = program.parent / "rules"
        if not folder.is_dir():
            return None
    pack, _ = load_pack(folder, program)
    return [c.rule for c in pack.rules]


def _active_rules(rt: Runtime) -> list[Rule] | None:
    """The active rules version's rules (None: none is deployed)."""
    with rt.engine.connect() as conn:
        pack = active_pack(conn)
    return [c.rule for c in pack.rules] if pack is not None else None


def load(
    rt: Runtime | None,
    source: JourneySource,
    known_events: Collection[str] | None = None,
) -> tuple[jv.LoadedJourney, str]:
    """The validated journey and its text; `InvalidJourney` listing every problem. `rt` is
    needed for text only (the active rules version's programme)."""
    if isinstance(source, JourneyFile):
        try:
            rules = _file_rules(source)
            loaded = jv.load_journey(source.path, source.program, known_events, rules)
        except SourceError as exc:
            raise InvalidJourney(exc.errors) from exc
        try:
            text = source.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # it was read a moment ago
            raise Invalid(f"{source.path}: cannot read it ({exc})", field="path") from exc
        return loaded, text
    if rt is None:
        raise ValueError("a journey sent as text is checked against the database's rules")
    program, program_path, _ = _active_program(rt)
    try:
        journey = jv.validate_text(source.yaml, TEXT_PATH, program, known_events, _active_rules(rt))
    except SourceError as exc:
        raise InvalidJourney(exc.errors) from exc
    except RecursionError as exc:  # the YAML composer recurses once per nesting level
        raise Invalid("the YAML is nested too deeply", field="yaml") from exc
    return jv.LoadedJourney(journey, TEXT_PATH, program, program_path), source.yaml


def validate(
    rt: Runtime | None,
    source: JourneySource,
    known_events: Collection[str] | None = None,
) -> JourneySummary:
    """Check a journey: its summary, or `InvalidJourney` with every problem (file:line,
    node). With `known_events`, other event types are problems too."""
    loaded, _ = load(rt, source, known_events)
    return summary(loaded)


# --------------------------------------------------------------------------- deploy


class SegmentRunInfo(BaseModel):
    """One evaluation of a journey's segment."""

    journey: str
    run: str = Field(description="the run key: a customer is queued once per version and run")
    customers: int
    matched: int
    queued: int = Field(description="enrollments queued now (a worker's dispatcher starts them)")
    refused: dict[str, int] = Field(
        default_factory=dict,
        description="matched but not queued, by why: re-entry policy, already enrolled, "
        "queued before in this run, the journey paused",
    )


class DeployReport(BaseModel):
    journey: str
    version: str
    new: bool = Field(description="false: this version was deployed before; made active")
    segment: SegmentRunInfo | None = Field(
        None, description="a segment entered once: who was queued (same transaction)"
    )
    schedule: str | None = Field(None, description="what was done to the segment's schedule")
    schedule_problem: str | None = Field(
        None, description="the schedule could not be synced (the journey is deployed)"
    )


def _enter(target: Engine | Connection, name: str, run: str) -> SegmentRunInfo:
    from crmflow.segments import SegmentError, enter_segment, enter_segment_in

    try:
        if isinstance(target, Engine):
            result = enter_segment(target, name, run)
        else:
            result = enter_segment_in(target, name, run)
    except SegmentError as exc:
        raise Refused(str(exc)) from exc
    return SegmentRunInfo(**result.__dict__)


def _store(
    rt: Runtime, journey: Journey, text: str, origin: str | None
) -> tuple[DeployReport, str]:
    with rt.engine.begin() as conn:
        version, created = jstore.deploy_journey(
            conn, journey.journey, journey.definition(), text, origin
        )
        report = DeployReport(journey=journey.journey, version=version, new=created)
        entry = journey.entry
        if isinstance(entry, SegmentEntry) and entry.once:
            # a Refused here rolls the version back with it
            report.segment = _enter(conn, journey.journey, "once")
        status = jstore.deployed(conn, journey.journey)[0].status
    return report, status


async def _sync_schedule(
    rt: Runtime, journey: Journey, status: str
) -> tuple[str | None, str | None]:
    """(what was done, None) or (None, why not): make the Temporal Schedule match."""
    from temporalio.service import RPCError

    from crmflow.segment_schedules import sync_schedule

    try:
        client = await rt.temporal()
        return await sync_schedule(client, rt.settings.task_queue, journey, status), None
    except Unavailable as exc:
        cause = exc.__cause__ or exc
        return None, (
            f"the journey is stored, but its segment schedule needs Temporal: {cause}. "
            "Deploy again (or change its status) once Temporal is up (`crmflow up`)."
        )
    except RPCError as exc:
        return None, f"the journey is stored, but Temporal refused its segment schedule: {exc}"


def _scheduled(journey: Journey) -> bool:
    return isinstance(journey.entry, SegmentEntry) and journey.entry.schedule is not None


async def deploy(rt: Runtime, source: JourneySource, origin: str | None = None) -> DeployReport:
    """Validate and store a journey as a new version (new enrollments use it; running ones
    finish on theirs); enter a once-segment in the same transaction; then sync a scheduled
    segment's Temporal Schedule. `origin` (default: the file's path) is kept with the
    version."""
    loaded, text = await asyncio.to_thread(load, rt, source)
    if origin is None and isinstance(source, JourneyFile):
        origin = str(source.path)
    journey = loaded.journey
    report, status = await asyncio.to_thread(_store, rt, journey, text, origin)
    if _scheduled(journey):
        report.schedule, report.schedule_problem = await _sync_schedule(rt, journey, status)
    return report


# --------------------------------------------------------------------------- status


class StatusChange(BaseModel):
    journey: str
    before: str
    status: str
    schedule: str | None = None
    schedule_problem: str | None = None


async def set_status(rt: Runtime, name: str, status: str) -> StatusChange:
    """Set a journey's status (active, paused, archived) and sync its segment schedule."""
    if status not in STATUSES:
        raise Invalid(f"status must be one of {', '.join(STATUSES)}", field="status")

    def change() -> tuple[str | None, Journey | None]:
        with rt.engine.begin() as conn:
            before = jstore.set_status(conn, name, status)
            found = jstore.deployed(conn, name) if before is not None else []
        return before, Journey.model_validate(found[0].definition) if found else None

    before, journey = await asyncio.to_thread(change)
    if before is None or journey is None:
        raise NotFound(f"no journey {name!r} is deployed")
    out = StatusChange(journey=name, before=before, status=status)
    if _scheduled(journey):
        out.schedule, out.schedule_problem = await _sync_schedule(rt, journey, status)
    return out


async def pause(rt: Runtime, name: str) -> StatusChange:
    """Stop new enrollments; running enrollments go on."""
    return await set_status(rt, name, "paused")


async def resume(rt: Runtime, name: str) -> StatusChange:
    """Let new enrollments in again."""
    return await set_status(rt, name, "active")


async def archive(rt: Runtime, name: str) -> StatusChange:
    """Retire a journey: no new enrollments, and it listens to no new events."""
    return await set_status(rt, name, "archived")


# --------------------------------------------------------------------------- list and show


class JourneyListItem(BaseModel):
    journey: str
    status: str
    version: str = Field(description="the active version")
    deployed_at: datetime = Field(description="when the active version was deployed")
    enrollments: dict[str, int] = Field(description="enrollments by status")


def _enrollment_counts(conn: Connection, name: str | None = None) -> dict[str, dict[str, int]]:
    e = EnrollmentRow
    stmt = select(e.journey, e.status, func.count()).group_by(e.journey, e.status)
    if name is not None:
        stmt = stmt.where(e.journey == name)
    counts: dict[str, dict[str, int]] = {}
    for journey, status, n in conn.execute(stmt):
        counts.setdefault(journey, {})[status] = n
    return counts


def list_journeys(rt: Runtime) -> list[JourneyListItem]:
    """Deployed journeys by name: status, active version, enrollments by status."""
    with rt.engine.connect() as conn:
        counts = _enrollment_counts(conn)
        return [
            JourneyListItem(
                journey=d.name,
                status=d.status,
                version=d.version,
                deployed_at=d.deployed_at,
                enrollments=counts.get(d.name, {}),
            )
            for d in jstore.deployed(conn)
        ]


class NodeInfo(BaseModel):
    id: str
    type: str
    definition: dict[str, Any] = Field(description="the node as deployed")


class EdgeInfo(BaseModel):
    source: str
    target: str
    via: str = Field(description="the field naming the target: next, cases.0.next, on_event …")


class VersionInfo(BaseModel):
    version: str
    deployed_at: datetime
    origin: str | None = Field(description="where it was deployed from (a file, the API)")
    active: bool


class JourneyDetail(JourneyListItem):
    """One journey: its active version's graph and every version deployed."""

    description: str | None
    entry: EntryInfo
    start: str
    channels: list[str]
    goal: dict[str, Any] | None
    nodes: list[NodeInfo] = Field(description="breadth-first from start")
    edges: list[EdgeInfo]
    versions: list[VersionInfo]


def get_journey(rt: Runtime, name: str) -> JourneyDetail:
    """A deployed journey with its graph (nodes, edges) and versions; `NotFound` otherwise."""
    with rt.engine.connect() as conn:
        found = jstore.deployed(conn, name)
        if not found:
            raise NotFound(f"no journey {name!r} is deployed")
        d = found[0]
        counts = _enrollment_counts(conn, name)
        versions = jstore.versions(conn, name)
    j = Journey.model_validate(d.definition)
    definition = j.definition()
    order = jstats.graph_order(j)  # stored JSON may not keep the file's key order
    return JourneyDetail(
        journey=d.name,
        status=d.status,
        version=d.version,
        deployed_at=d.deployed_at,
        enrollments=counts.get(name, {}),
        description=j.description,
        entry=entry_info(j),
        start=j.start,
        channels=list(j.channels),
        goal=j.goal.model_dump(mode="json", exclude_none=True) if j.goal else None,
        nodes=[
            NodeInfo(id=nid, type=j.nodes[nid].type, definition=definition["nodes"][nid])
            for nid in order
        ],
        edges=[
            EdgeInfo(source=nid, target=target, via=".".join(str(p) for p in path))
            for nid in order
            for path, target in edges(j.nodes[nid])
        ],
        versions=[
            VersionInfo(version=v, deployed_at=at, origin=origin, active=v == d.version)
            for v, at, origin in versions
        ],
    )


def deployed_text(rt: Runtime, name: str) -> JourneyText:
    """The text of a journey's active version, as it was deployed."""
    j, v = JourneyRow, JourneyVersionRow
    with rt.engine.connect() as conn:
        text = conn.execute(
            select(v.source)
            .join(j, (j.name == v.journey) & (j.active_version == v.version))
            .where(j.name == name)
        ).scalar()
    if text is None:
        raise NotFound(f"no journey {name!r} is deployed")
    return JourneyText(yaml=text)


# --------------------------------------------------------------------------- segment entry


def enter(rt: Runtime, name: str, run: str | None = None) -> SegmentRunInfo:
    """Evaluate a journey's segment now and queue everyone in it, once per run key
    (default: now, to the minute)."""
    with rt.engine.connect() as conn:
        if not jstore.deployed(conn, name):
            raise NotFound(f"no journey {name!r} is deployed")
    return _enter(rt.engine, name, run or utcnow().strftime("%Y%m%dT%H%M"))


# --------------------------------------------------------------------------- reports


def stats(rt: Runtime, name: str) -> jstats.JourneyStats:
    """Per version and node: entered, waiting, sent, suppressed (why), failed, ended; goal
    conversions per variant and for the holdout, with the uplift."""
    with rt.engine.connect() as conn:
        try:
            return jstats.journey_stats(conn, name)
        except jstats.UnknownJourney as exc:
            raise NotFound(str(exc)) from exc


class EnrollmentsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: EnrollmentStatus | None = None
    node: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_.:-]{0,63}$", description="only those now at this node"
    )
    limit: int = Field(jstats.DEFAULT_LIMIT, ge=1, le=MAX_ENROLLMENTS)


class EnrollmentList(BaseModel):
    journey: str
    status: str | None
    node: str | None = None
    total: int = Field(description="enrollments matching, however many are listed")
    enrollments: list[jstats.EnrollmentInfo] = Field(description="latest move first")


def enrollments(rt: Runtime, name: str, query: EnrollmentsQuery | None = None) -> EnrollmentList:
    """Who is where: a journey's enrollments (with a status, at a node), latest move first."""
    q = query or EnrollmentsQuery()
    with rt.engine.connect() as conn:
        if not jstats.journey_exists(conn, name):
            raise NotFound(f"no journey named {name!r} (deploy one, or check the name)")
        total = jstats.count_enrollments(conn, name, q.status, q.node)
        rows = jstats.enrollments(conn, name, q.status, q.limit, q.node)
    return EnrollmentList(
        journey=name,
        status=q.status,
        node=q.node,
        total=total,
        enrollments=rows,
    )


# --------------------------------------------------------------------------- simulation


class SimulationOptions(BaseModel):
    """One customer's run through a journey on the time-skipping test server."""

    model_config = ConfigDict(extra="forbid")

    customer: dict[str, Any] = Field(
        description="The customer: one object in the customer import format",
        examples=[{"customer_id": "C1", "email": "a@example.com", "consent": {"email": True}}],
    )
    events: list[Event] = Field(
        default_factory=list,
        max_length=MAX_SIMULATED_EVENTS,
        description="Their events, each signalled at its occurred_at",
    )
    start: datetime | None = Field(
        None, description="When the enrollment starts, with a zone (default: the first event)"
    )
    until_days: float | None = Field(
        None, gt=0, le=400, description="Stop this many simulated days after the start"
    )
    quiet_hours: str | None = Field(
        None, max_length=20, description="Quiet hours on the customer's clock, e.g. 21:00-08:00"
    )
    no_quiet_hours: bool = Field(False, description="Simulate without quiet hours")
    rules: bool = Field(
        False,
        description="Deploy the active rules version in the simulation (update nodes and "
        "branches on rule facts need it); journeys sent as text only",
    )


@contextmanager
def _materialised(
    rt: Runtime, text: JourneyText, with_rules: bool
) -> Iterator[tuple[Path, Path, Path | None]]:
    """A temporary folder holding the journey, the active programme and (with_rules) the
    active rules files, as the simulator reads them: (journey, programme, rules folder)."""
    with rt.engine.connect() as conn:
        found = active_source(conn)
    if found is None:
        raise Refused("no rules version is deployed: deploy one first")
    _, source = found
    with tempfile.TemporaryDirectory(prefix="crmflow-journey-") as tmp:
        folder = Path(tmp)
        journey = folder / TEXT_PATH
        journey.write_text(text.yaml, encoding="utf-8")
        program = folder / "program.yaml"
        program.write_text(source.program_text, encoding="utf-8")
        rules_dir: Path | None = None
        if with_rules:
            rules_dir = folder / "rules"
            rules_dir.mkdir()
            for name, body in source.files:
                (rules_dir / Path(name).name).write_text(body, encoding="utf-8")
        yield journey, program, rules_dir


async def simulate(
    rt: Runtime,
    source: JourneySource,
    options: SimulationOptions,
    *,
    rules_dir: Path | None = None,
    name: str | None = None,
) -> SimulationReport:
    """Run a journey for one customer in a throwaway world (nothing is sent): the path
    taken, every message with its simulated send time, the outcome (a `SimulationReport`).

    For a file, `rules_dir` is a rules folder to deploy in the simulation; for text,
    `options.rules` deploys the active rules version. With `name`, a journey sent as text
    must be that journey. `Invalid` for input that cannot run.
    """
    from crmflow.simulate import SimulationError, quiet_hours_overrides, simulate_async

    async def run(journey: Path, program: Path | None, rules: Path | None) -> SimulationReport:
        overrides = quiet_hours_overrides(options.quiet_hours, options.no_quiet_hours)
        return await simulate_async(
            journey,
            options.customer,
            options.events,
            settings=rt.settings,
            overrides=overrides,
            start=options.start,
            until_days=options.until_days,
            rules_dir=rules,
            program=program,
        )

    try:
        if isinstance(source, JourneyFile):
            return await run(source.path, source.program, rules_dir)
        loaded, _ = await asyncio.to_thread(load, rt, source)  # problems by line, not temp path
        if name is not None and loaded.journey.journey != name:
            raise Invalid(f"this is journey {loaded.journey.journey!r}, not {name!r}", field="yaml")
        with _materialised(rt, source, options.rules) as (journey, program, rules):
            return await run(journey, program, rules)
    except SimulationError as exc:
        raise Invalid(str(exc)) from exc


# --------------------------------------------------------------------------- dispatch


class DispatchSummary(BaseModel):
    commands: int
    started: int
    signalled: int
    skipped: dict[str, int]


async def dispatch(rt: Runtime, limit: int = 500) -> DispatchSummary:
    """Hand pending journey commands to Temporal once (workers do this continuously)."""
    from crmflow.dispatch import dispatch_once

    client = await rt.temporal()
    report = await dispatch_once(client, rt.engine, rt.settings.task_queue, limit)
    return DispatchSummary(**report.__dict__)
