"""A worker's metrics: a Temporal interceptor that times and counts every activity attempt
and every automation run, and the HTTP port that serves them to Prometheus.

`MetricsInterceptor` is registered on every worker (`worker.build_worker`), so each
activity — journeys, projects, automations, the store — is measured without its own code
knowing (`crmflow_activities_total`, `crmflow_activity_seconds`,
`crmflow_activity_failures_total`). Automation runs are counted when their workflow ends,
from a workflow interceptor: it runs inside the workflow sandbox, so it records only
outside a replay (a worker that replays a run's history to resume it counts nothing) and
hands the figures out through an extern function, the sandbox's documented way out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from crmflow.metrics import record_activity, record_automation_run

log = logging.getLogger(__name__)

AUTOMATION_WORKFLOW = "AutomationWorkflow"  # crmflow.schedules.WORKFLOW
_EXTERN = "crmflow_automation_run_ended"


def failure_kind(exc: BaseException) -> str:
    """`non_retryable` for an error Temporal will not retry, else `retryable`."""
    if isinstance(exc, ApplicationError) and exc.non_retryable:
        return "non_retryable"
    return "retryable"


class _ActivityMetrics(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        started = time.perf_counter()
        try:
            result = await self.next.execute_activity(input)
        except (asyncio.CancelledError, CancelledError):
            record_activity(name, "cancelled", time.perf_counter() - started)
            raise
        except BaseException as exc:
            record_activity(name, "failed", time.perf_counter() - started, failure_kind(exc))
            raise
        record_activity(name, "completed", time.perf_counter() - started)
        return result


class _WorkflowMetrics(WorkflowInboundInterceptor):
    """Counts the end of an automation run (other workflows pass straight through)."""

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        if workflow.info().workflow_type != AUTOMATION_WORKFLOW:
            return await self.next.execute_workflow(input)
        automation = str(getattr(input.args[0], "automation", "") or "unknown")
        try:
            result = await self.next.execute_workflow(input)
        except workflow.ContinueAsNewError:
            raise
        except (asyncio.CancelledError, CancelledError):
            self._ended(automation, "cancelled")
            raise
        except BaseException:
            self._ended(automation, "failed")
            raise
        self._ended(automation, str(getattr(result, "status", "completed")))
        return result

    @staticmethod
    def _ended(automation: str, status: str) -> None:
        if workflow.unsafe.is_replaying():
            return
        seconds = (workflow.now() - workflow.info().workflow_start_time).total_seconds()
        workflow.extern_functions()[_EXTERN](automation, status, seconds)


class MetricsInterceptor(Interceptor):
    """Register on a `Worker(interceptors=[MetricsInterceptor()])`."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityMetrics(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        ended: Callable[[str, str, float], None] = record_automation_run
        input.unsafe_extern_functions[_EXTERN] = ended
        return _WorkflowMetrics


class MetricsPortError(RuntimeError):
    """The metrics port cannot be listened on (taken, or a bad address)."""


class MetricsServer:
    """The worker's metrics on `http://host:port/metrics` (any path answers), on a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        try:
            server, thread = start_http_server(self.port, addr=self.host)
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve metrics on {self.host}:{self.port} (CRMFLOW_METRICS_HOST, "
                f"CRMFLOW_METRICS_PORT): {exc.strerror or exc}"
            ) from exc
        self._server, self._thread = server, thread
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
