"""Benchmark: import events from JSON Lines with crmflow, against a bare `executemany` baseline.

What it measures, per database (SQLite and PostgreSQL):

* crmflow: `crmflow.ingest.import_file(engine, events.jsonl, "events")`, i.e. pydantic
  validation of every line plus the chunked, idempotent writes of `store.ingest.append_events`,
  on a fresh database migrated with `store.migrate.upgrade` whose customers were imported
  beforehand (untimed) with `import_file(..., "customers")`.
* baseline: the same file read line by line, `json.loads` of each line, and a bare DB-API
  `executemany` INSERT of the same columns with the same driver (`sqlite3` / `psycopg`), 5,000
  rows and one commit per chunk, into a second fresh database prepared the same way.

Each measurement runs in its own child process (this script re-run with a hidden `--child`
option), so that its peak resident memory (`ru_maxrss`) is its own. Customers are imported in a
separate child too, and the parent never imports SQLAlchemy, so its own small footprint is all a
child inherits in `ru_maxrss` across exec.

The last line printed is `RESULT bench=ingest ratio=<r> target=>=0.5`, where r is crmflow's
events/s divided by the baseline's on the same database, the lower of the databases.

    python bench/ingest.py                              # 200,000 events, 50,000 customers
    python bench/ingest.py --events 5000 --customers 500 --databases sqlite   # smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.support.common import (
    Databases,
    bench_parser,
    best_of,
    customer_id,
    database_kinds,
    peak_rss_mb,
    print_verdict,
    sqlite_path,
)

CHUNK = 5000
MEMORY_LIMIT_MB = 500.0
TARGET = 0.5
SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's DateTime stores values on SQLite
SHANGHAI = timezone(timedelta(hours=8))

INSERT_COLUMNS = "event_id, customer_id, type, occurred_at, received_at, properties"
SQLITE_INSERT = f"INSERT INTO events ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
PG_INSERT = f"INSERT INTO events ({INSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"


# --------------------------------------------------------------------------- data generation


def write_customers(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for n in range(count):
            row = {
                "customer_id": customer_id(n),
                "name": f"Customer {n}",
                "email": f"customer{n}@example.com",
                "phone": (
                    f"+86 13{rng.randint(5, 9)} {rng.randint(0, 9999):04d} "
                    f"{rng.randint(0, 9999):04d}"
                ),
                "timezone": "Asia/Shanghai",
                "consent": {"email": rng.random() < 0.7, "sms": rng.random() < 0.4},
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


_TYPES = ("purchase", "page_view", "sign_in", "add_to_cart", "coupon_redeemed")
_WEIGHTS = (60, 15, 10, 10, 5)


def _properties(rng: random.Random, kind: str, n: int) -> dict[str, Any]:
    if kind == "purchase":
        return {
            "amount": round(rng.uniform(9.9, 2999.0), 2),
            "currency": "CNY",
            "order_id": f"SO{n:08d}",
        }
    if kind == "page_view":
        return {"url": f"/products/{rng.randint(1, 5000)}", "referrer": "wechat"}
    if kind == "sign_in":
        return {"channel": rng.choice(("app", "web", "mini_program"))}
    if kind == "add_to_cart":
        return {"sku": f"SKU-{rng.randint(1, 20000):05d}", "qty": rng.randint(1, 5)}
    return {"coupon": f"CPN{rng.randint(1, 999):03d}"}


def write_events(path: Path, count: int, customers: int, seed: int) -> None:
    rng = random.Random(seed + 1)
    start = datetime(2026, 1, 1, tzinfo=SHANGHAI)
    span = int(timedelta(days=320).total_seconds())
    with path.open("w", encoding="utf-8") as fh:
        for n in range(count):
            kind = rng.choices(_TYPES, _WEIGHTS)[0]
            row = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "customer_id": customer_id(rng.randrange(customers)),
                "type": kind,
                "occurred_at": (start + timedelta(seconds=rng.randrange(span))).isoformat(),
                "properties": _properties(rng, kind, n),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- child processes


def _child_prepare(url: str, customers: Path) -> dict[str, Any]:
    """Migrate a fresh database and import the customers (not timed by the benchmark)."""
    from crmflow.ingest import import_file
    from store.db import make_engine
    from store.migrate import upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
        report = import_file(engine, customers, "customers")
    finally:
        engine.dispose()
    if report.rejected or report.stored != report.received:
        raise SystemExit(f"customer import went wrong: {report.as_dict()}")
    return {"customers": report.stored, "seconds": report.seconds}


def _count_events_sqlalchemy(url: str) -> int:
    from sqlalchemy import func, select

    from store.db import make_engine
    from store.models import EventRow

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(EventRow)).scalar_one())
    finally:
        engine.dispose()


def _child_crmflow(url: str, events: Path) -> dict[str, Any]:
    from crmflow.ingest import import_file
    from store.db import make_engine

    engine = make_engine(url)
    try:
        started = time.perf_counter()
        report = import_file(engine, events, "events", chunk_size=CHUNK)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    if report.rejected:
        raise SystemExit(f"crmflow rejected rows: {report.faults[:3]}")
    return {
        "seconds": seconds,
        "stored": report.stored,
        "rows": _count_events_sqlalchemy(url),
        "peak_rss_mb": peak_rss_mb(),
    }


def _chunks(path: Path) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                chunk.append(json.loads(line))
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
    if chunk:
        yield chunk


def _baseline_sqlite(url: str, events: Path) -> tuple[float, int]:
    import sqlite3

    conn = sqlite3.connect(sqlite_path(url))
    try:
        # The pragmas store.db.make_engine sets on every SQLite connection.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        started = time.perf_counter()
        for chunk in _chunks(events):
            now = datetime.now(UTC).strftime(SQLITE_TS)
            conn.executemany(
                SQLITE_INSERT,
                [
                    (
                        r["event_id"],
                        r["customer_id"],
                        r["type"],
                        datetime.fromisoformat(r["occurred_at"])
                        .astimezone(UTC)
                        .strftime(SQLITE_TS),
                        now,
                        json.dumps(r.get("properties") or {}),
                    )
                    for r in chunk
                ],
            )
            conn.commit()
        seconds = time.perf_counter() - started
        rows = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()
    return seconds, rows


def _baseline_postgresql(url: str, events: Path) -> tuple[float, int]:
    import psycopg
    from psycopg.types.json import Jsonb

    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for chunk in _chunks(events):
            now = datetime.now(UTC)
            with conn.cursor() as cur:
                cur.executemany(
                    PG_INSERT,
                    [
                        (
                            r["event_id"],
                            r["customer_id"],
                            r["type"],
                            datetime.fromisoformat(r["occurred_at"]),
                            now,
                            Jsonb(r.get("properties") or {}),
                        )
                        for r in chunk
                    ],
                )
            conn.commit()
        seconds = time.perf_counter() - started
        found = conn.execute("SELECT count(*) FROM events").fetchone()
    return seconds, int(found[0]) if found else 0


def _child_baseline(url: str, events: Path) -> dict[str, Any]:
    if url.startswith("sqlite"):
        seconds, rows = _baseline_sqlite(url, events)
    else:
        seconds, rows = _baseline_postgresql(url, events)
    return {"seconds": seconds, "rows": rows, "peak_rss_mb": peak_rss_mb()}


def child_main(role: str, url: str, customers: Path, events: Path) -> None:
    if role == "prepare":
        result = _child_prepare(url, customers)
    elif role == "crmflow":
        result = _child_crmflow(url, events)
    elif role == "baseline":
        result = _child_baseline(url, events)
    else:
        raise SystemExit(f"unknown child role {role!r}")
    print(json.dumps(result), flush=True)


def run_child(role: str, url: str, customers: Path, events: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        role,
        "--url",
        url,
        "--customers-file",
        str(customers),
        "--events-file",
        str(events),
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} child failed (exit {done.returncode}): {done.stdout.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- databases


def measure(dbs: Databases, kind: str, role: str, files: tuple[Path, Path], expect: int) -> dict:
    """Prepare a fresh database (untimed), then time one import of the events into it."""
    customers, events = files
    url = dbs.fresh(kind, role)
    try:
        prep = run_child("prepare", url, customers, events)
        print(
            f"  {kind:<10} {role:<8} customers imported ({prep['customers']:,} in "
            f"{prep['seconds']:.1f} s, untimed) ...",
            flush=True,
        )
        dbs.settle(url)
        result = run_child(role, url, customers, events)
    finally:
        dbs.drop(url)
    if result["rows"] != expect:
        raise RuntimeError(f"{kind} {role}: events table holds {result['rows']}, expected {expect}")
    result["events_per_s"] = expect / result["seconds"]
    print(
        f"  {kind:<10} {role:<8} {expect:,} events in {result['seconds']:.2f} s = "
        f"{result['events_per_s']:,.0f} events/s, peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return bench_parser(__doc__, "events to import").parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.url, args.customers_file, args.events_file)
        return 0

    kinds = database_kinds(args.databases)
    if args.events < 1 or args.customers < 1 or args.repeat < 1:
        raise SystemExit("--events, --customers and --repeat must be positive")

    with tempfile.TemporaryDirectory(prefix="crmflow-bench-ingest-") as tmp:
        workdir = Path(tmp)
        customers = workdir / "customers.jsonl"
        events = workdir / "events.jsonl"
        started = time.perf_counter()
        write_customers(customers, args.customers, args.seed)
        write_events(events, args.events, args.customers, args.seed)
        size_mb = events.stat().st_size / 1e6
        print(
            f"generated {args.customers:,} customers and {args.events:,} events "
            f"({size_mb:.1f} MB JSONL) in {time.perf_counter() - started:.1f} s",
            flush=True,
        )

        dbs = Databases(workdir, args.pg_url, "ingest")
        results: dict[str, dict[str, dict[str, Any]]] = {}
        try:
            for kind in kinds:
                runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "crmflow": []}
                for _ in range(args.repeat):
                    for role, done in runs.items():
                        done.append(measure(dbs, kind, role, (customers, events), args.events))
                results[kind] = {role: best_of(done) for role, done in runs.items()}
        finally:
            dbs.drop_all()

    print()
    header = (
        f"{'database':<11} {'crmflow ev/s':>13} {'baseline ev/s':>14} {'ratio':>7} "
        f"{'crmflow MB':>11} {'baseline MB':>12}"
    )
    print(header)
    print("-" * len(header))
    ratios = []
    peaks = []
    for kind, res in results.items():
        ours, base = res["crmflow"], res["baseline"]
        ratio = ours["events_per_s"] / base["events_per_s"]
        ratios.append(ratio)
        peaks.append(ours["peak_rss_mb"])
        print(
            f"{kind:<11} {ours['events_per_s']:>13,.0f} {base['events_per_s']:>14,.0f} "
            f"{ratio:>7.3f} {ours['peak_rss_mb']:>11.0f} {base['peak_rss_mb']:>12.0f}"
        )
    print_verdict("ingest", ratios, peaks, TARGET, MEMORY_LIMIT_MB, "crmflow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
