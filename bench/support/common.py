"""What the benchmarks share: ids, fresh databases, peak memory, best-of-N."""

from __future__ import annotations

import argparse
import os
import resource
from pathlib import Path
from typing import Any

DATABASES = ("sqlite", "postgresql")


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """--databases, --pg-url and --seed, as every database benchmark takes them."""
    parser.add_argument(
        "--databases",
        default=",".join(DATABASES),
        help="comma separated: sqlite, postgresql (default: both)",
    )
    parser.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server URL without database name; bench databases are created there",
    )
    parser.add_argument("--seed", type=int, default=20261123, help="random seed of the data")


def database_kinds(text: str) -> list[str]:
    """The `--databases` list (comma separated), checked: SystemExit on an unknown one."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in DATABASES]
    if unknown or not kinds:
        raise SystemExit(f"--databases: expected some of {', '.join(DATABASES)}, got {unknown}")
    return kinds


def bench_parser(doc: str | None, events_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes, and the hidden ones its child processes get."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--events", type=int, default=200_000, help=events_help)
    parser.add_argument("--customers", type=int, default=50_000, help="customers they belong to")
    add_database_options(parser)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time each side this many times (fresh databases) and keep the fastest",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--customers-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--events-file", type=Path, help=argparse.SUPPRESS)
    return parser


def customer_id(n: int) -> str:
    return f"C{n:06d}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sqlite_path(url: str) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"not a SQLite file URL: {url}")
    return url[len(prefix) :]


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run's rate, with the highest peak memory seen over all runs."""
    best = dict(max(runs, key=lambda r: r["events_per_s"]))
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return best


class Databases:
    """Fresh, uniquely named databases; PostgreSQL ones are dropped again by `drop_all`."""

    def __init__(self, workdir: Path, pg_base: str, prefix: str) -> None:
        self.workdir = workdir
        self.prefix = prefix
        self.pg_base = pg_base.rstrip("/")
        self.pg_created: list[str] = []
        self.counter = 0

    def fresh(self, kind: str, label: str | None = None) -> str:
        self.counter += 1
        if kind == "sqlite":
            path = self.workdir / f"{label or self.prefix}_{self.counter}.db"
            return f"sqlite:///{path}"
        return self.create_pg()

    def create_pg(self, template: str | None = None) -> str:
        """A new PostgreSQL database (a copy of the database `template` names, if given)."""
        import psycopg

        name = f"bench_{self.prefix}_{os.getpid()}_{self.counter}"
        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(f"{self.pg_base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        self.pg_created.append(name)
        return f"{self.pg_base}/{name}"

    def admin(self, url: str, sql: str) -> None:
        """Run a maintenance statement outside a transaction (PostgreSQL only)."""
        if url.startswith("postgresql"):
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql)

    def settle(self, url: str) -> None:
        """CHECKPOINT on PostgreSQL: the preparation's dirty pages are not flushed in the run."""
        self.admin(url, "CHECKPOINT")

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        if url.startswith("postgresql") and name in self.pg_created:
            import psycopg

            with psycopg.connect(f"{self.pg_base}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.pg_created.remove(name)
        elif url.startswith("sqlite"):
            for suffix in ("", "-wal", "-shm"):
                Path(sqlite_path(url) + suffix).unlink(missing_ok=True)

    def drop_all(self) -> None:
        if not self.pg_created:
            return
        import psycopg

        with psycopg.connect(f"{self.pg_base}/postgres", autocommit=True) as conn:
            while self.pg_created:
                name = self.pg_created.pop()
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def print_verdict(
    name: str, ratios: list[float], peaks: list[float], target: float, memory_mb: float, who: str
) -> None:
    """The closing lines: lowest ratio and highest peak against their targets, then RESULT."""
    worst, peak = min(ratios), max(peaks)
    print()
    print(
        f"events/s ratio (lowest): {worst:.3f}  target >= {target}: "
        f"{'met' if worst >= target else 'NOT met'}"
    )
    print(
        f"{who} peak RSS: {peak:.0f} MB  target < {memory_mb:.0f} MB: "
        f"{'met' if peak < memory_mb else 'NOT met'}"
    )
    print(f"RESULT bench={name} ratio={worst:.3f} target=>={target}")
