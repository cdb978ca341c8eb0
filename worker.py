"""Run one crmflow worker against the Temporal cluster and database the settings name.

    python worker.py            # or: crmflow worker

Start as many as you like, on as many machines: they share the task queue. Stops cleanly on
Ctrl-C or SIGTERM, letting running activities finish first. With `CRMFLOW_METRICS_PORT` set,
the worker serves its Prometheus metrics there (`CRMFLOW_METRICS_HOST`, 127.0.0.1 by
default); every activity and automation run is measured by `crmflow.worker_metrics`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.registry import build_activities
from crmflow.dispatch import dispatch_forever
from crmflow.settings import Settings
from crmflow.temporal import TemporalSetupError, connect, exit_skipping_finalizers
from crmflow.worker_metrics import MetricsInterceptor, MetricsPortError, MetricsServer
from store.db import make_engine
from workflows.registry import WORKFLOWS

ACTIVITY_THREADS = 16
# crmflow's own packages that workflows import: pure, deterministic, no I/O at import time.
# Passed through the sandbox, they are imported once per worker process instead of once per
# workflow run (the sandbox re-executes a workflow's modules for every new run; for
# JourneyWorkflow that was ~20 ms of CPU per enrollment). The sandbox's runtime checks on
# non-deterministic calls still apply to workflow code.
WORKFLOW_PACKAGES = ("workflows", "crmflow", "journeys", "rules", "projects", "automations")


def workflow_runner(*extra: str) -> SandboxedWorkflowRunner:
    """The sandbox every crmflow worker runs its workflows in (`extra`: more packages)."""
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*WORKFLOW_PACKAGES, *extra)
    return SandboxedWorkflowRunner(restrictions=restrictions)


def build_worker(
    client: Client, settings: Settings, engine: Engine, executor: ThreadPoolExecutor
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=build_activities(engine, settings),
        activity_executor=executor,
        max_concurrent_activities=ACTIVITY_THREADS,
        workflow_runner=workflow_runner(),
        interceptors=[MetricsInterceptor()],
        graceful_shutdown_timeout=timedelta(seconds=30),
    )


async def run_worker(client: Client, settings: Settings, stop: asyncio.Event) -> None:
    """Poll the task queue until `stop` is set, then drain and return."""
    metrics = None
    if settings.metrics_port is not None:
        metrics = MetricsServer(settings.metrics_host, settings.metrics_port).start()
    engine = make_engine(settings.db_url)
    # async activities (sending) do their database work with asyncio.to_thread: give that
    # as many threads as the synchronous activities have (the loop's default is cores + 4)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(ACTIVITY_THREADS))
    try:
        with ThreadPoolExecutor(max_workers=ACTIVITY_THREADS) as executor:
            worker = build_worker(client, settings, engine, executor)
            async with worker:
                # journey commands the events left in the outbox go to Temporal from here
                dispatcher = asyncio.create_task(
                    dispatch_forever(
                        client,
                        engine,
                        settings.task_queue,
                        settings.dispatch_interval_seconds,
                        stop,
                    )
                )
                await stop.wait()
                await dispatcher
    finally:
        if metrics is not None:
            metrics.stop()
        engine.dispose()


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _main() -> None:
    settings = Settings()
    stop = asyncio.Event()
    install_stop_handlers(stop)
    client = await connect(settings)
    print(f"worker polling {settings.task_queue!r} on {settings.temporal_target}; Ctrl-C stops")
    if settings.metrics_port is not None:
        print(f"metrics: http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    await run_worker(client, settings, stop)


def main() -> None:
    try:
        asyncio.run(_main())
    except (MetricsPortError, TemporalSetupError) as exc:  # said as itself, no traceback
        print(f"error: {exc}", file=sys.stderr)
        exit_skipping_finalizers(1)


if __name__ == "__main__":
    main()
    exit_skipping_finalizers(0)
