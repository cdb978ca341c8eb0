"""Health: whether the database answers at the current schema, whether Temporal answers,
and whether a worker polls crmflow's task queue.

Two levels, for two audiences:

- `readiness(rt)`: can this API process serve — its database answers at the schema head.
  Only that, as a yes or no: the public probes (`/livez`, `/readyz`) say nothing more, so
  they are safe without a key, as load balancers and container health checks need.
- `check_health(rt)`: the detail, for a caller with `health.read` (`GET /api/v1/health`):
  the database (dialect, revision, head), Temporal (the namespace answers) and the workers
  (pollers seen on the task queue's workflow and activity queues in the last
  `POLLER_FRESH_SECONDS`). No address, host name or secret is ever part of it.

`ok` is the API's own readiness (the database); `status` is the whole picture: `ok` when
everything answers, `degraded` when the database does but Temporal or the workers do not
(events are stored and the rules run; journeys, schedules and automations wait), `down`
when the database does not.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from crmflow.services.errors import Unavailable
from crmflow.services.runtime import Runtime
from store.migrate import current_revision, head_revision

log = logging.getLogger(__name__)

TEMPORAL_TIMEOUT_SECONDS = 3.0
# A worker long-polls each queue (about a minute per poll when idle); the server remembers
# pollers for some minutes after they stop. Seen within two minutes: polling now.
POLLER_FRESH_SECONDS = 120


class DatabaseHealth(BaseModel):
    ok: bool = Field(False, description="The database answers at the newest schema revision")
    dialect: str
    revision: str | None = None
    head: str | None = None
    error: str | None = Field(None, description="Why not, in words (no address, no secret)")


class TemporalHealth(BaseModel):
    ok: bool = Field(False, description="The Temporal namespace answers")
    namespace: str
    error: str | None = None


class WorkersHealth(BaseModel):
    ok: bool = Field(
        False, description="At least one worker polls both the workflow and the activity queue"
    )
    task_queue: str
    workflow_pollers: int = Field(0, description="Workers seen polling for workflow tasks")
    activity_pollers: int = Field(0, description="Workers seen polling for activity tasks")
    last_poll: datetime | None = Field(None, description="The newest poll seen, on either queue")
    error: str | None = None


class Health(BaseModel):
    ok: bool = Field(description="This API process can serve: its database answers (else 503)")
    status: Literal["ok", "degraded", "down"] = Field(
        "down",
        description="ok: database, Temporal and workers; degraded: the database answers but "
        "Temporal or the workers do not (journeys, schedules, automations wait); down: the "
        "database does not answer",
    )
    database: DatabaseHealth
    temporal: TemporalHealth | None = None
    workers: WorkersHealth | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]


def database_health(rt: Runtime) -> DatabaseHealth:
    dialect = rt.engine.dialect.name
    try:
        revision = current_revision(rt.engine)
    except Exception as exc:  # unreachable, refused, no schema: not healthy either way
        log.warning("health: the database does not answer: %s", exc)
        return DatabaseHealth(
            dialect=dialect, error=f"the database does not answer ({type(exc).__name__})"
        )
    head = head_revision()
    if revision != head:
        return DatabaseHealth(
            dialect=dialect,
            revision=revision,
            head=head,
            error=f"the schema is at {revision}, not {head}: run `crmflow migrate`",
        )
    return DatabaseHealth(ok=True, dialect=dialect, revision=revision, head=head)


def readiness(rt: Runtime) -> Readiness:
    return Readiness(status="ready" if database_health(rt).ok else "not ready")


async def _temporal_and_workers(rt: Runtime) -> tuple[TemporalHealth, WorkersHealth]:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import (
        DescribeTaskQueueRequest,
        GetSystemInfoRequest,
    )
    from temporalio.service import RPCError

    s = rt.settings
    temporal = TemporalHealth(namespace=s.temporal_namespace)
    workers = WorkersHealth(task_queue=s.task_queue)
    timeout = timedelta(seconds=TEMPORAL_TIMEOUT_SECONDS)
    try:
        client = await asyncio.wait_for(rt.temporal(), TEMPORAL_TIMEOUT_SECONDS)
        await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timeout)
    except (TimeoutError, Unavailable, RPCError, RuntimeError) as exc:
        log.warning("health: Temporal does not answer: %s", exc)
        temporal.error = "Temporal does not answer (see the API's log for why)"
        workers.error = "unknown while Temporal does not answer"
        return temporal, workers
    temporal.ok = True
    fresh_after = datetime.now(UTC) - timedelta(seconds=POLLER_FRESH_SECONDS)
    seen: dict[str, int] = {}
    try:
        for kind, queue_type in (
            ("workflow", TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
            ("activity", TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
        ):
            found = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=s.temporal_namespace,
                    task_queue=TaskQueue(name=s.task_queue),
                    task_queue_type=queue_type,
                ),
                timeout=timeout,
            )
            polls = [
                p.last_access_time.ToDatetime(tzinfo=UTC)
                for p in found.pollers
                if p.HasField("last_access_time")
            ]
            fresh = [t for t in polls if t >= fresh_after]
            seen[kind] = len(fresh)
            if fresh and (workers.last_poll is None or max(fresh) > workers.last_poll):
                workers.last_poll = max(fresh)
    except (TimeoutError, RPCError, RuntimeError) as exc:
        log.warning("health: describing task queue %r failed: %s", s.task_queue, exc)
        workers.error = "the task queue could not be described (see the API's log)"
        return temporal, workers
    workers.workflow_pollers = seen.get("workflow", 0)
    workers.activity_pollers = seen.get("activity", 0)
    workers.ok = workers.workflow_pollers > 0 and workers.activity_pollers > 0
    if not workers.ok:
        workers.error = (
            f"no worker polled task queue {s.task_queue!r} in the last "
            f"{POLLER_FRESH_SECONDS} s: start `python worker.py`"
        )
    return temporal, workers


async def check_health(rt: Runtime) -> Health:
    """The database, Temporal and the workers, each with `ok` and, when not, why."""
    database = await asyncio.to_thread(database_health, rt)
    temporal, workers = await _temporal_and_workers(rt)
    if not database.ok:
        status: Literal["ok", "degraded", "down"] = "down"
    elif temporal.ok and workers.ok:
        status = "ok"
    else:
        status = "degraded"
    return Health(
        ok=database.ok, status=status, database=database, temporal=temporal, workers=workers
    )
