"""Importing customers and events from JSON Lines and CSV, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy import Engine, func, select

from crmflow.ingest import import_file, rejects_path
from store.models import CustomerRow, EventRow
from store.profiles import load_profile
from tests.conftest import write_lines

CUSTOMERS: list[dict[str, object]] = [
    {
        "customer_id": "C1",
        "name": "Li Wei",
        "email": "li.wei@Example.com",
        "phone": "139 1234 5678",
        "timezone": "Asia/Shanghai",
        "consent": {"email": True, "sms": False},
        "lifecycle_stage": "member",
        "attributes": {"birthday": "1990-05-01"},
    },
    {"customer_id": "C2", "name": "Emma Clark", "phone": "+44 7911 123456"},
]


def jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


def ev(n: int, customer: str = "C1", **over: object) -> dict[str, object]:
    return {
        "event_id": f"e{n}",
        "customer_id": customer,
        "type": "purchase",
        "occurred_at": f"2026-11-{n % 28 + 1:02d}T10:00:00+08:00",
        "properties": {"amount": 10.0 * n},
    } | over


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_customers_import_normalises_and_reimport_changes_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    path = jsonl(tmp_path / "customers.jsonl", CUSTOMERS)
    first = import_file(engine, path, "customers")
    assert (first.received, first.stored, first.rejected) == (2, 2, 0)
    with engine.connect() as conn:
        before = load_profile(conn, "C1")
    assert before is not None
    assert before.email == "li.wei@example.com"
    assert before.phone == "+8613912345678"
    assert before.consent == {"email": True, "sms": False}
    assert before.lifecycle_stage == "member"

    again = import_file(engine, path, "customers")
    assert (again.stored, again.updated, again.duplicates) == (0, 0, 2)
    with engine.connect() as conn:
        after = load_profile(conn, "C1")
    assert after == before  # not even updated_at moved


def test_changed_customer_is_updated_and_unset_fields_keep_their_value(
    engine: Engine, tmp_path: Path
) -> None:
    import_file(engine, jsonl(tmp_path / "a.jsonl", CUSTOMERS), "customers")
    changed = [{"customer_id": "C1", "name": "Li Wei", "email": "new@example.com"}]
    report = import_file(engine, jsonl(tmp_path / "b.jsonl", changed), "customers")
    assert (report.stored, report.updated, report.duplicates) == (0, 1, 0)
    with engine.connect() as conn:
        p = load_profile(conn, "C1")
    assert p is not None
    assert p.email == "new@example.com"
    assert p.lifecycle_stage == "member"  # not in the new row: kept
    assert p.timezone == "Asia/Shanghai"
    assert p.updated_at > p.created_at


def test_csv_with_dotted_columns(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        "customer_id,name,phone,consent.email,consent.sms,attributes.city,attributes.visits\n"
        "C9,Tang Yu,13800138000,true,false,Hangzhou,12\n"
        "C10,Bad Phone,12,true,,,\n",
        encoding="utf-8",
    )
    report = import_file(engine, path, "customers")
    assert (report.received, report.stored, report.rejected) == (2, 1, 1)
    assert report.faults[0].at == 3 and report.faults[0].problem == "rejected"
    assert "field 'phone'" in report.faults[0].reason
    with engine.connect() as conn:
        p = load_profile(conn, "C9")
    assert p is not None
    assert p.consent == {"email": True, "sms": False}
    assert p.attributes == {"city": "Hangzhou", "visits": 12}


def test_bad_rows_are_reported_by_line_and_good_rows_kept(engine: Engine, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            json.dumps(ev(1)),
            json.dumps(ev(2, occurred_at="2026-11-20T10:00:00")),
            "{not json",
            "",
            json.dumps(ev(3, type="Sign In")),
            json.dumps(ev(4)),
        ],
    )
    report = import_file(engine, path, "events")
    assert (report.received, report.stored, report.rejected) == (5, 2, 3)
    assert [r.at for r in report.faults] == [2, 3, 5]
    assert "field 'occurred_at'" in report.faults[0].reason
    assert "field 'type'" in report.faults[2].reason
    rejects = [json.loads(x) for x in rejects_path(path).read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3, 5]
    assert rejects[1]["row"] == "{not json"
    assert count(engine, EventRow) == 2

    # fixed file: the rejects file of the old run goes away, nothing is applied twice
    write_lines(path, [json.dumps(ev(n)) for n in (1, 2, 3, 4)])
    report = import_file(engine, path, "events")
    assert (report.stored, report.duplicates, report.rejected) == (2, 2, 0)
    assert not rejects_path(path).exists()
    assert count(engine, EventRow) == 4


def test_events_once_per_event_id_across_files_chunks_and_within_a_file(
    engine: Engine, tmp_path: Path
) -> None:
    rows = [ev(n, customer=f"C{n % 3}") for n in range(1, 11)] + [ev(5, customer="C2")]
    path = jsonl(tmp_path / "events.jsonl", rows)
    report = import_file(engine, path, "events", chunk_size=3)
    assert (report.received, report.stored, report.duplicates) == (11, 10, 1)
    report = import_file(engine, path, "events", chunk_size=4)
    assert (report.stored, report.duplicates) == (0, 11)
    assert count(engine, EventRow) == 10
    with engine.connect() as conn:
        stored = conn.execute(select(EventRow.customer_id).where(EventRow.event_id == "e5")).one()
    assert stored.customer_id == "C2"  # the first occurrence wins


def test_event_for_an_unknown_customer_creates_a_stub_that_a_profile_completes(
    engine: Engine, tmp_path: Path
) -> None:
    import_file(engine, jsonl(tmp_path / "e.jsonl", [ev(1, customer="C2")]), "events")
    with engine.connect() as conn:
        stub = load_profile(conn, "C2")
    assert stub is not None
    assert stub.is_stub
    assert stub.events == 1
    import_file(engine, jsonl(tmp_path / "c.jsonl", CUSTOMERS), "customers")
    with engine.connect() as conn:
        full = load_profile(conn, "C2")
    assert full is not None
    assert not full.is_stub
    assert full.name == "Emma Clark"
    assert full.phone == "+447911123456"
    assert count(engine, CustomerRow) == 2


def test_unknown_file_type_is_refused(engine: Engine, tmp_path: Path) -> None:
    import pytest

    from crmflow.ingest import ImportError_

    path = tmp_path / "events.xml"
    path.write_text("<x/>")
    with pytest.raises(ImportError_, match=r"expected \.jsonl"):
        import_file(engine, path, "events")
