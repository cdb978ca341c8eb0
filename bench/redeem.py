"""Benchmark: redemptions through `services.points.redeem`, against a hand-written SQL
transaction doing the same first-to-expire-first debits.

What it measures, per database (SQLite and PostgreSQL), on 50,000 members with 3 points lots
each (and their `earn` entries) worth at least twice what the plan will take from them, the
example programme deployed and 5 rewards (gifts and services costing 100 to 800 points,
stock 1,000,000): a fixed plan of 100,000 redemptions (member, reward, key), at a fixed
moment `NOW`.

* crmflow: `services.points.redeem(rt, customer, reward, key=key, by="bench", now=NOW)` in a
  loop, with the `Runtime` a face builds (`Settings()`, `store.db.make_engine`): one
  transaction each — the customer's `state_version` bump first, the key, the reward, the
  member's live lots, the stock, the lots' update, the ledger entries, the redemption.
* baseline: the same driver (`sqlite3` with `make_engine`'s pragmas / `psycopg`), one
  transaction per redemption: `SELECT id, remaining` of the member's spendable lots ordered
  first to expire first (`FOR UPDATE` on PostgreSQL), the allocation in Python, an
  `executemany` `UPDATE points_lots`, an `executemany` `INSERT INTO points_ledger` of the
  same rows crmflow writes, `UPDATE rewards SET issued = issued + 1 WHERE … AND (stock IS
  NULL OR issued < stock)`, `INSERT INTO redemptions`, `COMMIT`.

The data is generated and loaded (driver bulk inserts, COPY on PostgreSQL) once per database
into a template, untimed; every timed run gets a fresh copy of it (SQLite: a copy of the
file; PostgreSQL: `CREATE DATABASE ... TEMPLATE`, after `VACUUM ANALYZE` of the template,
and a `CHECKPOINT`). Each side runs in a child process of its own (this script re-run with a
hidden `--child` option). Afterwards both sides must have left the same lots (points left
per member), the same `redeem` entries (lot, amount, dedupe key) and the same redemptions,
exactly what the plan gives when simulated in Python.

The last line printed is `RESULT bench=redeem ratio=<r> target=>=0.3`, where r is crmflow's
redemptions/s divided by the baseline's on the same database, the lower of the databases.

    python bench/redeem.py                                   # 100,000 redemptions, 50,000 members
    python bench/redeem.py --redemptions 5000 --members 2000 # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.expiry import TemplateDatabases, peak_rss_mb  # noqa: E402
from bench.support.common import (  # noqa: E402
    add_database_options,
    customer_id,
    database_kinds,
    sqlite_path,
)

TARGET = 0.3
NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
TIMEZONE = "Asia/Shanghai"
LOTS_PER_MEMBER = 3
LOAD_CHUNK = 50_000
BY = "bench"
SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's DateTime stores values on SQLite
REWARDS = [  # id, kind, cost
    ("gift-mug", "gift", 100),
    ("gift-tote", "gift", 250),
    ("spa-pass", "service", 400),
    ("lounge-pass", "service", 600),
    ("chef-table", "service", 800),
]
STOCK = 1_000_000
CENT = Decimal("0.01")

SPENDABLE = (
    "customer_id = {p} AND remaining > 0 AND (expires_at IS NULL OR expires_at > {p}) "
    "AND (available_at IS NULL OR available_at <= {p})"
)
BASELINE_SELECT = (
    "SELECT id, remaining FROM points_lots WHERE " + SPENDABLE + " "
    "ORDER BY expires_at IS NULL, expires_at, earned_at, id"
)
BASELINE_UPDATE_LOT = "UPDATE points_lots SET remaining = {p} WHERE id = {p}"
BASELINE_LEDGER = (
    "INSERT INTO points_ledger (customer_id, lot_id, kind, amount, at, reason, dedupe_key, "
    "qualifying, actor, ref) VALUES ({p}, {p}, 'redeem', {p}, {p}, {p}, {p}, {f}, {p}, {p})"
)
BASELINE_STOCK = (
    "UPDATE rewards SET issued = issued + 1 WHERE reward_id = {p} "
    "AND (stock IS NULL OR issued < stock)"
)
BASELINE_REDEMPTION = (
    'INSERT INTO redemptions (key, customer_id, reward_id, cost, status, code, "by", '
    "created_at) VALUES ({p}, {p}, {p}, {p}, 'done', NULL, {p}, {p})"
)


# --------------------------------------------------------------------------- helpers


def _money(v: Any) -> str:
    return f"{Decimal(str(v or 0)).quantize(CENT)}"


def _sqlite_connect(url: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(sqlite_path(url))
    # The pragmas store.db.make_engine sets on every SQLite connection.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA wal_autocheckpoint=20000")
    return conn


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query, through the bare driver."""
    if url.startswith("sqlite"):
        conn = _sqlite_connect(url)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as pg:
        return [tuple(r) for r in pg.execute(sql).fetchall()]


def _digest(lines: list[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def check(url: str) -> dict[str, Any]:
    """What a run left behind: the points left per member, the `redeem` entries, the
    redemptions and the stock issued, as counts, totals and fingerprints."""
    # sorted here, not by the database (PostgreSQL's collation may order text otherwise)
    left = sorted(
        _rows(url, "SELECT customer_id, sum(remaining) FROM points_lots GROUP BY customer_id")
    )
    entries = _rows(
        url,
        "SELECT dedupe_key, lot_id, amount, actor, ref, reason FROM points_ledger "
        "WHERE kind = 'redeem'",
    )
    redemptions = sorted(
        _rows(url, "SELECT key, customer_id, reward_id, cost, status FROM redemptions")
    )
    issued = _rows(url, "SELECT sum(issued) FROM rewards")[0][0]
    return {
        "points_left": _money(sum(Decimal(str(v)) for _, v in left)),
        "left_fingerprint": _digest([f"{c}:{_money(v)}" for c, v in left]),
        "entries": len(entries),
        "entries_total": _money(sum(Decimal(str(r[2])) for r in entries)),
        "entries_fingerprint": _digest(
            sorted(
                f"{k}:{lot}:{_money(a)}:{actor}:{ref}:{reason}"
                for k, lot, a, actor, ref, reason in entries
            )
        ),
        "redemptions": len(redemptions),
        "redemptions_fingerprint": _digest(
            [f"{k}:{c}:{r}:{_money(cost)}:{s}" for k, c, r, cost, s in redemptions]
        ),
        "issued": int(issued or 0),
    }


# --------------------------------------------------------------------------- data


def make_plan(redemptions: int, members: int, seed: int) -> list[tuple[str, str, str]]:
    """(customer, reward, key) of every redemption, in order."""
    rng = random.Random(seed)
    return [
        (customer_id(rng.randrange(members)), rng.choice(REWARDS)[0], f"bench-{n:07d}")
        for n in range(redemptions)
    ]


def make_lots(plan: list[tuple[str, str, str]], members: int, seed: int) -> list[dict[str, Any]]:
    """3 lots a member, worth at least twice what the plan takes from the member, expiring
    10 to 360 days after NOW (earned 365 days before that), ids in member order."""
    rng = random.Random(seed + 1)
    cost = {rid: Decimal(c) for rid, _, c in REWARDS}
    need: dict[str, Decimal] = {}
    for cid, rid, _ in plan:
        need[cid] = need.get(cid, Decimal(0)) + cost[rid]
    lots: list[dict[str, Any]] = []
    for n in range(members):
        cid = customer_id(n)
        total = max(2 * need.get(cid, Decimal(0)), Decimal(300))
        shares = [rng.randint(1, 100) for _ in range(LOTS_PER_MEMBER)]
        parts = [(total * s / sum(shares)).quantize(CENT) for s in shares]
        parts[-1] = total - sum(parts[:-1])
        for part in parts:
            expires_at = NOW + timedelta(seconds=rng.randrange(10 * 86_400, 360 * 86_400))
            lots.append(
                {
                    "id": len(lots) + 1,
                    "customer_id": cid,
                    "earned": part,
                    "remaining": part,
                    "earned_at": expires_at - timedelta(days=365),
                    "expires_at": expires_at,
                    "source": "earn-on-purchase",
                    "event_id": f"evt-{len(lots) + 1}",
                    "lot_key": f"bench-{len(lots) + 1}",
                }
            )
    return lots


def simulate(plan: list[tuple[str, str, str]], lots: list[dict[str, Any]]) -> dict[str, Any]:
    """What the plan must leave: each redemption FIFO over the member's lots."""
    cost = {rid: Decimal(c) for rid, _, c in REWARDS}
    left = {lot["id"]: lot["remaining"] for lot in lots}
    by_member: dict[str, list[dict[str, Any]]] = {}
    for lot in lots:
        by_member.setdefault(lot["customer_id"], []).append(lot)
    for mine in by_member.values():
        mine.sort(key=lambda lot: (lot["expires_at"], lot["earned_at"], lot["id"]))
    entries = []
    for cid, rid, key in plan:
        need = cost[rid]
        i = 0
        for lot in by_member[cid]:
            if need <= 0:
                break
            take = min(left[lot["id"]], need)
            if take <= 0:
                continue
            left[lot["id"]] -= take
            need -= take
            entries.append(f"redeem:{key}:{i}:{lot['id']}:{_money(-take)}:{BY}:{key}:reward {rid}")
            i += 1
        assert need == 0, "every member can afford the plan"
    points_left: dict[str, Decimal] = {}
    for lot in lots:
        points_left[lot["customer_id"]] = (
            points_left.get(lot["customer_id"], Decimal(0)) + left[lot["id"]]
        )
    return {
        "points_left": _money(sum(points_left.values())),
        "left_fingerprint": _digest([f"{c}:{_money(v)}" for c, v in sorted(points_left.items())]),
        "entries": len(entries),
        "entries_fingerprint": _digest(sorted(entries)),
        "redemptions": len(plan),
        "issued": len(plan),
    }


def _child_prepare(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Migrate a fresh database; load the members, lots, earn entries, the example
    programme and the rewards (not timed)."""
    from sqlalchemy import text

    from rules.pack import load_pack
    from store.bulk import insert_rows
    from store.db import make_engine
    from store.migrate import upgrade
    from store.models import CustomerRow, PointsLedgerRow, PointsLotRow, RewardRow
    from store.rule_versions import deploy
    from store.sql import table_of

    plan = make_plan(spec["redemptions"], spec["members"], spec["seed"])
    lots = make_lots(plan, spec["members"], spec["seed"])
    created = datetime(2024, 1, 1, tzinfo=UTC)
    customers = [
        {
            "customer_id": customer_id(n),
            "name": f"Member {n}",
            "email": f"member{n}@example.com",
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
        for n in range(spec["members"])
    ]
    earns = [
        {
            "id": lot["id"],
            "customer_id": lot["customer_id"],
            "lot_id": lot["id"],
            "kind": "earn",
            "amount": lot["earned"],
            "at": lot["earned_at"],
            "event_id": lot["event_id"],
            "reason": "purchase",
            "dedupe_key": f"earn:{lot['lot_key']}",
            "qualifying": True,
            "actor": "rule:earn-on-purchase",
        }
        for lot in lots
    ]
    rewards = [
        {
            "reward_id": rid,
            "name": rid.replace("-", " ").title(),
            "kind": kind,
            "cost": Decimal(c),
            "stock": STOCK,
            "issued": 0,
            "active": True,
            "updated_at": created,
        }
        for rid, kind, c in REWARDS
    ]
    engine = make_engine(url)
    try:
        upgrade(engine)
        started = time.perf_counter()
        pack, source = load_pack(ROOT / "examples" / "rules")
        with engine.begin() as conn:
            deploy(conn, pack.version, source, len(pack.rules), "bench")
            insert_rows(conn, table_of(RewardRow), rewards)
        for table, rows in (
            (CustomerRow, customers),
            (PointsLotRow, lots),
            (PointsLedgerRow, earns),
        ):
            for part in range(0, len(rows), LOAD_CHUNK):
                with engine.begin() as conn:
                    insert_rows(conn, table_of(table), rows[part : part + LOAD_CHUNK])
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:  # ids were given: move the sequences past them
                for name in ("points_lots", "points_ledger"):
                    conn.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), :n)"),
                        {"n": len(lots)},
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
    return {"expected": simulate(plan, lots), "lots": len(lots), "load_s": loaded}


# --------------------------------------------------------------------------- timed children


def _child_crmflow(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import text

    from crmflow.services import points
    from crmflow.services.runtime import Runtime
    from crmflow.settings import Settings
    from store.db import make_engine

    plan = make_plan(spec["redemptions"], spec["members"], spec["seed"])
    rt = Runtime(Settings(), make_engine(url))
    try:
        with rt.engine.connect() as conn:  # a server's pool is warm
            conn.execute(text("SELECT 1"))
        started = time.perf_counter()
        for cid, rid, key in plan:
            points.redeem(rt, cid, rid, key=key, by=BY, now=NOW)
        seconds = time.perf_counter() - started
    finally:
        rt.close()
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "check": check(url)}


def _child_baseline(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    plan = make_plan(spec["redemptions"], spec["members"], spec["seed"])
    cost = {rid: Decimal(c) for rid, _, c in REWARDS}
    sqlite = url.startswith("sqlite")
    if sqlite:
        conn = _sqlite_connect(url)
        p, f, lock = "?", "0", ""
        at: Any = NOW.strftime(SQLITE_TS)

        def num(v: Decimal) -> Any:
            return float(v)
    else:
        import psycopg

        conn = psycopg.connect(url)
        p, f, lock = "%s", "false", " FOR UPDATE"
        at = NOW

        def num(v: Decimal) -> Any:
            return v

    select_sql = BASELINE_SELECT.format(p=p) + lock
    update_sql = BASELINE_UPDATE_LOT.format(p=p)
    ledger_sql = BASELINE_LEDGER.format(p=p, f=f)
    stock_sql = BASELINE_STOCK.format(p=p)
    redemption_sql = BASELINE_REDEMPTION.format(p=p)
    try:
        conn.execute("SELECT 1")
        started = time.perf_counter()
        for cid, rid, key in plan:
            cur = conn.cursor()
            lots = cur.execute(select_sql, (cid, at, at)).fetchall()
            need = cost[rid]
            updates: list[tuple[Any, ...]] = []
            entries: list[tuple[Any, ...]] = []
            for lot_id, remaining in lots:
                if need <= 0:
                    break
                have = Decimal(str(remaining)).quantize(CENT)
                take = min(have, need)
                need -= take
                updates.append((num(have - take), lot_id))
                i = len(entries)
                entries.append(
                    (cid, lot_id, num(-take), at, f"reward {rid}", f"redeem:{key}:{i}", BY, key)
                )
            if need > 0:
                raise RuntimeError(f"{cid} cannot afford {rid}")
            cur.executemany(update_sql, updates)
            cur.executemany(ledger_sql, entries)
            cur.execute(stock_sql, (rid,))
            if cur.rowcount != 1:
                raise RuntimeError(f"out of stock: {rid}")
            cur.execute(redemption_sql, (key, cid, rid, num(cost[rid]), BY, at))
            conn.commit()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "check": check(url)}


def child_main(role: str, url: str, spec: dict[str, Any]) -> None:
    if role == "prepare":
        result = _child_prepare(url, spec)
    elif role == "crmflow":
        result = _child_crmflow(url, spec)
    elif role == "baseline":
        result = _child_baseline(url, spec)
    else:
        raise SystemExit(f"unknown child role {role!r}")
    print(json.dumps(result, default=str), flush=True)


def run_child(role: str, url: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--url", url]
    cmd += ["--spec", json.dumps(spec)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} child failed (exit {done.returncode}): {done.stdout.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- main


def verify(kind: str, role: str, found: dict[str, Any], expected: dict[str, Any]) -> None:
    wrong = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
    if wrong:
        raise RuntimeError(f"{kind} {role}: left other data than the plan gives: {wrong}")


def measure(
    dbs: TemplateDatabases,
    kind: str,
    role: str,
    template: str,
    spec: dict[str, Any],
    expected: dict[str, Any],
) -> dict[str, Any]:
    url = dbs.copy_of(template)
    try:
        dbs.settle(url)
        result = run_child(role, url, spec)
    finally:
        dbs.drop(url)
    verify(kind, role, result["check"], expected)
    rate = spec["redemptions"] / result["seconds"]
    result["per_s"] = rate
    print(
        f"  {kind:<10} {role:<8} {spec['redemptions']:,} redemptions in "
        f"{result['seconds']:.2f} s ({rate:,.0f}/s), peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redemptions", type=int, default=100_000, help="redemptions planned")
    parser.add_argument("--members", type=int, default=50_000, help="members they are spread over")
    add_database_options(parser)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time each side this many times (fresh copies) and keep the fastest",
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
    if args.redemptions < 1 or args.members < 1 or args.repeat < 1:
        raise SystemExit("--redemptions, --members and --repeat must be positive")

    spec = {"redemptions": args.redemptions, "members": args.members, "seed": args.seed}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="crmflow-bench-redeem-") as tmp:
        dbs = TemplateDatabases(Path(tmp), args.pg_url, "redeem")
        try:
            for kind in kinds:
                template = dbs.fresh(kind, "template")
                info = run_child("prepare", template, spec)
                dbs.vacuum(template)
                expected = info["expected"]
                print(
                    f"  {kind:<10} template: {args.members:,} members, {info['lots']:,} lots, "
                    f"{args.redemptions:,} redemptions planned, generated and loaded in "
                    f"{info['load_s']:.1f} s (untimed)",
                    flush=True,
                )
                runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "crmflow": []}
                for _ in range(args.repeat):
                    for role, done in runs.items():
                        done.append(measure(dbs, kind, role, template, spec, expected))
                dbs.drop(template)
                fingerprints = {json.dumps(r["check"]) for done in runs.values() for r in done}
                if len(fingerprints) != 1:
                    raise RuntimeError(f"{kind}: the runs left different data: {fingerprints}")
                results[kind] = {
                    role: min(done, key=lambda r: r["seconds"]) for role, done in runs.items()
                }
        finally:
            dbs.drop_all()

    print()
    header = (
        f"{'database':<11} {'crmflow /s':>11} {'baseline /s':>12} {'ratio':>7} "
        f"{'crmflow MB':>11} {'baseline MB':>12}"
    )
    print(f"{args.redemptions:,} redemptions over {args.members:,} members")
    print(header)
    print("-" * len(header))
    ratios = []
    for kind, res in results.items():
        ours, base = res["crmflow"], res["baseline"]
        ratio = ours["per_s"] / base["per_s"]
        ratios.append(ratio)
        print(
            f"{kind:<11} {ours['per_s']:>11,.0f} {base['per_s']:>12,.0f} {ratio:>7.3f} "
            f"{ours['peak_rss_mb']:>11.0f} {base['peak_rss_mb']:>12.0f}"
        )
    worst = min(ratios)
    print()
    print(
        f"redemptions/s ratio crmflow / baseline (lowest): {worst:.3f}  target >= {TARGET}: "
        f"{'met' if worst >= TARGET else 'NOT met'}"
    )
    print(f"RESULT bench=redeem ratio={worst:.3f} target=>={TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
