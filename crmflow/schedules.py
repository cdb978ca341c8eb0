"""The schedules file made real as Temporal Schedules (`automation:<name>`), and what the
operator's commands read back: next and recent runs, and the runs' outcomes in the store.

`apply` makes Temporal match the file: it creates the schedules the file adds, updates the
ones whose definition changed (a fingerprint of the definition rides in the action's memo,
since Temporal gives cron expressions back only as calendars), pauses or resumes the ones
whose `paused` changed, and deletes crmflow's schedules the file no longer has.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from temporalio.api.enums.v1 import PendingActivityState, PendingWorkflowTaskState
from temporalio.api.workflowservice.v1 import ListScheduleMatchingTimesRequest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleBackfill,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
    WorkflowHistoryEventFilterType,
)
from temporalio.service import RPCError, RPCStatusCode

from automations.cron import next_runs
from automations.models import ScheduleBase, SchedulesFile
from crmflow.contracts.automations import AutomationInput, schedule_id
from rules.source import load_model

PREFIX = schedule_id("")
WORKFLOW = "AutomationWorkflow"
FINGERPRINT = "crmflow_fingerprint"
OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}


def load_schedules(path: Path) -> SchedulesFile:
    """Read and validate a schedules file; errors name the file and line."""
    return load_model(path, SchedulesFile, "a schedules file", "timezone:, schedules: [...]")


def automation_input(s: ScheduleBase) -> AutomationInput:
    return AutomationInput(
        schedule=s.name,
        automation=s.automation,
        timezone=s.zone,
        params=s.params.model_dump(),
    )


def fingerprint(s: ScheduleBase, task_queue: str) -> str:
    body = s.model_dump(mode="json", exclude={"paused"})
    raw = json.dumps([body, task_queue], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def desired(s: ScheduleBase, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            WORKFLOW,
            automation_input(s),
            id=f"automation-{s.name}",
            task_queue=task_queue,
            memo={FINGERPRINT: fingerprint(s, task_queue)},
        ),
        spec=ScheduleSpec(cron_expressions=[s.cron], time_zone_name=s.zone),
        policy=SchedulePolicy(overlap=OVERLAP[s.overlap], catchup_window=s.catchup()),
        state=ScheduleState(paused=s.paused, note=s.description or f"crmflow {s.automation}"),
    )


async def _describe(handle: ScheduleHandle) -> ScheduleDescription | None:
    try:
        return await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def memo_fingerprint(client: Client, desc: ScheduleDescription) -> str | None:
    action = desc.schedule.action
    memo = getattr(action, "memo", None) or {}
    raw = memo.get(FINGERPRINT)
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    return str(client.data_converter.payload_converter.from_payloads([raw])[0])


async def crmflow_schedule_ids(client: Client) -> set[str]:
    """The ids of crmflow's automation schedules on the server (visibility may lag a
    moment behind a create or delete)."""
    found: set[str] = set()
    async for entry in await client.list_schedules():
        if entry.id.startswith(PREFIX):
            found.add(entry.id)
    return found


@dataclass
class Change:
    schedule: str
    action: str  # created, updated, paused, resumed, deleted, unchanged

    def as_dict(self) -> dict[str, str]:
        return {"schedule": self.schedule, "action": self.action}


async def apply(
    client: Client, file: SchedulesFile, task_queue: str, *, dry_run: bool = False
) -> list[Change]:
    """Make the server's automation schedules match `file`; say what changed."""
    changes: list[Change] = []
    wanted = {schedule_id(s.name) for s in file.schedules}
    for s in file.schedules:
        sid = schedule_id(s.name)
        handle = client.get_schedule_handle(sid)
        schedule = desired(s, task_queue)
        desc = await _describe(handle)
        if desc is None:
            if not dry_run:
                try:
                    await client.create_schedule(sid, schedule)
                except ScheduleAlreadyRunningError:
                    desc = await _describe(handle)
            if desc is None:
                changes.append(Change(s.name, "created"))
                continue
        if memo_fingerprint(client, desc) != fingerprint(s, task_queue):
            if not dry_run:

                def replace(_: ScheduleUpdateInput, new: Schedule = schedule) -> ScheduleUpdate:
                    return ScheduleUpdate(schedule=new)

                await handle.update(replace)
            changes.append(Change(s.name, "updated"))
        elif desc.schedule.state.paused != s.paused:
            if not dry_run:
                if s.paused:
                    await handle.pause(note="paused by crmflow schedules apply")
                else:
                    await handle.unpause(note="resumed by crmflow schedules apply")
            changes.append(Change(s.name, "paused" if s.paused else "resumed"))
        else:
            changes.append(Change(s.name, "unchanged"))
    for sid in sorted(await crmflow_schedule_ids(client) - wanted):
        if not dry_run:
            try:
                await client.get_schedule_handle(sid).delete()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                continue
        changes.append(Change(sid.removeprefix(PREFIX), "deleted"))
    return changes


async def describe_or_none(client: Client, name: str) -> ScheduleDescription | None:
    return await _describe(client.get_schedule_handle(schedule_id(name)))


async def describe(client: Client, name: str) -> ScheduleDescription:
    desc = await _describe(client.get_schedule_handle(schedule_id(name)))
    if desc is None:
        raise LookupError(
            f"schedule {name!r} is not on the Temporal server; run `crmflow schedules apply`"
        )
    return desc


def status_of(desc: ScheduleDescription | None) -> dict[str, Any]:
    """Next and recent runs as Temporal sees them."""
    if desc is None:
        return {"on_server": False}
    info = desc.info
    recent = info.recent_actions[-1] if info.recent_actions else None
    return {
        "on_server": True,
        "paused": desc.schedule.state.paused,
        "note": desc.schedule.state.note,
        "next": [t.isoformat() for t in info.next_action_times[:3]],
        "last_scheduled": recent.scheduled_at.isoformat() if recent else None,
        "last_workflow": getattr(recent.action, "workflow_id", None) if recent else None,
        "runs_started": info.num_actions,
        "missed": info.num_actions_missed_catchup_window,
        "skipped_overlap": info.num_actions_skipped_overlap,
        "running": [getattr(a, "workflow_id", None) for a in info.running_actions],
    }


async def statuses(client: Client, file: SchedulesFile) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in file.schedules:
        out[s.name] = status_of(await _describe(client.get_schedule_handle(schedule_id(s.name))))
    return out


async def trigger(client: Client, name: str) -> str | None:
    """Run the schedule now (its overlap policy applies); the started workflow's id."""
    handle = client.get_schedule_handle(schedule_id(name))
    before = await describe(client, name)
    seen = {getattr(a.action, "workflow_id", None) for a in before.info.recent_actions}
    await handle.trigger()
    for _ in range(100):
        desc = await handle.describe()
        for a in reversed(desc.info.recent_actions):
            wid = getattr(a.action, "workflow_id", None)
            if wid not in seen:
                return wid
        await asyncio.sleep(0.1)
    return None


def parse_when(text: str, zone: str, *, end: bool) -> datetime:
    """A --from/--to value: a date (start or end of that day) or a date and time, in the
    schedule's zone unless it names an offset."""
    tz = ZoneInfo(zone)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a date or a time; expected YYYY-MM-DD or YYYY-MM-DDTHH:MM"
            ) from None
        return at if at.tzinfo else at.replace(tzinfo=tz)
    if end:
        return datetime.combine(day + timedelta(days=1), time(0), tz) - timedelta(microseconds=1)
    return datetime.combine(day, time(0), tz)


def runs_between(s: ScheduleBase, start: datetime, end: datetime) -> list[datetime]:
    """The times the schedule fires in [start, end]."""
    out: list[datetime] = []
    for at in next_runs(s.cron, s.zone, start - timedelta(microseconds=1), 10_000):
        if at > end:
            break
        out.append(at)
    return out


async def backfill(client: Client, s: ScheduleBase, start: datetime, end: datetime) -> None:
    """Run every time the schedule would have fired in [start, end], one after the other,
    each as of its own scheduled time."""
    handle = client.get_schedule_handle(schedule_id(s.name))
    await describe(client, s.name)
    await handle.backfill(
        ScheduleBackfill(
            start_at=start - timedelta(seconds=1),
            end_at=end,
            overlap=ScheduleOverlapPolicy.BUFFER_ALL,
        )
    )


async def pause(client: Client, name: str, note: str) -> None:
    await describe(client, name)
    await client.get_schedule_handle(schedule_id(name)).pause(note=note)


async def resume(client: Client, name: str, note: str) -> None:
    await describe(client, name)
    await client.get_schedule_handle(schedule_id(name)).unpause(note=note)


# --------------------------------------------------------------------------- live runs

CLOSED_FAILED = {"failed", "terminated", "timed_out", "canceled"}


@dataclass
class LiveRun:
    """A run's workflow as the server sees it: its status, the activity it is retrying (with
    the last error), and why it ended when it did not complete."""

    workflow_status: str  # running, completed, failed, terminated, timed_out, canceled, …
    retrying: dict[str, Any] | None = None
    failure: str | None = None
    # a task of the run no worker has picked up for `WAITING_AFTER`: what, and since when
    waiting: dict[str, Any] | None = None


def failure_text(failure: Any) -> str:
    """A Temporal failure (proto) as one line: its type when it has one, its message, and
    its cause's."""
    parts: list[str] = []
    while failure is not None and (failure.message or failure.HasField("cause")):
        kind = ""
        if failure.HasField("application_failure_info"):
            kind = failure.application_failure_info.type
        text = (
            f"{kind}: {failure.message}"
            if kind and kind not in failure.message
            else failure.message
        )
        if text and text not in parts:
            parts.append(text)
        failure = failure.cause if failure.HasField("cause") else None
    return " ← ".join(parts)


def _time(ts: Any) -> str | None:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat()


def _retrying(pending: Any) -> dict[str, Any] | None:
    """The first pending activity that has failed at least once: what it is, which attempt
    it is on, the last error and when it tries again."""
    for p in pending:
        if p.attempt <= 1 and not p.HasField("last_failure"):
            continue
        return {
            "activity": p.activity_type.name,
            "attempt": p.attempt,
            "maximum_attempts": p.maximum_attempts or None,
            "last_error": failure_text(p.last_failure) if p.HasField("last_failure") else None,
            "next_attempt_at": _time(p.next_attempt_schedule_time),
            "state": PendingActivityState.Name(p.state)
            .removeprefix("PENDING_ACTIVITY_STATE_")
            .lower(),
        }
    return None


WAITING_AFTER = timedelta(seconds=10)


def _waiting(raw: Any, now: datetime) -> dict[str, Any] | None:
    """The run's task that no worker has started for `WAITING_AFTER` (none polls its task
    queue, or all are busy): an activity's first attempt, or the workflow's own task."""
    found: tuple[str, Any] | None = None
    for p in raw.pending_activities:
        if (
            p.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED
            and p.attempt <= 1
            and not p.HasField("last_failure")
        ):
            found = (p.activity_type.name, p.scheduled_time)
            break
    task = raw.pending_workflow_task
    if (
        found is None
        and raw.HasField("pending_workflow_task")
        and task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED
    ):
        first = "original_scheduled_time" if task.HasField("original_scheduled_time") else ""
        found = ("workflow task", getattr(task, first or "scheduled_time"))
    if found is None:
        return None
    since = _time(found[1])
    if since is None or now - datetime.fromisoformat(since) < WAITING_AFTER:
        return None
    return {"task": found[0], "since": since, "task_queue": raw.execution_config.task_queue.name}


async def _close_reason(handle: WorkflowHandle[Any, Any], status: str) -> str:
    """Why a closed workflow did not complete, from its close event."""
    async for event in handle.fetch_history_events(
        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
    ):
        if event.HasField("workflow_execution_failed_event_attributes"):
            return failure_text(event.workflow_execution_failed_event_attributes.failure)
        if event.HasField("workflow_execution_terminated_event_attributes"):
            reason = event.workflow_execution_terminated_event_attributes.reason
            return f"the workflow was terminated{f': {reason}' if reason else ''}"
        if event.HasField("workflow_execution_timed_out_event_attributes"):
            return "the workflow timed out"
        if event.HasField("workflow_execution_canceled_event_attributes"):
            return "the workflow was cancelled"
    return f"the workflow ended {status}"


async def live_run(client: Client, workflow_id: str) -> LiveRun | None:
    """What the server says of a run's workflow (None: it has no such workflow, e.g. past
    its retention)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    status = desc.status.name.lower() if desc.status is not None else "unknown"
    out = LiveRun(workflow_status=status)
    if status == "running":
        out.retrying = _retrying(desc.raw_description.pending_activities)
        if out.retrying is None:
            out.waiting = _waiting(desc.raw_description, datetime.now(UTC))
    elif status in CLOSED_FAILED:
        out.failure = await _close_reason(handle, status)
    return out


async def matching_times(
    client: Client, name: str, start: datetime, end: datetime
) -> list[datetime]:
    """The times the server's schedule `automation:<name>` matches in [start, end], as the
    server computes them (its own time-zone rules, DST included)."""
    req = ListScheduleMatchingTimesRequest(
        namespace=client.namespace, schedule_id=schedule_id(name)
    )
    req.start_time.FromDatetime(start.astimezone(UTC))
    req.end_time.FromDatetime(end.astimezone(UTC))
    resp = await client.workflow_service.list_schedule_matching_times(req)
    return [t.ToDatetime(tzinfo=UTC) for t in resp.start_time]
