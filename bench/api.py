"""Benchmark: events posted to the HTTP API by concurrent clients, against `crmflow events import`.

What it measures, per database (SQLite and PostgreSQL), in the same run:

* API: a real server (`crmflow api`, uvicorn, in processes of its own: one on SQLite,
  `--pg-api-workers` (2) on PostgreSQL, i.e. `crmflow api --workers 2`) on a fresh database
  migrated with `store.migrate.upgrade`, whose customers were imported and whose example rules
  version (`examples/rules`, as `bench/rules.py` prepares it) was deployed beforehand (untimed),
  with an `ingest` key and a `marketer` key made with `crmflow.services.keys.create_key`.
  `--clients` threads (4), each with its own `httpx.Client`, take the next batch of `--batch`
  events (500) in file order and `POST /api/v1/events/batch` it with the ingest key until all
  are sent; a 429 or 503 is retried after its `Retry-After`. `--mode async` (the default)
  sends `Prefer: respond-async`: each batch is stored and answered with 202, and the event
  processor `crmflow api` runs beside the server applies the rules; the clock runs from the
  first request until `GET /api/v1/events/backlog` says nothing is pending (polled every
  0.5 s after the last answer), so the figure is events stored *and processed* per second.
  `--mode sync`: the rules run before each answer, and the clock stops at the last answer.
  Meanwhile one more client (the 5th) samples the customer 360 view, `GET
  /api/v1/customers/{customer_id}` of a random customer, with the marketer key, every
  `--sample-interval` seconds: p50/p95 of its latency under the load.
* import: `crmflow events import events.jsonl --json` (the CLI, a subprocess, its default
  import workers) on another fresh database prepared the same way; its time is the report's
  own `seconds` (without the interpreter's start-up).

Both sides must store and process every event (checked against the database afterwards).

The server gets `CRMFLOW_API_RATE_LIMIT=1000000/minute`, so that the per-key rate limit does not
throttle the benchmark's clients. Request bodies are built before the clock starts (the lines of
the file joined into a JSON array), so the clients cost little of the machine's CPU.

The last line printed is `RESULT bench=api ratio=<r> target=>=0.5`, where r is the API's events/s
(stored and processed) divided by the import's events/s on the same database, the lower of the
databases.

    python bench/api.py                          # 200,000 events, 50,000 customers, both databases
    python bench/api.py --quick --databases sqlite            # smoke run: 20,000 events
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rules import run_child as rules_child  # noqa: E402
from bench.rules import write_customers, write_events  # noqa: E402
from bench.support.common import (  # noqa: E402
    Databases,
    bench_parser,
    best_of,
    customer_id,
    database_kinds,
)

TARGET = 0.5
RATE_LIMIT = "1000000/minute"
QUICK_EVENTS, QUICK_CUSTOMERS = 20_000, 5_000
BATCH_PATH = "/api/v1/events/batch"
BACKLOG_PATH = "/api/v1/events/backlog"
BACKLOG_POLL_SECONDS = 0.5  # counting a large backlog is work for the database too
VIEW_PATH = "/api/v1/customers/{}"
STOP_SECONDS = 15.0


# --------------------------------------------------------------------------- child processes


def _child_keys(url: str) -> dict[str, Any]:
    """An ingest key (posts events) and a marketer key (reads the 360 view)."""
    from crmflow.services.keys import NewKey, create_key
    from crmflow.services.permissions import Role
    from crmflow.services.runtime import Runtime
    from crmflow.settings import Settings
    from store.db import make_engine

    rt = Runtime(Settings(), make_engine(url))
    try:
        ingest = create_key(rt, NewKey(name="bench-ingest", role=Role.ingest), created_by="bench")
        viewer = create_key(
            rt, NewKey(name="bench-marketer", role=Role.marketer), created_by="bench"
        )
    finally:
        rt.engine.dispose()
    return {"ingest": ingest.token, "viewer": viewer.token}


def _child_totals(url: str) -> dict[str, Any]:
    from bench.rules import _totals
    from store.db import make_engine

    engine = make_engine(url)
    try:
        return _totals(engine)
    finally:
        engine.dispose()


def _child_server(port: int, profile: Path) -> None:
    """What `crmflow api` runs, under cProfile: the event loop's thread and every thread of
    the pool the routes' sync work runs in (each thread its own profiler, started by a
    `threading.setprofile` hook on the thread's first call)."""
    import cProfile
    import pstats

    import uvicorn

    from crmflow.api import create_app
    from crmflow.services.runtime import Runtime
    from crmflow.settings import Settings
    from store.db import make_engine

    settings = Settings()
    engine = make_engine(settings.db_url)
    app = create_app(Runtime(settings, engine))
    threads: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(*_: Any) -> None:
        threading_profile = cProfile.Profile()
        with lock:
            threads.append(threading_profile)
        threading_profile.enable()

    threading.setprofile(start)
    loop = cProfile.Profile()
    loop.enable()
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    finally:
        loop.disable()
        threading.setprofile(None)
        engine.dispose()
        loop.dump_stats(str(profile.with_suffix(".loop.pstats")))
        if threads:
            with lock:
                stats = pstats.Stats(threads[0])
                for other in threads[1:]:
                    stats.add(other)
            stats.dump_stats(str(profile.with_suffix(".threads.pstats")))


def child_main(args: argparse.Namespace) -> None:
    if args.child == "server":
        _child_server(args.port, args.profile_file)
        return
    if args.child == "keys":
        result = _child_keys(args.url)
    elif args.child == "totals":
        result = _child_totals(args.url)
    else:
        raise SystemExit(f"unknown child role {args.child!r}")
    print(json.dumps(result), flush=True)


def own_child(role: str, url: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--url", url]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} child failed (exit {done.returncode}): {done.stdout.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- processes


def crmflow_command() -> list[str]:
    script = Path(sys.executable).parent / "crmflow"
    if not script.exists():
        raise SystemExit(f"no crmflow command next to {sys.executable}: install the project")
    return [str(script)]


def crmflow_env(url: str, workdir: Path) -> dict[str, str]:
    """The environment of every crmflow process: this run's database, no crmflow.toml, the
    rate limit raised. Other CRMFLOW_* variables of the caller pass through."""
    env = dict(os.environ)
    env.update(
        CRMFLOW_DATABASE_URL=url,
        CRMFLOW_CONFIG=str(workdir / "no-crmflow.toml"),
        CRMFLOW_HOME=str(workdir / "home"),
        CRMFLOW_API_RATE_LIMIT=RATE_LIMIT,
    )
    return env


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _descendants(int(child))
    return found


class PeakMemory(threading.Thread):
    """Polls the peak RSS (VmHWM) of a process and its descendants until `stop`. The figure
    is the process's peak plus every descendant's peak (an upper bound for the import's
    workers, which run at the same time)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self.halt = threading.Event()

    def poll(self) -> None:
        try:
            pids = _descendants(self.pid)
        except OSError:
            return
        for pid in pids:
            kb = _hwm_kb(pid)
            if kb:
                self.peaks[pid] = max(self.peaks.get(pid, 0), kb)

    def run(self) -> None:
        while not self.halt.wait(0.25):
            self.poll()

    def stop(self) -> float:
        self.poll()
        self.halt.set()
        self.join()
        return sum(self.peaks.values()) / 1024.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    url: str, port: int, workdir: Path, log: Path, profile: Path | None, workers: int = 1
) -> Any:
    if profile is None:
        cmd = [*crmflow_command(), "api", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--workers", str(workers)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "server"]
        cmd += ["--port", str(port), "--profile-file", str(profile)]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=crmflow_env(url, workdir), stdout=out, stderr=out)


def stop_server(server: Any) -> None:
    """SIGINT first (uvicorn shuts down gracefully, a profile is written), then SIGTERM,
    then SIGKILL."""
    if server.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        server.send_signal(sig)
        try:
            server.wait(STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue
    server.kill()
    server.wait()


def wait_ready(httpx: Any, base: str, token: str, server: Any, log: Path) -> None:
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the API server exited ({server.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{base}/api/v1/health", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API server did not answer within 60 s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- the load


def batch_bodies(events: Path, size: int) -> list[tuple[bytes, int]]:
    """The file's lines joined into JSON arrays of `size` events: (body, events in it)."""
    lines = [line for line in events.read_bytes().splitlines() if line.strip()]
    return [
        (b"[" + b",".join(lines[i : i + size]) + b"]", len(lines[i : i + size]))
        for i in range(0, len(lines), size)
    ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank


def drive(
    base: str,
    tokens: dict[str, str],
    bodies: list[tuple[bytes, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Post every batch with `args.clients` clients while one more samples the 360 view."""
    import httpx

    lock = threading.Lock()
    pending = iter(range(len(bodies)))
    totals: Counter[str] = Counter()
    post_seconds: list[float] = []
    retried: Counter[int] = Counter()
    errors: list[str] = []
    view_seconds: list[float] = []
    view_status: Counter[int] = Counter()
    view_first_other: list[str] = []
    finished = threading.Event()

    def client() -> None:
        headers = {
            "Authorization": f"Bearer {tokens['ingest']}",
            "Content-Type": "application/json",
        }
        if args.mode == "async":
            headers["Prefer"] = "respond-async"
        try:
            with httpx.Client(base_url=base, headers=headers, timeout=600) as http:
                while not errors:
                    with lock:
                        i = next(pending, None)
                    if i is None:
                        return
                    body, _count = bodies[i]
                    while True:
                        sent = time.perf_counter()
                        r = http.post(BATCH_PATH, content=body)
                        took = time.perf_counter() - sent
                        if r.status_code == (202 if args.mode == "async" else 200):
                            report = r.json()
                            with lock:
                                post_seconds.append(took)
                                for k in ("received", "stored", "duplicates", "processed"):
                                    totals[k] += int(report[k])
                                totals["rules_fired"] += int(report["rules_fired"])
                                totals["unprocessed"] += int(report["unprocessed"])
                                totals["conflicts"] += int(report["conflicts"])
                            break
                        if r.status_code in (429, 503):
                            with lock:
                                retried[r.status_code] += 1
                            time.sleep(min(float(r.headers.get("Retry-After", "0.1")), 5.0))
                            continue
                        errors.append(f"batch {i}: HTTP {r.status_code}: {r.text[:500]}")
                        return
        except Exception as exc:  # a client's failure ends the run, reported below
            errors.append(f"client: {exc!r}")

    def sampler() -> None:
        rng = random.Random(args.seed + 360)
        headers = {"Authorization": f"Bearer {tokens['viewer']}"}
        try:
            with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
                while not finished.is_set():
                    path = VIEW_PATH.format(customer_id(rng.randrange(args.customers)))
                    sent = time.perf_counter()
                    r = http.get(path)
                    took = time.perf_counter() - sent
                    view_status[r.status_code] += 1
                    if r.status_code == 200:
                        view_seconds.append(took)
                    elif not view_first_other:
                        view_first_other.append(f"GET {path}: HTTP {r.status_code} {r.text[:300]}")
                    finished.wait(args.sample_interval)
        except Exception as exc:
            view_first_other.append(f"sampler: {exc!r}")

    watcher = threading.Thread(target=sampler, daemon=True)
    workers = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    watcher.start()
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    accepted = time.perf_counter() - started
    backlog_polls = 0
    if args.mode == "async" and not errors:
        # the clock runs on until the event processor has run every event through the rules
        headers = {"Authorization": f"Bearer {tokens['ingest']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            while True:
                r = http.get(BACKLOG_PATH)
                backlog_polls += 1
                if r.status_code != 200:
                    errors.append(f"backlog: HTTP {r.status_code}: {r.text[:300]}")
                    break
                if r.json()["pending"] == 0:
                    break
                time.sleep(BACKLOG_POLL_SECONDS)
    seconds = time.perf_counter() - started
    finished.set()
    watcher.join()
    if errors:
        raise RuntimeError("API load failed: " + "; ".join(errors[:3]))
    return {
        "seconds": seconds,
        "accepted_seconds": accepted,
        "backlog_polls": backlog_polls,
        "totals": dict(totals),
        "retried": {str(k): v for k, v in retried.items()},
        "post_p50": percentile(post_seconds, 0.5),
        "post_p95": percentile(post_seconds, 0.95),
        "view_p50": percentile(view_seconds, 0.5),
        "view_p95": percentile(view_seconds, 0.95),
        "view_ok": len(view_seconds),
        "view_status": {str(k): v for k, v in sorted(view_status.items())},
        "view_problem": view_first_other[0] if view_first_other else None,
    }


# --------------------------------------------------------------------------- the two sides


def prepare(dbs: Databases, kind: str, files: tuple[Path, Path], side: str) -> str:
    """A fresh database with the customers imported and the example rules deployed."""
    url = dbs.fresh(kind, side)
    try:
        prep = rules_child("prepare", files, url)
    except BaseException:
        dbs.drop(url)
        raise
    print(
        f"  {kind:<10} {side:<6} {prep['customers']:,} customers imported in "
        f"{prep['seconds']:.1f} s, rules {prep['version']} deployed (untimed) ...",
        flush=True,
    )
    return url


def check(kind: str, side: str, totals: dict[str, Any], expect: int) -> None:
    problems = []
    if totals["events"] != expect:
        problems.append(f"events table holds {totals['events']:,}, expected {expect:,}")
    if totals["unprocessed"]:
        problems.append(f"{totals['unprocessed']:,} events have processed_at NULL")
    if problems:
        raise RuntimeError(f"{kind} {side}: " + "; ".join(problems))


def measure_api(
    dbs: Databases,
    kind: str,
    files: tuple[Path, Path],
    bodies: list[tuple[bytes, int]],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    import httpx

    url = prepare(dbs, kind, files, "api")
    try:
        tokens = own_child("keys", url)
        dbs.settle(url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = workdir / f"server_{kind}.log"
        profile = args.profile / f"api_{kind}" if args.profile else None
        # SQLite: one server process (its one write lock makes more of them slower)
        workers = args.pg_api_workers if kind == "postgresql" and profile is None else 1
        server = start_server(url, port, workdir, log, profile, workers)
        try:
            wait_ready(httpx, base, tokens["ingest"], server, log)
            memory = PeakMemory(server.pid)
            memory.start()
            try:
                result = drive(base, tokens, bodies, args)
            except RuntimeError:
                print(f"  the server's log ends:\n{_tail(log)}", flush=True)
                raise
            result["peak_rss_mb"] = memory.stop()
        finally:
            stop_server(server)
        db = own_child("totals", url)
    finally:
        dbs.drop(url)
    check(kind, "api", db, args.events)
    t = result["totals"]
    if t.get("stored") != args.events or t.get("conflicts"):
        raise RuntimeError(
            f"{kind} api: the reports add up to {t}, expected {args.events:,} stored"
        )
    result["events_per_s"] = args.events / result["seconds"]
    result["db"] = db
    retries = ", ".join(f"{n} x HTTP {s}" for s, n in result["retried"].items()) or "none"
    accepted = (
        f"all accepted (202) after {result['accepted_seconds']:.2f} s, processed by the "
        f"server's event processor after {result['seconds']:.2f} s; "
        if args.mode == "async"
        else "rules applied before each answer; "
    )
    print(
        f"  {kind:<10} api    {args.events:,} events in {result['seconds']:.2f} s = "
        f"{result['events_per_s']:,.0f} events/s ({args.mode}: {accepted}{args.clients} "
        f"clients, batches of {args.batch}, {workers} server process(es); POST p50 "
        f"{result['post_p50'] * 1000:.0f} ms, p95 "
        f"{result['post_p95'] * 1000:.0f} ms; retried: {retries}), server peak RSS "
        f"{result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    statuses = ", ".join(f"{n} x {s}" for s, n in result["view_status"].items())
    print(
        f"  {'':<10} 360 view under load: p50 {result['view_p50'] * 1000:.1f} ms, p95 "
        f"{result['view_p95'] * 1000:.1f} ms over {result['view_ok']:,} answers "
        f"(status: {statuses or 'no request'})",
        flush=True,
    )
    if result["view_problem"]:
        print(f"  {'':<10} 360 view: {result['view_problem']}", flush=True)
    return result


def measure_import(
    dbs: Databases, kind: str, files: tuple[Path, Path], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    url = prepare(dbs, kind, files, "import")
    try:
        dbs.settle(url)
        cmd = [*crmflow_command(), "events", "import", str(files[1]), "--json"]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=crmflow_env(url, workdir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        memory = PeakMemory(proc.pid)
        memory.start()
        out, err = proc.communicate()
        wall = time.perf_counter() - started
        peak = memory.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"crmflow events import failed ({proc.returncode}): {err[-2000:]}")
        report = json.loads(out)
        db = own_child("totals", url)
    finally:
        dbs.drop(url)
    check(kind, "import", db, args.events)
    if report["rejected"] or report["processed"] != args.events:
        raise RuntimeError(f"{kind} import: {report}")
    result = {
        "seconds": float(report["seconds"]),
        "wall": wall,
        "rules_fired": report["rules_fired"],
        "peak_rss_mb": peak,
        "events_per_s": args.events / float(report["seconds"]),
        "db": db,
    }
    print(
        f"  {kind:<10} import {args.events:,} events in {result['seconds']:.2f} s = "
        f"{result['events_per_s']:,.0f} events/s (process wall time {wall:.1f} s), "
        f"{report['rules_fired']:,} rules fired, peak RSS {peak:.0f} MB with its workers",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, "purchase events")
    parser.add_argument("--batch", type=int, default=500, help="events per POST (500)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent posting clients (4)")
    parser.add_argument(
        "--mode",
        choices=("async", "sync"),
        default="async",
        help="async (default): `Prefer: respond-async`, 202 at once, the clock stops when the "
        "server's event processor has processed every event; sync: the rules run before each "
        "answer",
    )
    parser.add_argument(
        "--pg-api-workers",
        type=int,
        default=2,
        help="`crmflow api --workers` on PostgreSQL (2, one per core here; SQLite gets 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke size: --events {QUICK_EVENTS} --customers {QUICK_CUSTOMERS}",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=0.05,
        help="seconds between two requests of the 360-view sampler (0.05)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="serve the API under cProfile (the same app in a process of this script), "
        "writing <dir>/api_<database>.loop.pstats and .threads.pstats",
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.customers = QUICK_EVENTS, QUICK_CUSTOMERS
    return args


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    # SIGTERM unwinds like Ctrl-C: the server is stopped and the databases are dropped
    signal.signal(signal.SIGTERM, _terminated)

    kinds = database_kinds(args.databases)
    if min(args.events, args.customers, args.repeat, args.batch, args.clients) < 1:
        raise SystemExit("--events, --customers, --repeat, --batch and --clients must be positive")
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="crmflow-bench-api-") as tmp:
        workdir = Path(tmp)
        files = (workdir / "customers.jsonl", workdir / "events.jsonl")
        started = time.perf_counter()
        write_customers(files[0], args.customers, args.seed)
        write_events(files[1], args.events, args.customers, args.seed, refunds=0.0)
        bodies = batch_bodies(files[1], args.batch)
        print(
            f"generated {args.customers:,} customers and {args.events:,} purchase events "
            f"({files[1].stat().st_size / 1e6:.1f} MB JSONL, {len(bodies):,} request bodies) in "
            f"{time.perf_counter() - started:.1f} s; load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}",
            flush=True,
        )

        dbs = Databases(workdir, args.pg_url, "api")
        results: dict[str, dict[str, dict[str, Any]]] = {}
        try:
            for kind in kinds:
                runs: dict[str, list[dict[str, Any]]] = {"import": [], "api": []}
                for _ in range(args.repeat):
                    runs["import"].append(measure_import(dbs, kind, files, args, workdir))
                    runs["api"].append(measure_api(dbs, kind, files, bodies, args, workdir))
                results[kind] = {side: best_of(done) for side, done in runs.items()}
        finally:
            dbs.drop_all()

    print()
    header = (
        f"{'database':<11} {'API ev/s':>9} {'import ev/s':>12} {'ratio':>7} "
        f"{'360 p50 ms':>11} {'360 p95 ms':>11} {'server MB':>10} {'import MB':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios = []
    for kind, res in results.items():
        api, imp = res["api"], res["import"]
        ratio = api["events_per_s"] / imp["events_per_s"]
        ratios.append(ratio)
        print(
            f"{kind:<11} {api['events_per_s']:>9,.0f} {imp['events_per_s']:>12,.0f} "
            f"{ratio:>7.3f} {api['view_p50'] * 1000:>11.1f} {api['view_p95'] * 1000:>11.1f} "
            f"{api['peak_rss_mb']:>10.0f} {imp['peak_rss_mb']:>10.0f}"
        )
    for kind, res in results.items():
        a, b = res["api"]["db"], res["import"]["db"]
        if a != b:
            print(
                f"  note: {kind} rows written differ (API / import): "
                + ", ".join(f"{k} {a[k]:,}/{b[k]:,}" for k in a if a[k] != b.get(k))
                + " (concurrent batches reorder some customers' events)"
            )
    worst = min(ratios)
    print()
    print(
        f"API events/s ÷ import events/s (lowest): {worst:.3f}  target >= {TARGET}: "
        f"{'met' if worst >= TARGET else 'NOT met'}"
    )
    print(f"RESULT bench=api ratio={worst:.3f} target=>={TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
