"""The embedded stack in one process: Temporal dev server, a worker, the API and web console
(`crmflow up`), and workflow runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from crmflow.contracts.kpi import KpiSnapshot
from crmflow.settings import Settings
from crmflow.temporal import TemporalSetupError, port_taken, temporal_for
from worker import install_stop_handlers, run_worker
from workflows.kpi_snapshot import KpiSnapshotWorkflow


@asynccontextmanager
async def stack_with_worker(settings: Settings, *, ui: bool = True) -> AsyncIterator[Client]:
    """Temporal (embedded unless an address is set) and one in-process worker."""
    async with temporal_for(settings, ui=ui) as client:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(client, settings, stop))
        try:
            yield client
        finally:
            stop.set()
            await task


async def run_up(
    settings: Settings,
    console: Console,
    serve_http: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Temporal, a worker and (with `serve_http`, the API face's server) the API and console
    on `up_http_port`, until Ctrl-C."""
    port = settings.up_http_port if serve_http else 0
    if port and port_taken(port):  # before anything starts, like the dev server's ports
        raise TemporalSetupError(
            f"port {port} on 127.0.0.1 is taken: another program listens there. Stop it, or "
            "set CRMFLOW_UP_HTTP_PORT to a free port (0: no API and console)."
        )
    stop = asyncio.Event()
    install_stop_handlers(stop)
    async with stack_with_worker(settings) as _client:
        http_stop = asyncio.Event()
        serving = asyncio.create_task(serve_http(http_stop)) if serve_http and port else None
        for _ in range(200):  # the banner below promises a listening server
            if serving is None or serving.done() or port_taken(port):
                break
            await asyncio.sleep(0.05)
        if serving is not None and serving.done():
            await serving  # it could not start: its error, not a silent stack
        if settings.embedded:
            console.print(
                f"Temporal dev server on 127.0.0.1:{settings.embedded_port}, "
                f"Web UI http://127.0.0.1:{settings.embedded_ui_port}, "
                f"state in {settings.home / 'temporal.db'}"
            )
        if port:
            console.print(
                f"web console http://127.0.0.1:{port}/console (users: `crmflow users create`), "
                f"API http://127.0.0.1:{port}/api/v1 (keys: `crmflow keys create`)"
            )
        console.print(
            f"worker polling task queue {settings.task_queue!r}; database {settings.db_url}"
        )
        console.print("Ctrl-C to stop")
        await stop.wait()
        console.print("stopping: the worker drains, then the server stops")
        if serving:
            http_stop.set()
            await serving


async def run_kpi_snapshot(
    client: Client, settings: Settings, window_days: int = 30, workflow_id: str | None = None
) -> tuple[str, KpiSnapshot]:
    """Run KpiSnapshotWorkflow to completion and return its id and result."""
    wf_id = workflow_id or f"kpi-snapshot-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    result = await client.execute_workflow(
        KpiSnapshotWorkflow.run,
        window_days,
        id=wf_id,
        task_queue=settings.task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    return wf_id, result
