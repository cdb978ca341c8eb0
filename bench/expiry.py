"""Benchmark: the nightly points-expiry run, against one hand-written set-based statement pair.

What it measures, per database (SQLite and PostgreSQL), on 1,000,000 points lots of 200,000
customers (5 each), a third of them due (past their expiry date with points left, some partly
spent), the rest expiring 60 to 730 days after the run's `as_of`:

* crmflow: the `points_expiry` automation exactly as the worker runs it, without Temporal:
  `AutomationActivities(engine, Settings(), {})` `begin`, then `await step(...)` for every step
  of `STEPS["points_expiry"]` (`expire`, then `notify`), then `finish`, with the default
  parameters (`notice_days` 30, `chunk_size` 50,000): one transaction per chunk of lots, each
  bumping its customers' `state_version`, inserting the chunk's `expire` ledger entries
  (`ON CONFLICT (dedupe_key) DO NOTHING`) and zeroing its lots. No lot of the data expires
  within the notice window, so the `notify` step finds nothing to announce.
* baseline: one `INSERT INTO points_ledger (...) SELECT ... FROM points_lots WHERE expires_at <=
  :as_of AND remaining > 0` and one `UPDATE points_lots SET remaining = 0 WHERE ...`, in one
  transaction, with the same driver (`sqlite3` / `psycopg`), writing the same ledger entries
  (kind `expire`, amount `-remaining`, `at` = `expires_at`, reason, dedupe key
  `expire:<lot id>`).

The data is generated and loaded (driver bulk inserts, COPY on PostgreSQL) once per database
into a template, untimed; every timed run gets a fresh copy of it (SQLite: a copy of the file;
PostgreSQL: `CREATE DATABASE ... TEMPLATE`, after `VACUUM ANALYZE` of the template, and a
`CHECKPOINT`). Each measurement runs in its own child process (this script re-run with a
hidden `--child` option); its peak memory is the child's own `VmHWM` from /proc/self/status.
Both sides' ledger entries and lots are checked afterwards against what the data holds.

With `--memory-check` (the default) crmflow also runs on a quarter of the data (250,000 lots
of 50,000 customers), so that its peak memory at both sizes shows whether it grows with the
number of rows.

The last line printed is `RESULT bench=expiry ratio=<r> target=<=2`, where r is crmflow's wall
time divided by the baseline's on the same database, the higher of the databases.

    python bench/expiry.py                              # 1,000,000 lots, 200,000 customers
    python bench/expiry.py --lots 20000 --customers 4000 --databases sqlite   # smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support.common import (  # noqa: E402
    Databases,
    add_database_options,
    customer_id,
    database_kinds,
    sqlite_path,
)
from bench.support.common import peak_rss_mb as ru_maxrss_mb  # noqa: E402

TARGET = 2.0
AS_OF = datetime(2026, 11, 19, 18, 0, tzinfo=UTC)  # 02:00 on 2026-11-20 in Shanghai
TIMEZONE = "Asia/Shanghai"
LOTS_PER_CUSTOMER = 5
LOAD_CHUNK = 100_000
SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's DateTime stores values on SQLite

LEDGER_COLUMNS = "customer_id, lot_id, kind, amount, at, reason, dedupe_key"
DUE = "expires_at <= {p} AND remaining > 0"
BASELINE_INSERT = (
    f"INSERT INTO points_ledger ({LEDGER_COLUMNS}) "
    "SELECT customer_id, id, 'expire', -remaining, expires_at, 'points expired', "
    "'expire:' || CAST(id AS VARCHAR) FROM points_lots WHERE " + DUE
)
BASELINE_UPDATE = "UPDATE points_lots SET remaining = 0 WHERE " + DUE


# --------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    """This process's own peak resident memory: VmHWM belongs to the address space, which a
    fresh exec starts anew (ru_maxrss carries what the parent had over fork and exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return ru_maxrss_mb()


def _sqlite_connect(url: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(sqlite_path(url))
    # The pragmas store.db.make_engine sets on every SQLite connection.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _as_of_param(url: str) -> Any:
    """`as_of` the way the driver gets it from SQLAlchemy for a UTCDateTime column."""
    return AS_OF.strftime(SQLITE_TS) if url.startswith("sqlite") else AS_OF


def _query(url: str, sql: str) -> tuple[Any, ...]:
    """One row of a read-only query, through the bare driver (`?` placeholders)."""
    if url.startswith("sqlite"):
        conn = _sqlite_connect(url)
        try:
            row = conn.execute(sql.replace("%s", "?"), (_as_of_param(url),)).fetchone()
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as pg:
            row = pg.execute(sql, (AS_OF,)).fetchone()
    return tuple(row) if row else ()


def _money(v: Any) -> str:
    return f"{Decimal(str(v or 0)).quantize(Decimal('0.01'))}"


def check(url: str) -> dict[str, Any]:
    """What a run left behind: its `expire` ledger entries (count, total, a fingerprint of
    lot ids and dates, and how many match their lot field by field) and the lots still due."""
    ledger = _query(
        url,
        "SELECT count(*), sum(l.amount), sum(l.lot_id), min(l.at), max(l.at), "
        "sum(CASE WHEN p.expires_at <= %s AND l.customer_id = p.customer_id "
        "AND l.at = p.expires_at AND p.remaining = 0 AND l.amount < 0 "
        "AND l.reason = 'points expired' "
        "AND l.dedupe_key = 'expire:' || CAST(p.id AS VARCHAR) THEN 1 ELSE 0 END) "
        "FROM points_ledger l LEFT JOIN points_lots p ON p.id = l.lot_id "
        "WHERE l.kind = 'expire'",
    )
    lots = _query(
        url,
        "SELECT sum(CASE WHEN expires_at <= %s AND remaining > 0 THEN 1 ELSE 0 END), "
        "sum(remaining) FROM points_lots",
    )
    return {
        "entries": int(ledger[0]),
        "points": _money(ledger[1]),
        "lot_id_sum": int(ledger[2] or 0),
        "first_at": str(ledger[3])[:19],
        "last_at": str(ledger[4])[:19],
        "entries_matching_lot": int(ledger[5] or 0),
        "still_due": int(lots[0] or 0),
        "points_left": _money(lots[1]),
    }


# --------------------------------------------------------------------------- data generation


def generate(
    lots: int, customers: int, seed: int, expected: dict[str, Any]
) -> Iterator[list[dict[str, Any]]]:
    """The lots in chunks (ids 1..lots, earned in id order over time, customers interleaved,
    5 a customer); fills `expected` with what the expiry run must do to them."""
    rng = random.Random(seed)
    owners = [n % customers for n in range(lots)]
    rng.shuffle(owners)
    due_count = lots // 3
    due_flags = [True] * due_count + [False] * (lots - due_count)
    rng.shuffle(due_flags)
    due_points = Decimal(0)
    kept_points = Decimal(0)
    due_customers: set[int] = set()
    day = 86_400
    rows: list[dict[str, Any]] = []
    for n in range(lots):
        earned = Decimal(rng.randint(100, 50_000)) / 100
        if rng.random() < 0.3:  # partly spent
            remaining = (earned * Decimal(rng.randint(5, 95)) / 100).quantize(Decimal("0.01"))
            remaining = max(remaining, Decimal("0.01"))
        else:
            remaining = earned
        if due_flags[n]:  # expired up to a year ago, up to the run's time itself
            expires_at = AS_OF - timedelta(seconds=rng.randrange(365 * day))
            due_points += remaining
            due_customers.add(owners[n])
        else:  # beyond the 30-day notice window
            expires_at = AS_OF + timedelta(seconds=rng.randrange(60 * day, 730 * day))
            kept_points += remaining
        rows.append(
            {
                "id": n + 1,
                "customer_id": customer_id(owners[n]),
                "earned": earned,
                "remaining": remaining,
                "earned_at": expires_at - timedelta(days=365),
                "expires_at": expires_at,
                "source": "earn-on-purchase",
                "event_id": f"evt-{rng.getrandbits(64):016x}",
                "lot_key": f"{rng.getrandbits(128):032x}",
            }
        )
        if len(rows) >= LOAD_CHUNK:
            yield rows
            rows = []
    if rows:
        yield rows
    expected.update(
        lots=lots,
        due=due_count,
        due_points=_money(due_points),
        due_customers=len(due_customers),
        points_left=_money(kept_points),
    )


def _child_prepare(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Migrate a fresh database and load the customers and lots (not timed)."""
    from sqlalchemy import text

    from store.bulk import insert_rows
    from store.db import make_engine
    from store.migrate import upgrade
    from store.models import CustomerRow, PointsLotRow
    from store.sql import table_of

    created = datetime(2024, 1, 1, tzinfo=UTC)
    customers = [
        {
            "customer_id": customer_id(n),
            "name": f"Customer {n}",
            "email": f"customer{n}@example.com",
            "timezone": TIMEZONE,
            "consent": {"email": True},
            "lifecycle_stage": "member",
            "attributes": {},
            "tier": "silver",
            "is_stub": False,
            "state_version": 0,
            "created_at": created,
            "updated_at": created,
        }
        for n in range(spec["customers"])
    ]
    engine = make_engine(url)
    try:
        upgrade(engine)
        started = time.perf_counter()
        for part in range(0, len(customers), LOAD_CHUNK):
            with engine.begin() as conn:
                insert_rows(conn, table_of(CustomerRow), customers[part : part + LOAD_CHUNK])
        expected: dict[str, Any] = {}
        for chunk in generate(spec["lots"], spec["customers"], spec["seed"], expected):
            with engine.begin() as conn:
                insert_rows(conn, table_of(PointsLotRow), chunk)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:  # ids were given: move the sequence past them
                conn.execute(
                    text("SELECT setval(pg_get_serial_sequence('points_lots', 'id'), :n)"),
                    {"n": spec["lots"]},
                )
        loaded = time.perf_counter() - started
    finally:
        engine.dispose()
    if url.startswith("sqlite"):  # fold the WAL into the file, which is copied per run
        conn = _sqlite_connect(url)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    return {"expected": expected, "load_s": loaded}


# --------------------------------------------------------------------------- timed children


class StatementTimer:
    """Wall time per SQL statement (by its text), from SQLAlchemy's cursor events."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}
        self._started: list[float] = []

    def before(self, *_args: Any) -> None:
        self._started.append(time.perf_counter())

    def after(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        took = time.perf_counter() - self._started.pop()
        key = " ".join(statement.split())
        entry = self.totals.setdefault(key, [0.0, 0.0])
        entry[0] += 1
        entry[1] += took

    def top(self, n: int = 8) -> list[dict[str, Any]]:
        ranked = sorted(self.totals.items(), key=lambda kv: -kv[1][1])[:n]
        return [{"sql": sql, "calls": int(c), "seconds": s} for sql, (c, s) in ranked]


async def _crmflow_run(engine: Any) -> dict[str, Any]:
    from activities.automation_activities import AutomationActivities
    from crmflow.contracts.automations import (
        STEPS,
        AutomationInput,
        BeginRequest,
        FinishRequest,
        StepRequest,
    )
    from crmflow.settings import Settings

    acts = AutomationActivities(engine, Settings(), {})
    inp = AutomationInput(
        schedule="bench-points-expiry", automation="points_expiry", timezone=TIMEZONE
    )
    steps: dict[str, float] = {}
    started = time.perf_counter()
    start = acts.begin(BeginRequest(input=inp, as_of=AS_OF, workflow_id="bench-expiry"))
    for step in STEPS["points_expiry"]:
        at = time.perf_counter()
        await acts.step(StepRequest(run_id=start.run_id, step=step, input=inp))
        steps[step] = time.perf_counter() - at
    summary = acts.finish(FinishRequest(run_id=start.run_id))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps, "status": summary.status, "counts": summary.counts}


def _child_crmflow(url: str) -> dict[str, Any]:
    import asyncio

    from sqlalchemy import event, text

    import activities.automation_activities  # noqa: F401  (imports are not the run's time)
    from store.db import make_engine

    engine = make_engine(url)
    timer = StatementTimer()
    try:
        with engine.connect() as conn:  # a worker's pool is warm
            conn.execute(text("SELECT 1"))
        event.listen(engine, "before_cursor_execute", timer.before)
        event.listen(engine, "after_cursor_execute", timer.after)
        result = asyncio.run(_crmflow_run(engine))
    finally:
        engine.dispose()
    result["peak_rss_mb"] = peak_rss_mb()
    result["statements"] = timer.top()
    result["check"] = check(url)
    return result


def _child_baseline(url: str) -> dict[str, Any]:
    as_of = _as_of_param(url)
    if url.startswith("sqlite"):
        conn = _sqlite_connect(url)
        try:
            started = time.perf_counter()
            inserted = conn.execute(BASELINE_INSERT.format(p="?"), (as_of,)).rowcount
            zeroed = conn.execute(BASELINE_UPDATE.format(p="?"), (as_of,)).rowcount
            conn.commit()
            seconds = time.perf_counter() - started
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as pg:
            pg.execute("SELECT 1")
            started = time.perf_counter()
            with pg.cursor() as cur:
                cur.execute(BASELINE_INSERT.format(p="%s"), (as_of,))
                inserted = cur.rowcount
                cur.execute(BASELINE_UPDATE.format(p="%s"), (as_of,))
                zeroed = cur.rowcount
            pg.commit()
            seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "inserted": inserted,
        "zeroed": zeroed,
        "peak_rss_mb": peak_rss_mb(),
        "check": check(url),
    }


def child_main(role: str, url: str, spec: dict[str, Any]) -> None:
    if role == "prepare":
        result = _child_prepare(url, spec)
    elif role == "crmflow":
        result = _child_crmflow(url)
    elif role == "baseline":
        result = _child_baseline(url)
    else:
        raise SystemExit(f"unknown child role {role!r}")
    print(json.dumps(result, default=str), flush=True)


def run_child(role: str, url: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--url", url]
    cmd += ["--spec", json.dumps(spec or {})]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} child failed (exit {done.returncode}): {done.stdout.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- databases


class TemplateDatabases(Databases):
    """`Databases`, plus fresh copies of a loaded template database."""

    def copy_of(self, template: str) -> str:
        self.counter += 1
        if template.startswith("sqlite"):
            source = sqlite_path(template)
            path = f"{source.rsplit('.', 1)[0]}_copy{self.counter}.db"
            shutil.copyfile(source, path)
            return f"sqlite:///{path}"
        return self.create_pg(template=template.rsplit("/", 1)[-1])

    def vacuum(self, url: str) -> None:
        """VACUUM ANALYZE (autovacuum may be off): statistics, hint bits, visibility map."""
        self.admin(url, "VACUUM ANALYZE")


def prepare(
    dbs: TemplateDatabases, kind: str, spec: dict[str, Any], label: str
) -> tuple[str, dict[str, Any]]:
    url = dbs.fresh(kind, f"template_{label}")
    info = run_child("prepare", url, spec)
    dbs.vacuum(url)
    exp = info["expected"]
    print(
        f"  {kind:<10} {label} template: {exp['lots']:,} lots ({exp['due']:,} due, "
        f"{exp['due_points']} points, {exp['due_customers']:,} customers) of "
        f"{spec['customers']:,} customers, generated and loaded in {info['load_s']:.1f} s "
        "(untimed)",
        flush=True,
    )
    return url, exp


def verify(kind: str, role: str, result: dict[str, Any], exp: dict[str, Any]) -> None:
    c = result["check"]
    problems = []
    if c["entries"] != exp["due"] or c["entries_matching_lot"] != exp["due"]:
        problems.append(f"{c['entries']} entries ({c['entries_matching_lot']} matching)")
    if c["points"] != f"{-Decimal(exp['due_points']):.2f}":
        problems.append(f"ledger total {c['points']}")
    if c["still_due"] or c["points_left"] != exp["points_left"]:
        problems.append(f"{c['still_due']} lots still due, {c['points_left']} points left")
    if role == "crmflow" and result["status"] != "completed":
        problems.append(f"run {result['status']}")
    if problems:
        raise RuntimeError(f"{kind} {role}: expected {exp}, found " + "; ".join(problems))


def measure(
    dbs: TemplateDatabases, kind: str, role: str, template: str, exp: dict[str, Any]
) -> dict[str, Any]:
    url = dbs.copy_of(template)
    try:
        dbs.settle(url)
        result = run_child(role, url)
    finally:
        dbs.drop(url)
    verify(kind, role, result, exp)
    extra = ""
    if role == "crmflow":
        extra = " (" + ", ".join(f"{s} {t:.2f} s" for s, t in result["steps"].items()) + ")"
    print(
        f"  {kind:<10} {role:<8} {exp['due']:,} lots expired in {result['seconds']:.2f} s"
        f"{extra}, peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return result


def print_statements(kind: str, result: dict[str, Any]) -> None:
    print(f"\n{kind}: crmflow's statements by time (all chunks of the run)")
    for s in result["statements"]:
        sql = s["sql"] if len(s["sql"]) <= 110 else s["sql"][:107] + "..."
        print(f"  {s['seconds']:7.2f} s {s['calls']:>4}x  {sql}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lots", type=int, default=1_000_000, help="points lots")
    parser.add_argument("--customers", type=int, default=200_000, help="customers owning them")
    add_database_options(parser)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time each side this many times (fresh copies) and keep the fastest",
    )
    parser.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run crmflow on a quarter of the data and compare peak memory (default: on)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.url, json.loads(args.spec or "{}"))
        return 0

    kinds = database_kinds(args.databases)
    if args.lots < 1 or args.customers < 1 or args.repeat < 1:
        raise SystemExit("--lots, --customers and --repeat must be positive")

    full = {"lots": args.lots, "customers": args.customers, "seed": args.seed}
    small = {"lots": args.lots // 4, "customers": max(args.customers // 4, 1), "seed": args.seed}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="crmflow-bench-expiry-") as tmp:
        dbs = TemplateDatabases(Path(tmp), args.pg_url, "expiry")
        try:
            for kind in kinds:
                template, exp = prepare(dbs, kind, full, "full")
                runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "crmflow": []}
                for _ in range(args.repeat):
                    for role, done in runs.items():
                        done.append(measure(dbs, kind, role, template, exp))
                dbs.drop(template)
                fingerprints = {json.dumps(r["check"]) for done in runs.values() for r in done}
                if len(fingerprints) != 1:
                    raise RuntimeError(f"{kind}: the runs left different data: {fingerprints}")
                res = {role: min(done, key=lambda r: r["seconds"]) for role, done in runs.items()}
                res["crmflow_peak_mb"] = max(r["peak_rss_mb"] for r in runs["crmflow"])
                res["baseline_peak_mb"] = max(r["peak_rss_mb"] for r in runs["baseline"])
                if args.memory_check and small["lots"] >= 1:
                    template, exp_small = prepare(dbs, kind, small, "quarter")
                    res["small"] = measure(dbs, kind, "crmflow", template, exp_small)
                    dbs.drop(template)
                results[kind] = res
        finally:
            dbs.drop_all()

    for kind, res in results.items():
        print_statements(kind, res["crmflow"])
    print()
    header = (
        f"{'database':<11} {'crmflow s':>10} {'baseline s':>11} {'ratio':>7} "
        f"{'crmflow MB':>11} {'baseline MB':>12}"
    )
    print(f"{args.lots:,} lots of {args.customers:,} customers, {args.lots // 3:,} due")
    print(header)
    print("-" * len(header))
    ratios = []
    for kind, res in results.items():
        ours, base = res["crmflow"], res["baseline"]
        ratio = ours["seconds"] / base["seconds"]
        ratios.append(ratio)
        print(
            f"{kind:<11} {ours['seconds']:>10.2f} {base['seconds']:>11.2f} {ratio:>7.2f} "
            f"{res['crmflow_peak_mb']:>11.0f} {res['baseline_peak_mb']:>12.0f}"
        )
    if args.memory_check:
        print()
        print(
            f"crmflow peak RSS by size: {small['lots']:,} lots -> {args.lots:,} lots "
            f"({args.lots / max(small['lots'], 1):.0f}x the rows)"
        )
        for kind, res in results.items():
            if "small" in res:
                a, b = res["small"]["peak_rss_mb"], res["crmflow_peak_mb"]
                print(f"  {kind:<10} {a:.0f} MB -> {b:.0f} MB ({b - a:+.0f} MB)")
    worst = max(ratios)
    print()
    print(
        f"time ratio crmflow / baseline (highest): {worst:.2f}  target <= {TARGET:g}: "
        f"{'met' if worst <= TARGET else 'NOT met'}"
    )
    print(f"RESULT bench=expiry ratio={worst:.2f} target=<={TARGET:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
