"""Event files imported by several worker processes, on SQLite and PostgreSQL: the same
profiles, points, tags and audit trail as one process; a race is retried, not fatal; a
worker's failure reaches the caller; and on SQLite a chunk whose customers another writer
changed after their state was read is undone."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from crmflow.import_workers import can_share, partition
from crmflow.ingest import import_file
from crmflow.processing import StaleState, active_pack, mark_processed, process_chunk
from rules.pack import PackSource, load_pack
from rules.source import SourceError
from store.db import make_engine
from store.migrate import upgrade
from store.models import AuditRow, CustomerRow, EventRow, PointsLedgerRow, TagRow
from store.profiles import load_profile
from store.rule_versions import deploy
from tests.rules_helpers import REPO, deploy_dir, event, import_rows, wipe

CUSTOMERS = 60


def write_files(tmp: Path, events: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    customers = tmp / "customers.jsonl"
    customers.write_text(
        "".join(
            json.dumps(
                {
                    "customer_id": f"W{n:03d}",
                    "name": f"Customer {n}",
                    "timezone": rng.choice(["Asia/Shanghai", "Europe/Paris", "UTC"]),
                    "lifecycle_stage": rng.choice(["member", "member", "lead"]),
                    "consent": {"email": True},
                    "attributes": {"birthday": f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-15"},
                }
            )
            + "\n"
            for n in range(CUSTOMERS)
        )
    )
    start = datetime(2025, 6, 1, tzinfo=UTC)
    lines = []
    for n in range(events):
        at = start + timedelta(minutes=n * 157)
        who = f"W{rng.randrange(CUSTOMERS):03d}"
        kind = rng.choices(["purchase", "sales_follow_up", "unsubscribed"], [90, 8, 2])[0]
        props: dict[str, Any] = {}
        if kind == "purchase":
            props = {"amount": round(rng.uniform(20, 2500), 2), "currency": "CNY"}
        elif kind == "unsubscribed":
            props = {"channel": "email"}
        lines.append(
            json.dumps(
                {
                    "event_id": f"w{n}",
                    "customer_id": who,
                    "type": kind,
                    "occurred_at": at.isoformat(),
                    "properties": props,
                }
            )
        )
    events_file = tmp / "events.jsonl"
    events_file.write_text("\n".join(lines) + "\n")
    return customers, events_file


def snapshot(engine: Engine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for n in range(CUSTOMERS):
            cid = f"W{n:03d}"
            p = load_profile(conn, cid)
            assert p is not None
            ledger = conn.execute(
                select(func.coalesce(func.sum(PointsLedgerRow.amount), 0)).where(
                    PointsLedgerRow.customer_id == cid
                )
            ).scalar_one()
            audit = conn.execute(
                select(AuditRow.rule, AuditRow.kind, AuditRow.event_id, AuditRow.skipped)
                .where(AuditRow.customer_id == cid)
                .order_by(AuditRow.event_id, AuditRow.rule, AuditRow.kind)
            ).all()
            out[cid] = (
                p.tier,
                p.lifecycle_stage,
                p.points_balance,
                float(ledger),
                sorted((t.tag, t.expires_at) for t in p.tags),
                sorted(p.consent.items()),
                sorted(tuple(r) for r in audit),
            )
        out["unprocessed"] = conn.execute(
            select(func.count()).select_from(EventRow).where(EventRow.processed_at.is_(None))
        ).scalar_one()
    return out


def run_import(engine: Engine, files: tuple[Path, Path], workers: int) -> tuple[Any, Any]:
    deploy_dir(engine, REPO / "examples/rules")
    import_file(engine, files[0], "customers")
    report = import_file(engine, files[1], "events", chunk_size=150, workers=workers)
    return report, snapshot(engine)


def test_workers_give_what_one_process_gives(engine: Engine, tmp_path: Path) -> None:
    files = write_files(tmp_path, 1800, seed=5)
    one, alone = run_import(engine, files, workers=1)
    wipe(engine)
    many, together = run_import(engine, files, workers=3)
    assert (many.received, many.stored, many.processed) == (1800, 1800, 1800)
    assert (many.processed, many.rules_fired, many.rules_version) == (
        one.processed,
        one.rules_fired,
        one.rules_version,
    )
    assert together == alone
    assert together["unprocessed"] == 0
    assert any(v[2] > 0 for k, v in together.items() if k != "unprocessed")

    # a second import of the same file by the workers stores and applies nothing
    again = import_file(engine, files[1], "events", chunk_size=150, workers=3)
    assert (again.stored, again.duplicates, again.processed) == (0, 1800, 0)
    assert snapshot(engine) == alone


def test_one_event_id_under_two_customers_is_stored_once(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    # two customers the two workers split between them, the same event id for both, in
    # chunks small enough for both workers to hold one at the same time
    a = next(f"D{n}" for n in range(100) if partition(f"D{n}", 2) == 0)
    b = next(f"D{n}" for n in range(100) if partition(f"D{n}", 2) == 1)
    rows = [event(f"{c}-{i}", c, amount=10.0 + i) for i in range(30) for c in (a, b)]
    rows += [event("same", a, amount=500.0), event("same", b, amount=700.0)]
    report = import_rows(engine, tmp_path / "e.jsonl", rows, chunk_size=10, workers=2)
    # the second of the two to reach the database is a conflict (which one varies)
    assert (report.stored, report.duplicates, report.conflicts, report.processed) == (61, 0, 1, 61)
    with engine.connect() as conn:
        owners = conn.execute(select(EventRow.customer_id).where(EventRow.event_id == "esame"))
        (owner,) = owners.one()
        earned = conn.execute(
            select(func.count()).select_from(PointsLedgerRow).where(PointsLedgerRow.kind == "earn")
        ).scalar_one()
    assert earned == 61
    (fault,) = report.faults
    assert (fault.event_id, fault.problem) == ("esame", "conflict")
    assert fault.at == (62 if owner == a else 61)  # the line of the row left out
    assert set(fault.differs) == {"customer_id", "properties"}


def test_a_worker_failure_reaches_the_caller(engine: Engine, tmp_path: Path) -> None:
    _, source = load_pack(REPO / "examples/rules")
    broken = PackSource(source.program_path, source.program_text, [("bad.yaml", "rules: [")])
    with engine.begin() as conn:
        deploy(conn, "broken-version", broken, 1, "test")
    _, events_file = write_files(tmp_path, 400, seed=6)
    with pytest.raises(SourceError):
        import_file(engine, events_file, "events", chunk_size=100, workers=2)
    with engine.connect() as conn:  # the failed chunks left nothing
        assert conn.execute(select(func.count()).select_from(EventRow)).scalar_one() == 0


def test_memory_databases_are_not_shared() -> None:
    assert not can_share("sqlite://")
    assert not can_share("sqlite:///:memory:")
    assert not can_share("sqlite:///file:x?mode=memory&cache=shared&uri=true")
    assert can_share("sqlite:////tmp/crmflow.db")
    assert can_share("postgresql+psycopg://postgres@127.0.0.1/crmflow")


def test_partition_is_stable_and_spreads() -> None:
    counts = [0, 0, 0]
    for n in range(3000):
        counts[partition(f"C{n:06d}", 3)] += 1
    assert min(counts) > 900
    assert partition("C000042", 3) == partition("C000042", 3)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'stale.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_sqlite_chunk_on_a_stale_state_is_undone(sqlite_engine: Engine, tmp_path: Path) -> None:
    # (PostgreSQL row-locks the chunk's customers before reading their state)
    engine = sqlite_engine
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "S", amount=100.0)], process=False)
    with engine.connect() as conn:
        pack = active_pack(conn)
        e = EventRow
        row = conn.execute(
            select(e.event_id, e.customer_id, e.type, e.occurred_at, e.properties)
        ).one()
    assert pack is not None
    chunk = [dict(row._mapping)]

    def claim_after_another_writer(conn: Any, ids: list[str], now: datetime) -> int:
        # another process changes the customer after its state was read, before this
        # transaction's first write
        with engine.begin() as other:
            other.execute(
                update(CustomerRow)
                .where(CustomerRow.customer_id == "S")
                .values(tier="gold", state_version=CustomerRow.state_version + 1)
            )
        return mark_processed(conn, ids, now)

    with pytest.raises(StaleState, match="1 of 1 customers"), engine.begin() as conn:
        process_chunk(conn, pack, chunk, claim=claim_after_another_writer)
    with engine.connect() as conn:
        processed = conn.execute(
            select(EventRow.processed_at).where(EventRow.event_id == "e1")
        ).scalar_one()
        tags = conn.execute(select(func.count()).select_from(TagRow)).scalar_one()
        ledger = conn.execute(select(func.count()).select_from(PointsLedgerRow)).scalar_one()
    assert (processed, tags, ledger) == (None, 0, 0)
    # the next try reads the state the other writer left
    with engine.begin() as conn:
        assert process_chunk(conn, pack, chunk).events == 1
    with engine.connect() as conn:
        p = load_profile(conn, "S", at=datetime(2026, 11, 2, tzinfo=UTC))  # a day after
    assert p is not None and p.tier == "gold" and p.points_balance > 0


def test_a_raced_chunk_is_tried_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crmflow.event_chunks as ingest

    deploy_dir(engine, REPO / "examples/rules")
    calls: list[int] = []
    real = ingest.process_chunk

    def loses_the_first_race(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise StaleState("1 of 1 customers were changed meanwhile (first 'R')")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "process_chunk", loses_the_first_race)
    rows = [event(i, "R", amount=100.0) for i in range(3)]
    report = import_rows(engine, tmp_path / "e.jsonl", rows)
    assert (report.stored, report.processed, len(calls)) == (3, 3, 2)
    with engine.connect() as conn:
        earned = conn.execute(
            select(func.count()).select_from(PointsLedgerRow).where(PointsLedgerRow.kind == "earn")
        ).scalar_one()
    assert earned == 3


def test_processing_stored_events_tries_again_after_a_lost_race(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crmflow.processing as processing

    rows = [event(i, f"P{i % 2}", amount=50.0) for i in range(4)]
    import_rows(engine, tmp_path / "e.jsonl", rows, process=False)
    deploy_dir(engine, REPO / "examples/rules")
    real = processing.process_chunk
    calls: list[int] = []

    def loses(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= processing.RACE_RETRIES - 1:
            raise StaleState("1 of 2 customers were changed meanwhile (first 'P0')")
        return real(*args, **kwargs)

    monkeypatch.setattr(processing, "process_chunk", loses)
    assert processing.process_pending(engine).events == 4
    assert len(calls) == processing.RACE_RETRIES

    # a chunk that keeps losing is reported, not looped over for ever
    import_rows(engine, tmp_path / "f.jsonl", [event(9, "P0", amount=1.0)], process=False)

    def always_loses(*_args: Any, **_kwargs: Any) -> Any:
        raise StaleState("1 of 1 customers were changed meanwhile (first 'P0')")

    monkeypatch.setattr(processing, "process_chunk", always_loses)
    with pytest.raises(StaleState):
        processing.process_pending(engine)
