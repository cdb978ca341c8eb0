"""Benchmark: fitting and scoring the customer model through crmflow, against the same fit
on the same arrays with a plain scipy call.

What it measures, per database (SQLite and PostgreSQL), on 1,000,000 purchase events of
200,000 customers over the last two years, drawn from the models' own stories (`generate`: a
first purchase each, then repeat purchases at a gamma-distributed rate until the customer
drops out, thinned to 800,000; gamma-gamma spends):

* crmflow: `crmflow.services.customer_model.fit_model(engine, ModelFitInput(unit="weeks"))`,
  what `crmflow model fit` calls: the per-customer purchase summaries from the store (one
  set-based SQL statement: purchase days, first/last day, spend), the BG/NBD and
  Gamma-Gamma fits, the calibration table, scoring every customer as of now (P(alive),
  expected purchases over 30/90/365 days, expected spend, CLV) and writing the 200,000 score
  rows (one DELETE, one bulk INSERT — COPY on PostgreSQL — and the state-version UPDATE),
  all in one transaction.
* baseline: the same two fits on the same (x, t_x, T, m_x) arrays (computed here in numpy
  from the generated purchases, one transaction per customer day, and checked equal to what
  crmflow read), written the plain way: the papers' log-likelihoods in numpy
  (gammaln/betaln/logaddexp) handed to `scipy.optimize.minimize` (L-BFGS-B, gradients by
  scipy's finite differences, log-parameters, started at 1) — reading nothing, scoring and
  writing nothing.

The data is generated and loaded once per database, untimed (driver bulk inserts, COPY on
PostgreSQL, then ANALYZE and a CHECKPOINT). Each measurement runs in a child process of its
own (this script re-run with a hidden `--child` option), so its peak memory is its own
(`VmHWM`). Both sides' parameters must agree to 1e-3 relative.

The last line printed is `RESULT bench=model ratio=<r> target=<=3`, where r is crmflow's
wall time divided by the baseline's on the same database, the higher of the databases.

    python bench/model.py                                            # full size
    python bench/model.py --customers 5000 --purchases 25000 --databases sqlite   # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support.common import (  # noqa: E402
    Databases,
    add_database_options,
    customer_id,
    database_kinds,
)
from bench.support.common import peak_rss_mb as ru_maxrss_mb  # noqa: E402

TARGET = 3.0
SPAN_DAYS = 730
LOAD_CHUNK = 100_000


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss carries the parent's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return ru_maxrss_mb()


# --------------------------------------------------------------------------- data


def generate(customers: int, purchases: int, seed: int, today: datetime) -> dict[str, Any]:
    """Purchases as arrays: customer index, time (days after the window's start, UTC
    midnight), amount. Drawn from the models' own stories, so the fits are well determined:
    a first purchase in the first 700 days, then repeat purchases as a Poisson process
    (rate ~ Gamma(1.2, 50 days)) until the customer drops out after a purchase
    (probability ~ Beta(0.8, 4)); spends Gamma(6, v) with v ~ Gamma(4, 15). The repeat
    purchases are then thinned at random to exactly `purchases - customers`."""
    rng = np.random.default_rng(seed)
    start = today - timedelta(days=SPAN_DAYS)
    span_now = (today - start).total_seconds() / 86400 - 1e-6  # up to now, today included
    first = rng.uniform(0, SPAN_DAYS - 30, customers)
    age = span_now - first
    rate = rng.gamma(1.2, 1 / 50.0, customers)
    drop = rng.beta(0.8, 4.0, customers)
    lifetime_purchases = rng.geometric(drop)
    n = rng.poisson(rate * age)
    who = np.repeat(np.arange(customers), n)
    t = rng.uniform(0, 1, len(who)) * age[who]
    order = np.lexsort((t, who))
    who, t = who[order], t[order]
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    alive = (np.arange(len(who)) - starts[who]) < lifetime_purchases[who]
    who, t = who[alive], t[alive]
    extra = purchases - customers
    if len(who) < extra:
        raise SystemExit(f"only {len(who):,} repeat purchases drawn; ask for fewer purchases")
    keep = np.sort(rng.choice(len(who), extra, replace=False))
    who, t = who[keep], first[who[keep]] + t[keep]
    cust = np.concatenate([np.arange(customers), who])
    nu = rng.gamma(4.0, 1 / 15.0, customers)
    amount = np.round(rng.gamma(6.0, 1 / nu[cust]), 2) + 0.01
    return {"start": start, "customer": cust, "t": np.concatenate([first, t]), "amount": amount}


def arrays(data: dict[str, Any], today: datetime) -> dict[str, np.ndarray]:
    """Per customer (sorted by id, as crmflow reads them): x, t_x and T in weeks, m_x —
    one transaction per UTC day, the day's amounts added up, the first day left out of m_x."""
    cust = data["customer"]
    day = np.floor(data["t"]).astype(np.int64)
    key = cust.astype(np.int64) * 100_000 + day
    keys, inverse = np.unique(key, return_inverse=True)
    spend = np.bincount(inverse, weights=data["amount"])
    kc, kd = keys // 100_000, keys % 100_000
    n = int(cust.max()) + 1
    days = np.bincount(kc, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, kc, kd)
    last = np.zeros(n, dtype=np.int64)
    np.maximum.at(last, kc, kd)
    first_spend = np.zeros(n)
    is_first = kd == first[kc]
    np.add.at(first_spend, kc[is_first], spend[is_first])
    total = np.bincount(kc, weights=spend, minlength=n)
    end_day = (today - data["start"]).days
    x = (days - 1).astype(np.float64)
    m_x = np.zeros(n)
    np.divide(total - first_spend, x, out=m_x, where=x > 0)
    # crmflow orders customers by id text: C000000 … — the same order as the index here
    return {
        "x": x,
        "t_x": (last - first) / 7.0,
        "T": (end_day - first) / 7.0,
        "m_x": m_x,
    }


def load(url: str, data: dict[str, Any]) -> None:
    """Migrate the database and load the customers and purchase events (not timed)."""
    from sqlalchemy import text

    from store.bulk import insert_rows
    from store.db import make_engine
    from store.migrate import upgrade
    from store.models import CustomerRow, EventRow
    from store.sql import table_of

    engine = make_engine(url)
    upgrade(engine)
    created = data["start"]
    n = int(data["customer"].max()) + 1
    with engine.begin() as conn:
        for lo in range(0, n, LOAD_CHUNK):
            insert_rows(
                conn,
                table_of(CustomerRow),
                [
                    {
                        "customer_id": customer_id(i),
                        "timezone": "UTC",
                        "consent": {},
                        "lifecycle_stage": "member",
                        "attributes": {},
                        "is_stub": False,
                        "state_version": 0,
                        "created_at": created,
                        "updated_at": created,
                    }
                    for i in range(lo, min(n, lo + LOAD_CHUNK))
                ],
            )
    start = data["start"]
    cust, t, amount = data["customer"], data["t"], data["amount"]
    for lo in range(0, len(cust), LOAD_CHUNK):
        hi = min(len(cust), lo + LOAD_CHUNK)
        rows = [
            {
                "event_id": f"p{k}",
                "customer_id": customer_id(int(cust[k])),
                "type": "purchase",
                "occurred_at": start + timedelta(days=float(t[k])),
                "received_at": start,
                "properties": {"amount": float(amount[k])},
                "processed_at": start,
            }
            for k in range(lo, hi)
        ]
        with engine.begin() as conn:
            insert_rows(conn, table_of(EventRow), rows)
    if url.startswith("postgresql"):
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    engine.dispose()


# --------------------------------------------------------------------------- the two sides


def child_crmflow(url: str) -> dict[str, Any]:
    from sqlalchemy import text

    import crmflow.services.customer_model as service  # imports are not the run's time
    from store.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:  # a warm pool, as a worker's or a CLI's after start-up
        conn.execute(text("SELECT 1"))
    started = time.perf_counter()
    outcome = service.fit_model(engine, service.ModelFitInput(unit="weeks"))
    seconds = time.perf_counter() - started
    engine.dispose()
    m = outcome.model
    assert m.purchase_model is not None and m.spend_model is not None
    assert outcome.scoring is not None
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "customers": m.customers,
        "scored": outcome.scoring.customers,
        "bgnbd": [
            m.purchase_model.r,
            m.purchase_model.alpha,
            m.purchase_model.a,
            m.purchase_model.b,
        ],
        "gg": [m.spend_model.p, m.spend_model.q, m.spend_model.gamma],
        "ll": m.purchase_model.log_likelihood,
    }


def plain_fit(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, m_x: np.ndarray) -> dict[str, Any]:
    """The two fits written the plain way: the log-likelihoods in numpy, scipy's minimize."""
    from scipy.optimize import minimize
    from scipy.special import betaln, gammaln

    def bgnbd_nll(v: np.ndarray) -> float:
        r, alpha, a, b = np.exp(v)
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + T)
        xx = np.maximum(x, 1)
        a3 = betaln(a + 1, b + xx - 1) - betaln(a, b) - (r + x) * np.log(alpha + t_x)
        ll = a1 + np.where(x > 0, np.logaddexp(a2, a3), a2)
        return -float(ll.sum()) / len(x)

    bg = minimize(bgnbd_nll, np.zeros(4), method="L-BFGS-B")
    rep = x > 0
    xs, ms = x[rep], m_x[rep]

    def gg_nll(v: np.ndarray) -> float:
        p, q, g = np.exp(v)
        px = p * xs
        ll = (
            gammaln(px + q)
            - gammaln(px)
            - gammaln(q)
            + q * np.log(g)
            + (px - 1) * np.log(ms)
            + px * np.log(xs)
            - (px + q) * np.log(g + ms * xs)
        )
        return -float(ll.sum()) / len(xs)

    gg = minimize(gg_nll, np.zeros(3), method="L-BFGS-B")
    return {
        "bgnbd": [float(v) for v in np.exp(bg.x)],
        "gg": [float(v) for v in np.exp(gg.x)],
        "ll": -bg.fun * len(x),
        "evaluations": int(bg.nfev + gg.nfev),
    }


def child_baseline(npz: Path) -> dict[str, Any]:
    with np.load(npz) as f:
        x, t_x, T, m_x = (np.array(f[k]) for k in ("x", "t_x", "T", "m_x"))
    started = time.perf_counter()
    result = plain_fit(x, t_x, T, m_x)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **result}


def run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def close(a: list[float], b: list[float], rel: float = 1e-3) -> bool:
    return all(abs(u - v) <= rel * max(abs(u), abs(v)) for u, v in zip(a, b, strict=True))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--purchases", type=int, default=1_000_000)
    add_database_options(parser)
    parser.add_argument(
        "--repeat", type=int, default=1, help="time each side N times, keep the fastest"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--npz", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "crmflow":
        print(json.dumps(child_crmflow(args.url)))
        return
    if args.child == "baseline":
        print(json.dumps(child_baseline(args.npz)))
        return
    if args.purchases < args.customers:
        raise SystemExit("--purchases must be at least --customers (everyone buys once)")
    kinds = database_kinds(args.databases)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    print(
        f"customer model: {args.customers:,} customers, {args.purchases:,} purchases over "
        f"{SPAN_DAYS} days up to today, unit weeks"
    )
    started = time.perf_counter()
    data = generate(args.customers, args.purchases, args.seed, today)
    summary = arrays(data, today)
    print(
        f"generated in {time.perf_counter() - started:.1f}s: "
        f"{int((summary['x'] > 0).sum()):,} repeat buyers, "
        f"{int(summary['x'].sum() + len(summary['x'])):,} purchase days"
    )
    ratios: list[float] = []
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        work = Path(tmp)
        npz = work / "arrays.npz"
        np.savez(npz, x=summary["x"], t_x=summary["t_x"], T=summary["T"], m_x=summary["m_x"])
        dbs = Databases(work, args.pg_url, "model")
        try:
            for kind in kinds:
                url = dbs.fresh(kind)
                t0 = time.perf_counter()
                load(url, data)
                dbs.settle(url)
                print(f"[{kind}] loaded in {time.perf_counter() - t0:.1f}s")
                ours = min(
                    (run_child(["--child", "crmflow", "--url", url]) for _ in range(args.repeat)),
                    key=lambda r: r["seconds"],
                )
                plain = min(
                    (
                        run_child(["--child", "baseline", "--npz", str(npz)])
                        for _ in range(args.repeat)
                    ),
                    key=lambda r: r["seconds"],
                )
                if ours["customers"] != args.customers or ours["scored"] != args.customers:
                    raise SystemExit(f"[{kind}] crmflow fitted {ours['customers']} customers")
                if not (close(ours["bgnbd"], plain["bgnbd"]) and close(ours["gg"], plain["gg"])):
                    raise SystemExit(
                        f"[{kind}] the fits differ: crmflow {ours['bgnbd']} {ours['gg']}, "
                        f"plain {plain['bgnbd']} {plain['gg']}"
                    )
                ratio = ours["seconds"] / plain["seconds"]
                ratios.append(ratio)
                r, alpha, a, b = ours["bgnbd"]
                p, q, g = ours["gg"]
                print(
                    f"[{kind}] parameters (both sides): r={r:.4f} alpha={alpha:.4f} a={a:.4f} "
                    f"b={b:.4f}  p={p:.4f} q={q:.4f} gamma={g:.4f}  LL {ours['ll']:,.1f}"
                )
                print(
                    f"[{kind}] crmflow (read, fit, score, write): {ours['seconds']:.2f}s, "
                    f"peak {ours['peak_rss_mb']:.0f} MB"
                )
                print(
                    f"[{kind}] plain scipy fit: {plain['seconds']:.2f}s "
                    f"({plain['evaluations']} likelihood evaluations), "
                    f"peak {plain['peak_rss_mb']:.0f} MB"
                )
                rows.append(
                    f"| {kind} | {ours['seconds']:.2f} s | {ours['peak_rss_mb']:.0f} MB | "
                    f"{plain['seconds']:.2f} s | {plain['peak_rss_mb']:.0f} MB | {ratio:.2f} |"
                )
                dbs.drop(url)
        finally:
            dbs.drop_all()
    print()
    print("| database | crmflow | crmflow peak | plain fit | plain peak | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(row)
    worst = max(ratios)
    verdict = "met" if worst <= TARGET else "NOT met"
    print(f"ratio (highest): {worst:.2f}  target <= {TARGET:g}: {verdict}")
    print(f"RESULT bench=model ratio={worst:.2f} target=<={TARGET:g}")


if __name__ == "__main__":
    main()
