"""The embedded stack in one process: Temporal dev server, a worker, and workflow runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from rich.console import Console
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from crmflow.contracts.kpi import KpiSnapshot
from crmflow.settings import Settings
from crmflow.temporal import temporal_for
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


async def run_up(settings: Settings, console: Console) -> None:
    stop = asyncio.Event()
    install_stop_handlers(stop)
    async with stack_with_worker(settings) as _client:
        if settings.embedded:
            console.print(
                f"Temporal dev server on 127.0.0.1:{settings.embedded_port}, "
                f"Web UI http://127.0.0.1:{settings.embedded_ui_port}, "
                f"state in {settings.home / 'temporal.db'}"
            )
        console.print(
            f"worker polling task queue {settings.task_queue!r}; database {settings.db_url}"
        )
        console.print("Ctrl-C to stop")
        await stop.wait()
        console.print("stopping: the worker drains, then the server stops")


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
