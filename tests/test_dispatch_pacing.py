"""The dispatcher paces new enrollments to what the workers take: it reads the task queue's
backlog of workflow tasks from the server and holds starts while it is over the limit."""

from __future__ import annotations

import asyncio
import uuid

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from crmflow.dispatch import Pacer


@workflow.defn(name="PacingProbe")
class PacingProbe:
    @workflow.run
    async def run(self) -> None:
        return None


async def _start(env: WorkflowEnvironment, queue: str, n: int) -> None:
    await env.client.start_workflow(PacingProbe.run, id=f"probe-{queue}-{n}", task_queue=queue)


async def test_the_backlog_holds_starts_until_a_worker_takes_them(
    dev_env: WorkflowEnvironment,
) -> None:
    queue = f"pacing-{uuid.uuid4().hex[:8]}"
    for n in range(3):  # nobody polls the queue: three workflow tasks wait
        await _start(dev_env, queue, n)
    pacer = Pacer(dev_env.client, queue, limit=3)
    # the server's count is approximate and may lag a little behind the starts
    for _ in range(50):
        if await pacer._backlog() >= 3:
            break
        await asyncio.sleep(0.2)
    assert pacer.enabled
    pacer.checked = -1.0  # ask again at the next start
    waiter = asyncio.create_task(pacer.room())
    await asyncio.sleep(1.0)
    assert not waiter.done()  # held back while the backlog is at the limit
    assert pacer.backlog >= 3
    # a worker takes them: the backlog drains and the start goes ahead
    async with Worker(
        dev_env.client,
        task_queue=queue,
        workflows=[PacingProbe],
        workflow_runner=UnsandboxedWorkflowRunner(),  # a probe: nothing to keep deterministic
    ):
        await asyncio.wait_for(waiter, 9.0)
    assert pacer.held_s >= 1.0


async def test_no_limit_means_no_pacing(dev_env: WorkflowEnvironment) -> None:
    pacer = Pacer(dev_env.client, "anything", limit=0)
    await pacer.room()
    assert not pacer.enabled and pacer.held_s == 0.0
