"""Benchmark: purchase events through the example rule pack end to end, against durable_rules alone.

The workload: purchases, and refunds of 2% of them 1-30 days later (half of them partial, so
the built-in clawback by order runs), under the example programme with purchase points pending
for 14 days (`points.pending_days`; `--refunds`, `--pending-days`).

What it measures:

* end to end, per database (SQLite and PostgreSQL): `crmflow.ingest.import_file(engine,
  events.jsonl, "events")` on a fresh database migrated with `store.migrate.upgrade`, whose
  customers were imported and whose example rules version (`examples/rules`, programme
  `examples/program.yaml` with the return window) was deployed beforehand (untimed). That is
  pydantic validation of every line, the idempotent event writes, then per 5,000-event chunk
  in the same transaction `crmflow.processing.process_chunk`: load the customers' rule state,
  build the facts of each event, ask durable_rules which rules fire, plan and apply the effects
  (points lots and ledger, tiers and tier history, tags, stage, audit trail), write them and
  mark the events processed.
* baseline, in memory, no database: the same events with the same profile facts, computed
  beforehand (untimed) with the same pure code (`record_event`, `plan_refund`, `build_facts`,
  `CompiledPack.message`, effects applied with `apply_rules` so that tiers, tags and points
  evolve as they do end to end), then — timed — each message asserted and retracted one at a
  time in one sid of a durable_rules ruleset holding the pack's compiled conditions, with a
  callback per rule that counts firings.

Each measurement runs in its own child process (this script re-run with a hidden `--child`
option), so that its peak resident memory (`ru_maxrss`) is its own; the parent never imports
SQLAlchemy or durable_rules.

The last line printed is `RESULT bench=rules ratio=<r> target=>=0.25`, where r is the end-to-end
events/s divided by the in-memory baseline's events/s, the lower of the databases.

    python bench/rules.py                              # 200,000 events, 50,000 customers
    python bench/rules.py --events 5000 --customers 1000 --databases sqlite   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support.common import (  # noqa: E402
    Databases,
    bench_parser,
    best_of,
    customer_id,
    database_kinds,
    peak_rss_mb,
    print_verdict,
)

RULES_DIR = ROOT / "examples" / "rules"
MEMORY_LIMIT_MB = 1024.0
TARGET = 0.25
SHANGHAI = timezone(timedelta(hours=8))
FEED_END = datetime(2026, 11, 20, tzinfo=SHANGHAI)
FEED_DAYS = 548  # about 18 months of purchases
OWNERS = ("sales.amy", "sales.bo", "sales.chen")
CHANNELS = ("app", "web", "mini_program", "store")


# --------------------------------------------------------------------------- data generation


def write_customers(path: Path, count: int, seed: int) -> None:
    """Members mostly, some customers, some leads (half of them with a sales owner)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for n in range(count):
            draw = rng.random()
            stage = "member" if draw < 0.85 else "customer" if draw < 0.9 else "lead"
            owner = rng.choice(OWNERS) if stage == "lead" and rng.random() < 0.5 else None
            birthday = datetime(1960, 1, 1) + timedelta(days=rng.randrange(45 * 365))
            row = {
                "customer_id": customer_id(n),
                "name": f"Customer {n}",
                "email": f"customer{n}@example.com",
                "phone": (
                    f"+86 13{rng.randint(5, 9)} {rng.randint(0, 9999):04d} "
                    f"{rng.randint(0, 9999):04d}"
                ),
                "timezone": "Asia/Shanghai",
                "locale": "zh-CN",
                "consent": {"email": rng.random() < 0.7, "sms": rng.random() < 0.4},
                "lifecycle_stage": stage,
                "owner": owner,
                "attributes": {
                    "birthday": birthday.date().isoformat(),
                    "city": rng.choice(("Shanghai", "Beijing", "Shenzhen", "Hangzhou")),
                },
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _amount(rng: random.Random) -> float:
    """Mostly everyday baskets (median ~300 CNY), one in five a big one (1,000-3,000 CNY)."""
    if rng.random() < 0.2:
        return round(rng.uniform(1000.0, 2999.0), 2)
    return round(min(max(rng.lognormvariate(math.log(300.0), 0.8), 19.9), 2999.0), 2)


def write_events(path: Path, count: int, customers: int, seed: int, refunds: float) -> int:
    """`count` purchases over ~18 months ending 2026-11-20, and refunds of a share `refunds`
    of them 1-30 days later (half of them partial), in time order, +08:00 offsets. Returns
    how many events were written.

    Customers buy at different rates (log-normal weights), so some reach gold or platinum.
    """
    rng = random.Random(seed + 1)
    weights = list(accumulate(rng.lognormvariate(0.0, 0.8) for _ in range(customers)))
    who = rng.choices(range(customers), cum_weights=weights, k=count)
    span = FEED_DAYS * 86400
    start = FEED_END - timedelta(seconds=span)
    offsets = sorted(rng.randrange(span) for _ in range(count))
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, (cust, offset) in enumerate(zip(who, offsets, strict=True)):
        amount = _amount(rng)
        order = f"SO{n:08d}"
        rows.append(
            (
                offset,
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "customer_id": customer_id(cust),
                    "type": "purchase",
                    "occurred_at": (start + timedelta(seconds=offset)).isoformat(),
                    "properties": {
                        "amount": amount,
                        "currency": "CNY",
                        "order_id": order,
                        "channel": rng.choice(CHANNELS),
                    },
                },
            )
        )
        if rng.random() >= refunds:
            continue
        later = offset + rng.randrange(86400, 30 * 86400)
        if later >= span:
            continue
        props: dict[str, Any] = {"order_id": order, "currency": "CNY"}
        if rng.random() < 0.5:  # a partial refund says how much; a full one need not
            props["amount"] = round(amount * rng.uniform(0.2, 0.8), 2)
        rows.append(
            (
                later,
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "customer_id": customer_id(cust),
                    "type": "refund",
                    "occurred_at": (start + timedelta(seconds=later)).isoformat(),
                    "properties": props,
                },
            )
        )
    rows.sort(key=lambda r: r[0])  # stable: a purchase stays before its refund
    with path.open("w", encoding="utf-8") as fh:
        for _, row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def write_rules(workdir: Path, pending_days: int) -> Path:
    """The example rules beside a copy of the example programme with purchase points
    pending for `pending_days` (the return window)."""
    folder = workdir / "rules"
    folder.mkdir()
    programme = (RULES_DIR.parent / "program.yaml").read_text(encoding="utf-8")
    (workdir / "program.yaml").write_text(
        programme.replace("pending_days: 0", f"pending_days: {pending_days}"), encoding="utf-8"
    )
    for rule_file in RULES_DIR.glob("*.yaml"):
        (folder / rule_file.name).write_text(rule_file.read_text(encoding="utf-8"))
    return folder


# --------------------------------------------------------------------------- child processes


def _child_prepare(url: str, customers: Path, rules_dir: Path) -> dict[str, Any]:
    """Migrate, import the customers and deploy the example rules (not timed)."""
    from crmflow.ingest import import_file
    from rules.pack import load_pack
    from store.db import make_engine
    from store.migrate import upgrade
    from store.rule_versions import deploy

    engine = make_engine(url)
    try:
        upgrade(engine)
        report = import_file(engine, customers, "customers")
        pack, source = load_pack(rules_dir)
        with engine.begin() as conn:
            deploy(conn, pack.version, source, len(pack.rules), "examples/rules")
    finally:
        engine.dispose()
    if report.rejected or report.stored != report.received:
        raise SystemExit(f"customer import went wrong: {report.as_dict()}")
    return {"customers": report.stored, "seconds": report.seconds, "version": pack.version}


def _totals(engine: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from store.models import (
        AuditRow,
        EventRow,
        OrderRefundRow,
        PointsLedgerRow,
        PointsLotRow,
        TagRow,
        TierHistoryRow,
    )

    def count(model: Any, *where: Any) -> int:
        stmt = select(func.count()).select_from(model).where(*where)
        return int(conn.execute(stmt).scalar_one())

    with engine.connect() as conn:
        return {
            "events": count(EventRow),
            "unprocessed": count(EventRow, EventRow.processed_at.is_(None)),
            "points_lots": count(PointsLotRow),
            "points_ledger": count(PointsLedgerRow),
            "order_refunds": count(OrderRefundRow),
            "tier_history": count(TierHistoryRow),
            "customer_tags": count(TagRow),
            "audit_log": count(AuditRow),
        }


def _child_e2e(url: str, events: Path, profile: Path | None, workers: int) -> dict[str, Any]:
    import resource

    from crmflow.ingest import import_file
    from store.db import make_engine

    engine = make_engine(url)
    try:
        profiler = None
        if profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        report = import_file(engine, events, "events", workers=workers)
        seconds = time.perf_counter() - started
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))
        # with workers, their memory counts too: this process's peak plus, for each
        # worker, the largest worker's peak (an upper bound of the sum)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        rss = peak_rss_mb() + (workers * children if workers > 1 else 0.0)
        totals = _totals(engine)
    finally:
        engine.dispose()
    if report.rejected:
        raise SystemExit(f"import rejected rows: {report.faults[:3]}")
    return {
        "seconds": seconds,
        "processed": report.processed,
        "unprocessed_report": report.unprocessed,
        "rules_fired": report.rules_fired,
        "version": report.rules_version,
        "totals": totals,
        "peak_rss_mb": rss,
        "workers": workers,
    }


def _child_baseline(customers: Path, events: Path, rules_dir: Path) -> dict[str, Any]:
    """Precompute every event's message (untimed), then time assert + retract of each."""
    from durable import engine as dr_engine
    from durable.lang import get_host

    from rules.effects import apply_rules, plan_refund
    from rules.engine import DurableRulesEngine
    from rules.facts import EventFacts, ProfileState, build_facts, record_event
    from rules.pack import load_pack

    pack, _ = load_pack(rules_dir)
    program = pack.program
    created_at = datetime.now(UTC)  # as the import stamps new profiles
    states: dict[str, ProfileState] = {}
    with customers.open(encoding="utf-8") as fh:
        for line in fh:
            c = json.loads(line)
            states[c["customer_id"]] = ProfileState(
                customer_id=c["customer_id"],
                created_at=created_at,
                timezone=c.get("timezone") or "UTC",
                tier=None,
                lifecycle_stage=c.get("lifecycle_stage") or "lead",
                owner=c.get("owner") or None,
                consent={k: bool(v) for k, v in (c.get("consent") or {}).items()},
                attributes=dict(c.get("attributes") or {}),
            )

    # Untimed: the facts the end-to-end run sees, event by event in file (= time) order, with
    # the fired rules' effects applied to the state exactly as process_chunk does.
    started = time.perf_counter()
    engine = DurableRulesEngine()
    messages: list[dict[str, Any]] = []
    expected_by_rule: dict[int, int] = {}
    with events.open(encoding="utf-8") as fh:
        for line in fh:
            e = json.loads(line)
            event = EventFacts(
                e["event_id"],
                e["type"],
                datetime.fromisoformat(e["occurred_at"]).astimezone(UTC),
                e.get("properties") or {},
            )
            state = states[e["customer_id"]]
            record_event(state, event, program)
            plan_refund(program, state, event)  # a refund's clawback, as processing does
            facts = build_facts(state, event, program)
            fired = pack.ordered(engine.fired(pack, facts))
            messages.append(pack.message(facts))
            for r in fired:
                expected_by_rule[r.index] = expected_by_rule.get(r.index, 0) + 1
            apply_rules(pack, fired, state, event, facts)
    precompute = time.perf_counter() - started
    del states, engine

    host = get_host()
    ruleset = f"bench_rules_{os.getpid()}"
    # durable_rules runs a rule's action once per matching branch of an `$or` (e.g. both
    # `amount >= 1000` and `spend_90d >= 3000` hold for big-spender): the callbacks collect the
    # event's fired rules in a set, as DurableRulesEngine.fired does, and count raw calls too.
    hits: set[int] = set()
    calls = [0]

    def callback(index: int) -> Any:
        def run(_c: Any) -> None:
            calls[0] += 1
            hits.add(index)

        return run

    host.set_rulesets(
        {
            ruleset: {
                f"r{r.index}": {"all": [{"m": r.expression}], "run": callback(r.index)}
                for r in pack.rules
            }
        }
    )
    not_handled = dr_engine.MessageNotHandledException
    fired_by_rule: dict[int, int] = dict.fromkeys(expected_by_rule, 0)
    started = time.perf_counter()
    for i, msg in enumerate(messages):
        fact = {**msg, "sid": "0", "id": str(i)}
        with contextlib.suppress(not_handled):  # nothing matched: the normal case
            host.assert_fact(ruleset, fact)
        host.retract_fact(ruleset, fact)
        for index in hits:
            fired_by_rule[index] = fired_by_rule.get(index, 0) + 1
        hits.clear()
    seconds = time.perf_counter() - started

    # For comparison only (not the ratio's baseline): the same messages through the loop
    # crmflow's engine uses, which drives durable_rules' C engine without the host's
    # per-action Python machinery (rules/engine.py).
    lean = DurableRulesEngine()
    lean.load(pack)
    lean_fired = 0
    started = time.perf_counter()
    for msg in messages:
        lean_fired += len(lean.fired_message(pack, dict(msg)))
    lean_seconds = time.perf_counter() - started
    names = {r.index: r.rule.name for r in pack.rules}
    return {
        "seconds": seconds,
        "lean_seconds": lean_seconds,
        "lean_fired": lean_fired,
        "events": len(messages),
        "precompute_seconds": precompute,
        "rules_fired": sum(fired_by_rule.values()),
        "callback_calls": calls[0],
        "expected_fired": sum(expected_by_rule.values()),
        "fired_by_rule": {names[k]: v for k, v in sorted(fired_by_rule.items())},
        "expected_by_rule": {names[k]: v for k, v in sorted(expected_by_rule.items())},
        "message_keys": len(messages[0]) if messages else 0,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_main(args: argparse.Namespace) -> None:
    if args.child == "prepare":
        result = _child_prepare(args.url, args.customers_file, args.rules_dir)
    elif args.child == "e2e":
        if args.workers is None:  # crmflow's default, as `crmflow events import` uses it
            from crmflow.settings import Settings

            args.workers = Settings().import_workers
        result = _child_e2e(args.url, args.events_file, args.profile_file, args.workers)
    elif args.child == "baseline":
        result = _child_baseline(args.customers_file, args.events_file, args.rules_dir)
    else:
        raise SystemExit(f"unknown child role {args.child!r}")
    print(json.dumps(result), flush=True)


def run_child(
    role: str,
    files: tuple[Path, Path],
    url: str = "",
    profile: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    customers, events = files
    rules_dir = customers.parent / "rules"  # `write_rules`'s; else the examples as they are
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
        "--rules-dir",
        str(rules_dir if rules_dir.is_dir() else RULES_DIR),
    ]
    if profile is not None:
        cmd += ["--profile-file", str(profile)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} child failed (exit {done.returncode}): {done.stdout.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- databases


def measure_e2e(
    dbs: Databases,
    kind: str,
    files: tuple[Path, Path],
    expect: int,
    profile: Path | None,
    workers: int | None,
) -> dict[str, Any]:
    """Prepare a fresh database (untimed), then time one import of the events into it."""
    url = dbs.fresh(kind)
    try:
        prep = run_child("prepare", files, url)
        print(
            f"  {kind:<10} end-to-end: {prep['customers']:,} customers imported in "
            f"{prep['seconds']:.1f} s, rules {prep['version']} deployed (untimed) ...",
            flush=True,
        )
        dbs.settle(url)
        result = run_child("e2e", files, url, profile, workers)
    finally:
        dbs.drop(url)
    totals = result["totals"]
    problems = []
    if result["processed"] != expect:
        problems.append(f"report.processed = {result['processed']}, expected {expect}")
    if totals["events"] != expect:
        problems.append(f"events table holds {totals['events']}, expected {expect}")
    if totals["unprocessed"]:
        problems.append(f"{totals['unprocessed']} events have processed_at NULL")
    if problems:
        raise RuntimeError(f"{kind} end-to-end: " + "; ".join(problems))
    result["events_per_s"] = expect / result["seconds"]
    print(
        f"  {kind:<10} end-to-end: {expect:,} events in {result['seconds']:.2f} s = "
        f"{result['events_per_s']:,.0f} events/s with {result['workers']} import worker(s), "
        f"{result['rules_fired']:,} rules fired, peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    print(
        f"  {'':<10} all processed; rows written: "
        + ", ".join(f"{k} {v:,}" for k, v in totals.items() if k not in ("events", "unprocessed")),
        flush=True,
    )
    return result


def measure_baseline(files: tuple[Path, Path], expect: int) -> dict[str, Any]:
    result = run_child("baseline", files)
    if result["events"] != expect:
        raise RuntimeError(f"baseline saw {result['events']} events, expected {expect}")
    result["events_per_s"] = expect / result["seconds"]
    print(
        f"  in-memory  baseline:   {expect:,} events in {result['seconds']:.2f} s = "
        f"{result['events_per_s']:,.0f} events/s, {result['rules_fired']:,} rules fired "
        f"({result['callback_calls']:,} callback calls), peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    result["lean_events_per_s"] = expect / result["lean_seconds"]
    print(
        f"  {'':<10} for comparison, crmflow's engine loop on the same messages: "
        f"{result['lean_events_per_s']:,.0f} events/s ({result['lean_fired']:,} rules fired)",
        flush=True,
    )
    print(
        f"  {'':<10} facts and effects precomputed untimed in "
        f"{result['precompute_seconds']:.1f} s ({result['expected_fired']:,} rules fired there)",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, "purchase events")
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the end-to-end children under cProfile, writing <dir>/e2e_<database>.pstats",
    )
    parser.add_argument("--profile-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rules-dir", type=Path, default=RULES_DIR, help=argparse.SUPPRESS)
    parser.add_argument(
        "--refunds",
        type=float,
        default=0.02,
        help="share of purchases refunded 1-30 days later, half of them in part (default 0.02)",
    )
    parser.add_argument(
        "--pending-days",
        type=int,
        default=14,
        help="the programme's return window: purchase points pending this long (default 14)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="import worker processes end to end (default: crmflow's `import_workers`, one "
        "per core up to 4); 1 runs the whole import in one process",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0

    kinds = database_kinds(args.databases)
    if args.events < 1 or args.customers < 1 or args.repeat < 1:
        raise SystemExit("--events, --customers and --repeat must be positive")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="crmflow-bench-rules-") as tmp:
        workdir = Path(tmp)
        files = (workdir / "customers.jsonl", workdir / "events.jsonl")
        started = time.perf_counter()
        write_customers(files[0], args.customers, args.seed)
        total = write_events(files[1], args.events, args.customers, args.seed, args.refunds)
        write_rules(workdir, args.pending_days)
        print(
            f"generated {args.customers:,} customers, {args.events:,} purchase events and "
            f"{total - args.events:,} refunds ({files[1].stat().st_size / 1e6:.1f} MB JSONL) "
            f"in {time.perf_counter() - started:.1f} s; purchase points pending "
            f"{args.pending_days} days",
            flush=True,
        )

        dbs = Databases(workdir, args.pg_url, "rules")
        baselines: list[dict[str, Any]] = []
        e2e: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        try:
            for _ in range(args.repeat):
                baselines.append(measure_baseline(files, total))
                for kind in kinds:
                    profile = args.profile / f"e2e_{kind}.pstats" if args.profile else None
                    e2e[kind].append(measure_e2e(dbs, kind, files, total, profile, args.workers))
        finally:
            dbs.drop_all()

    base = best_of(baselines)
    print()
    print(
        f"rules fired: in-memory baseline {base['rules_fired']:,} "
        f"(precomputation {base['expected_fired']:,}); end to end "
        + ", ".join(f"{kind} {runs[0]['rules_fired']:,}" for kind, runs in e2e.items())
    )
    for kind, runs in e2e.items():
        diff = runs[0]["rules_fired"] - base["rules_fired"]
        if diff:
            print(f"  WARNING: {kind} end to end fired {diff:+,} rules compared with the baseline")
    print(
        "  baseline by rule: " + ", ".join(f"{k} {v:,}" for k, v in base["fired_by_rule"].items())
    )
    print()
    header = (
        f"{'database':<11} {'end-to-end ev/s':>16} {'baseline ev/s':>14} {'ratio':>7} "
        f"{'e2e peak MB':>12} {'baseline MB':>12}"
    )
    print(header)
    print("-" * len(header))
    ratios = []
    peaks = []
    for kind, runs in e2e.items():
        ours = best_of(runs)
        ratio = ours["events_per_s"] / base["events_per_s"]
        ratios.append(ratio)
        peaks.append(ours["peak_rss_mb"])
        print(
            f"{kind:<11} {ours['events_per_s']:>16,.0f} {base['events_per_s']:>14,.0f} "
            f"{ratio:>7.3f} {ours['peak_rss_mb']:>12.0f} {base['peak_rss_mb']:>12.0f}"
        )
    lean = max(b["lean_events_per_s"] for b in baselines)
    print(
        "(for comparison, not the target's baseline: end to end against crmflow's own engine "
        f"loop in memory, {lean:,.0f} events/s: "
        + ", ".join(f"{k} {best_of(r)['events_per_s'] / lean:.3f}" for k, r in e2e.items())
        + ")"
    )
    print_verdict("rules", ratios, peaks, TARGET, MEMORY_LIMIT_MB, "end-to-end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
