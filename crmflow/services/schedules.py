"""Scheduled automations as a service: a schedules file made real as Temporal Schedules, and
what operators read back — validate, preview, apply, list, runs, trigger, backfill, pause,
resume.

Every function takes the path of the schedules file (the CLI's `--file`, the API's configured
file): the file is the source of truth for which schedules exist, so a name the file does not
have is `NotFound` even if an old schedule of that name lingers on the server. A file that
does not load is `Invalid` (each problem names its file and line); Temporal not answering is
`Unavailable`. The Temporal plumbing itself is `crmflow.schedules`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from automations.cron import dst_warnings, next_runs
from automations.models import ScheduleBase, SchedulesFile
from crmflow import schedules as sched
from crmflow.contracts.automations import RunSummary
from crmflow.services.errors import FieldProblem, Invalid, NotFound, TooLarge, Unavailable
from crmflow.services.runtime import Runtime
from rules.source import SourceError
from store.automation_runs import last_runs, recent_runs
from store.db import utcnow

MAX_BACKFILL_RUNS = 1000
MAX_RUNS_LISTED = 1000
MAX_LIVE_LOOKUPS = 20
PREVIEW_CONNECT_SECONDS = 10


class SchedulesFileInvalid(Invalid):
    """A schedules file that does not load: one problem per error (file:line, message);
    the message says how many and that nothing was changed."""

    def __init__(self, path: Path, errors: list[FieldProblem]) -> None:
        super().__init__(errors)
        self.path = path
        self.message = f"{path}: {len(errors)} problem(s); nothing was changed"


# --- models --------------------------------------------------------------------------------


class ScheduleInfo(BaseModel):
    """A schedule as the file defines it."""

    name: str
    automation: str
    cron: str
    timezone: str
    overlap: str
    catchup_window: str
    paused: bool
    params: dict[str, Any]
    warnings: list[str] = Field(
        default_factory=list,
        description="(validate) cron times that do not exist, or happen twice, in the zone on "
        "some day of the next two years, and what the Temporal server does then",
    )


class ServerState(BaseModel):
    """A schedule as the Temporal server sees it (only `on_server` when it is not there)."""

    on_server: bool
    paused: bool | None = None
    note: str | None = None
    next: list[datetime] = Field(default_factory=list, description="The next (up to 3) runs")
    last_scheduled: datetime | None = None
    last_workflow: str | None = None
    runs_started: int | None = None
    missed: int | None = Field(None, description="Runs missed beyond the catch-up window")
    skipped_overlap: int | None = None
    running: list[str | None] = Field(default_factory=list, description="Running workflows")


class Retrying(BaseModel):
    """An activity of a running run that failed and is being tried again, as the Temporal
    server reports it (the workflow's pending activity)."""

    activity: str = Field(description="automation_begin, automation_step or automation_finish")
    attempt: int = Field(description="the attempt it is on (2: the first retry)")
    maximum_attempts: int | None = Field(None, description="None: unlimited")
    last_error: str | None = Field(None, description="why the last attempt failed")
    next_attempt_at: datetime | None = Field(None, description="when it is tried again")
    state: str = Field(description="scheduled (waiting for its next attempt) or started")


class Waiting(BaseModel):
    """A task of a running run that no worker has started for a while: no worker polls its
    task queue, or every worker is busy."""

    task: str = Field(description="the activity, or `workflow task`")
    since: datetime
    task_queue: str


RUN_STATUS = (
    "running, completed or failed as the store recorded it; retrying when the server says "
    "an activity of the running run failed and is tried again (see `retrying`); waiting when "
    "no worker has started its next task for a while (see `waiting`); terminated, "
    "timed_out or canceled when the workflow ended so before it could record its end"
)


class LastRun(BaseModel):
    run_date: str
    attempt: int
    status: str = Field(description=RUN_STATUS)
    counts: dict[str, int | float]
    started_at: datetime
    finished_at: datetime | None
    error: str | None = Field(None, description="why the run failed")
    retrying: Retrying | None = None
    waiting: Waiting | None = None
    workflow_id: str | None = None


class ScheduleStatus(ScheduleInfo):
    """A schedule in `list`: the file's definition, the server's state, the last run."""

    server: ServerState
    last_run: LastRun | None


class RunRecord(BaseModel):
    """One attempt of a schedule at a run date, as the store recorded it."""

    run_date: str
    attempt: int
    status: str = Field(description=RUN_STATUS)
    as_of: datetime
    started_at: datetime
    finished_at: datetime | None
    step: str | None
    counts: dict[str, int | float]
    error: str | None = Field(None, description="why the run failed")
    workflow_id: str | None
    retrying: Retrying | None = None
    waiting: Waiting | None = None


class InFlight(BaseModel):
    """A run the server has started that the store has no record of yet (it fails before
    its first activity could record it, say)."""

    workflow_id: str
    status: str = Field(description="running, retrying or waiting")
    retrying: Retrying | None = None
    waiting: Waiting | None = None


class ScheduleRuns(BaseModel):
    schedule: str
    server: ServerState
    runs: list[RunRecord]
    unrecorded: list[InFlight] = Field(
        default_factory=list, description="running workflows of the schedule with no run row"
    )


class ScheduleChange(BaseModel):
    schedule: str
    action: str = Field(description="created, updated, paused, resumed, deleted or unchanged")


class ApplyResult(BaseModel):
    dry_run: bool
    changes: list[ScheduleChange]


class Preview(BaseModel):
    schedule: str
    cron: str
    timezone: str
    next: list[datetime]
    source: str = Field(
        "croniter",
        description="server: the times the Temporal server's schedule matches; croniter: "
        "computed here from the file (the server was not asked, did not answer, or does not "
        "have the schedule)",
    )
    note: str | None = Field(None, description="why the times are not the server's, or caveats")
    differs: list[str] = Field(
        default_factory=list,
        description="where croniter's calculation from the file and the server's disagree",
    )


class TriggerResult(BaseModel):
    """A run started now; with waiting, its summary or its error."""

    schedule: str
    workflow_id: str | None = Field(
        None, description="None when the overlap policy skipped the run"
    )
    run: RunSummary | None = None
    error: str | None = Field(None, description="Why the run failed (when waited for)")
    timed_out: bool = Field(False, description="Still running when the wait ended")


class BackfillResult(BaseModel):
    schedule: str
    runs: list[datetime] = Field(description="The scheduled times queued, one after the other")


class PauseResult(BaseModel):
    schedule: str
    paused: bool = Field(description="The state now on the server")
    file_paused: bool = Field(description="What the file says (the next apply follows the file)")


class BackfillRange(BaseModel):
    """From and to: a day (YYYY-MM-DD, `to` inclusive) or a time, in the schedule's zone
    unless it names an offset."""

    from_: str = Field(alias="from", min_length=1, max_length=40, examples=["2026-11-01"])
    to: str = Field(min_length=1, max_length=40, examples=["2026-11-07"])

    model_config = {"populate_by_name": True}


# --- the file ------------------------------------------------------------------------------


def load(path: Path) -> SchedulesFile:
    """The schedules file; `Invalid` when it is missing or does not validate."""
    if not path.exists():
        raise Invalid(f"{path}: no such schedules file", field="file")
    try:
        return sched.load_schedules(path)
    except SourceError as exc:
        problems = [
            FieldProblem(f"{e.file}:{e.line}" if e.line else e.file, e.message) for e in exc.errors
        ]
        raise SchedulesFileInvalid(path, problems) from None


def one(file: SchedulesFile, name: str) -> ScheduleBase:
    try:
        return file.get(name)
    except KeyError as exc:
        raise NotFound(str(exc.args[0])) from None


def info(s: ScheduleBase) -> ScheduleInfo:
    return ScheduleInfo(
        name=s.name,
        automation=s.automation,
        cron=s.cron,
        timezone=s.zone,
        overlap=s.overlap,
        catchup_window=s.catchup_window,
        paused=s.paused,
        params=s.params.model_dump(),
    )


CATCHES_UP = frozenset({"date_events", "points_expiry"})


def _dst_note(kind: str, automation: str) -> str:
    if kind == "repeated":
        return "the second run is another attempt of the same run date: nothing is done twice"
    if automation in CATCHES_UP:
        return "the next run covers the missed day"
    return "that day has no run"


def dst_messages(s: ScheduleBase, today: date) -> list[str]:
    """What daylight-saving changes do to the schedule in the next two years: one warning
    per kind (a missing or a repeated run), with its first day."""
    found = dst_warnings(s.cron, s.zone, today)
    out: list[str] = []
    for kind in ("missing", "repeated"):
        mine = [w for w in found if w.kind == kind]
        if not mine:
            continue
        days = sorted({w.day for w in mine})
        more = f" (and on {len(days) - 1} more day(s) in two years)" if len(days) > 1 else ""
        out.append(
            f"{mine[0].message(s.cron, s.zone)}{more}; {_dst_note(kind, s.automation)}; a time "
            "outside the change, or a zone without daylight saving (UTC), avoids it"
        )
    return out


def validate(path: Path, today: date | None = None) -> list[ScheduleInfo]:
    """Check a schedules file: cron expressions, time zones, automations and parameters;
    warn of cron times that daylight-saving changes skip or repeat."""
    day = today or utcnow().date()
    out = []
    for s in load(path).schedules:
        i = info(s)
        i.warnings = dst_messages(s, day)
        out.append(i)
    return out


def preview(path: Path, name: str, count: int = 5, now: datetime | None = None) -> Preview:
    """The next `count` times croniter computes from the file, in the schedule's zone (no
    Temporal needed; `preview_runs` asks the server)."""
    s = one(load(path), name)
    at = now or datetime.now().astimezone()
    return Preview(
        schedule=name, cron=s.cron, timezone=s.zone, next=next_runs(s.cron, s.zone, at, count)
    )


CRONITER_CAVEAT = (
    "croniter's times can differ from the server's around daylight-saving changes "
    "(`crmflow schedules validate` lists them)"
)


async def _server_times(
    client: Client, s: ScheduleBase, after: datetime, count: int, guess: list[datetime]
) -> list[datetime]:
    """The first `count` times after `after` that the server's schedule matches."""
    end = (guess[-1] if guess else after) + timedelta(days=2)
    for _ in range(4):
        times = [t for t in await sched.matching_times(client, s.name, after, end) if t > after]
        if len(times) >= count:
            break
        end = after + 2 * (end - after)  # a skipped day (or more): look further
    zone = ZoneInfo(s.zone)
    return [t.astimezone(zone) for t in times[:count]]


def _differences(local: list[datetime], server: list[datetime], zone: str) -> list[str]:
    """croniter's times and the server's that the other does not have, up to the last
    time both looked at."""
    if not local or not server:
        return []
    until = min(local[-1], server[-1])
    mine = {t for t in local if t <= until}
    theirs = {t for t in server if t <= until}
    tz = ZoneInfo(zone)
    out = [
        f"croniter says {t.astimezone(tz):%Y-%m-%d %H:%M %Z}; the server does not run then"
        for t in sorted(mine - theirs)
    ]
    out += [
        f"the server runs at {t.astimezone(tz):%Y-%m-%d %H:%M %Z}; croniter does not list it"
        for t in sorted(theirs - mine)
    ]
    return out


async def preview_runs(
    rt: Runtime, path: Path, name: str, count: int = 5, now: datetime | None = None
) -> Preview:
    """The next `count` times the schedule runs: the Temporal server's own times when it
    answers and has the schedule, else croniter's from the file, with a note saying so."""
    at = now or utcnow()
    out = preview(path, name, count, at)
    s = one(load(path), name)
    try:
        client = await asyncio.wait_for(rt.temporal(), PREVIEW_CONNECT_SECONDS)
        async with _temporal_errors():
            desc = await sched.describe_or_none(client, name)
            if desc is None:
                out.note = (
                    "not on the Temporal server (run `crmflow schedules apply`): the times are "
                    f"croniter's from the file; {CRONITER_CAVEAT}"
                )
                return out
            times = await _server_times(client, s, at, count, out.next)
    except (Unavailable, TimeoutError) as exc:
        reason = str(exc) or "no answer in time"
        out.note = (
            f"Temporal did not answer ({reason}): the times are croniter's; {CRONITER_CAVEAT}"
        )
        return out
    notes = []
    if desc.schedule.state.paused:
        notes.append("paused on the server: it runs none of these until resumed")
    if sched.memo_fingerprint(client, desc) != sched.fingerprint(s, rt.settings.task_queue):
        notes.append(
            "the server's schedule is not the file's (run `crmflow schedules apply`): these "
            "are the server's times"
        )
    return Preview(
        schedule=name,
        cron=s.cron,
        timezone=s.zone,
        next=times,
        source="server",
        note="; ".join(notes) or None,
        differs=_differences(out.next, times, s.zone),
    )


# --- Temporal ------------------------------------------------------------------------------


@asynccontextmanager
async def _temporal_errors() -> AsyncIterator[None]:
    """`crmflow.schedules` raises LookupError for a schedule not on the server; the server
    going away mid-call is an RPCError."""
    try:
        yield
    except LookupError as exc:
        raise NotFound(str(exc.args[0])) from None
    except RPCError as exc:
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise Unavailable(f"Temporal did not answer: {exc.message}") from None
        raise


def _server(status: dict[str, Any]) -> ServerState:
    # validated from the dict so that `exclude_unset` gives back exactly what Temporal said
    return ServerState.model_validate(status)


async def apply(rt: Runtime, path: Path, *, dry_run: bool = False) -> ApplyResult:
    """Make the Temporal Schedules match the file: create, update, pause/resume, delete."""
    f = load(path)
    client = await rt.temporal()
    async with _temporal_errors():
        changes = await sched.apply(client, f, rt.settings.task_queue, dry_run=dry_run)
    return ApplyResult(
        dry_run=dry_run,
        changes=[ScheduleChange(schedule=c.schedule, action=c.action) for c in changes],
    )


def last_run(run: Any) -> LastRun | None:
    """A stored run (a row of `automation_runs`) as a schedule's last run."""
    if run is None:
        return None
    return LastRun(
        run_date=run.run_date,
        attempt=run.attempt,
        status=run.status,
        counts=run.counts or {},
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        workflow_id=run.workflow_id,
    )


def _with_live(record: RunRecord | LastRun, live: sched.LiveRun | None) -> None:
    """What the server says of a run the store has as running: retrying (with the last
    error), or ended without recording it (and why)."""
    if live is None:
        return
    if live.retrying is not None:
        record.status = "retrying"
        record.retrying = Retrying.model_validate(live.retrying)
    elif live.waiting is not None:
        record.status = "waiting"
        record.waiting = Waiting.model_validate(live.waiting)
    elif live.workflow_status in sched.CLOSED_FAILED:
        record.status = live.workflow_status
        record.error = record.error or live.failure


async def _live(client: Client, records: list[Any]) -> None:
    """Ask the server about each record the store has as running (at most
    `MAX_LIVE_LOOKUPS` of them: one describe each)."""
    running = [r for r in records if r.status == "running" and r.workflow_id]
    for r in running[:MAX_LIVE_LOOKUPS]:
        _with_live(r, await sched.live_run(client, r.workflow_id))


async def list_schedules(rt: Runtime, path: Path) -> list[ScheduleStatus]:
    """Every schedule of the file: its state on the server (next runs) and its last run."""
    f = load(path)
    client = await rt.temporal()
    async with _temporal_errors():
        server = await sched.statuses(client, f)

    def read() -> dict[str, Any]:
        with rt.engine.connect() as conn:
            return last_runs(conn)

    last = await asyncio.to_thread(read)
    out = [
        ScheduleStatus(
            **info(s).model_dump(),
            server=_server(server.get(s.name, {"on_server": False})),
            last_run=last_run(last.get(s.name)),
        )
        for s in f.schedules
    ]
    async with _temporal_errors():
        await _live(client, [s.last_run for s in out if s.last_run is not None])
    return out


def run_record(r: Any) -> RunRecord:
    """A stored automation run (a row of `automation_runs`) as the services show it."""
    return RunRecord(
        run_date=r.run_date,
        attempt=r.attempt,
        status=r.status,
        as_of=r.as_of,
        started_at=r.started_at,
        finished_at=r.finished_at,
        step=r.step,
        counts=r.counts or {},
        error=r.error,
        workflow_id=r.workflow_id,
    )


async def runs(rt: Runtime, path: Path, name: str, limit: int = 20) -> ScheduleRuns:
    """A schedule's recent runs (newest first) and its next runs."""
    s = one(load(path), name)
    limit = max(1, min(limit, MAX_RUNS_LISTED))
    client = await rt.temporal()
    async with _temporal_errors():
        server = sched.status_of(await sched.describe_or_none(client, name))

    def read() -> list[Any]:
        with rt.engine.connect() as conn:
            return recent_runs(conn, s.name, limit)

    found = await asyncio.to_thread(read)
    out = ScheduleRuns(
        schedule=name, server=_server(server), runs=[run_record(r) for r in found], unrecorded=[]
    )
    async with _temporal_errors():
        await _live(client, out.runs)
        recorded = {r.workflow_id for r in out.runs}
        for wid in out.server.running:
            if wid is None or wid in recorded:
                continue
            live = await sched.live_run(client, wid)
            if live is not None and live.workflow_status == "running":
                retrying = Retrying.model_validate(live.retrying) if live.retrying else None
                waiting = Waiting.model_validate(live.waiting) if live.waiting else None
                status = "retrying" if retrying else "waiting" if waiting else "running"
                out.unrecorded.append(
                    InFlight(workflow_id=wid, status=status, retrying=retrying, waiting=waiting)
                )
    return out


async def trigger(
    rt: Runtime, path: Path, name: str, *, wait: bool = False, timeout: float | None = None
) -> TriggerResult:
    """Run a schedule now (as of now; its overlap policy applies). With `wait`, wait for the
    run (at most `timeout` seconds when given) and give its summary or why it failed."""
    one(load(path), name)
    client = await rt.temporal()
    async with _temporal_errors():
        wid = await sched.trigger(client, name)
        out = TriggerResult(schedule=name, workflow_id=wid)
        if wait and wid:
            handle = client.get_workflow_handle(wid, result_type=RunSummary)
            try:
                out.run = await asyncio.wait_for(handle.result(), timeout)
            except WorkflowFailureError as exc:
                out.error = str(exc.cause or exc)
            except TimeoutError:
                out.timed_out = True
    return out


def backfill_times(
    s: ScheduleBase, when: BackfillRange, now: datetime | None = None
) -> tuple[datetime, datetime, list[datetime]]:
    """The range and the times the schedule fires in it; `Invalid` for a bad or reversed
    range, or one with a run after `now` (default: the clock); `TooLarge` for more than
    `MAX_BACKFILL_RUNS` runs."""
    try:
        start = sched.parse_when(when.from_, s.zone, end=False)
        end = sched.parse_when(when.to, s.zone, end=True)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    except OverflowError:  # a day at the edge of the calendar (year 1 or 9999)
        raise Invalid("the dates are out of range") from None
    if end < start:
        raise Invalid(f"{when.to} is before from {when.from_}", field="to")
    try:
        times = _fire_times(s, start, end, MAX_BACKFILL_RUNS + 1)
    except (OverflowError, ValueError):  # croniter's errors are ValueErrors
        raise Invalid("the dates are out of range") from None
    if len(times) > MAX_BACKFILL_RUNS:
        raise TooLarge(
            f"more than {MAX_BACKFILL_RUNS:,} runs between {when.from_} and {when.to}: at most "
            f"{MAX_BACKFILL_RUNS:,} at a time"
        )
    # A run is as of its own time: one as of a night still to come would expire points and
    # tags before their date. A backfill replays nights that have passed, nothing later.
    now = now or utcnow()
    future = [t for t in times if t > now]
    if future:
        local = ZoneInfo(s.zone)
        raise Invalid(
            f"the range reaches past now: the run of {future[0].astimezone(local):%Y-%m-%d %H:%M} "
            f"({s.zone}) has not come yet, and it would act as of then (expiring what is not "
            f"due); backfill only what has passed, up to "
            f"{now.astimezone(local):%Y-%m-%d %H:%M}",
            field="to",
        )
    return start, end, times


def _fire_times(s: ScheduleBase, start: datetime, end: datetime, cap: int) -> list[datetime]:
    """The times the schedule fires in [start, end], at most `cap` of them: what
    `crmflow.schedules.runs_between` gives, without working out 10,000 times first (a few
    seconds) for a week's backfill."""
    zone = ZoneInfo(s.zone)
    itr = croniter(s.cron.strip(), (start - timedelta(microseconds=1)).astimezone(zone))
    out: list[datetime] = []
    while len(out) < cap:
        at = itr.get_next(datetime).astimezone(zone)
        if at > end:
            break
        out.append(at)
    return out


async def backfill(rt: Runtime, path: Path, name: str, when: BackfillRange) -> BackfillResult:
    """Run every time the schedule would have fired between two dates, one after the other,
    each as of its own time (days missed while nothing ran)."""
    s = one(load(path), name)
    # croniter takes a moment for a long range: not on the event loop
    start, end, times = await asyncio.to_thread(backfill_times, s, when)
    client = await rt.temporal()
    async with _temporal_errors():
        await sched.backfill(client, s, start, end)
    return BackfillResult(schedule=name, runs=times)


async def pause(rt: Runtime, path: Path, name: str, note: str | None = None) -> PauseResult:
    """Stop a schedule's runs until `resume` (a running run finishes)."""
    s = one(load(path), name)
    client = await rt.temporal()
    async with _temporal_errors():
        await sched.pause(client, name, note or "paused with crmflow schedules pause")
    return PauseResult(schedule=name, paused=True, file_paused=s.paused)


async def resume(rt: Runtime, path: Path, name: str, note: str | None = None) -> PauseResult:
    """Let a paused schedule run again."""
    s = one(load(path), name)
    client = await rt.temporal()
    async with _temporal_errors():
        await sched.resume(client, name, note or "resumed with crmflow schedules resume")
    return PauseResult(schedule=name, paused=False, file_paused=s.paused)
