"""Poisonous rows cost only themselves, on SQLite and PostgreSQL: a time before the calendar
(year 1 at +14:00 overflowed), NUL characters (PostgreSQL cannot store them: its COPY failed
and took the chunk's good rows with it), NaN, a 50 KB property, a time given as a number,
wrong types; each is its line's rejection, the good rows are
stored, and the rejects file (it holds personal data) is readable by its owner only."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, func, select

from crmflow.domain import Event
from crmflow.ingest import MAX_LINE_CHARS, import_file, rejects_path
from store.models import CustomerRow, EventRow


def _event(n: int, **over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "event_id": f"h{n}",
        "customer_id": "H1",
        "type": "sign_in",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "properties": {"channel": "app"},
    }
    row.update(over)
    return row


POISON = [
    (_event(2, occurred_at="0001-01-01T00:00:00+14:00"), "occurred_at", "out of range"),
    (_event(3, occurred_at="9999-12-31T23:59:59-14:00"), "occurred_at", "out of range"),
    (_event(4, properties={"note": "a\u0000b"}), "properties", "NUL characters"),
    (_event(5, properties={"a\u0000": 1}), "properties", "NUL characters"),
    (_event(6, event_id="h\u00006"), "event_id", "NUL characters"),
    (_event(7, customer_id="H\u00001"), "customer_id", "NUL characters"),
    (_event(8, properties={"nested": [{"deep": "x\u0000"}]}), "properties", "NUL characters"),
    (_event(11, properties={"note": "x" * 50_000}), "properties", "at most 32,768"),
    (_event(12, properties={f"k{i}": i for i in range(5_000)}), "properties", "at most"),
    (_event(13, occurred_at=1_732_000_000), "occurred_at", "is a number"),
    (_event(14, occurred_at=["2026-11-20"]), "occurred_at", "datetime"),
    (_event(15, customer_id=["H1"]), "customer_id", "valid string"),
    (_event(16, properties="free text"), "properties", "Input should be"),
]


def test_a_poisonous_row_is_its_lines_rejection_and_the_good_rows_are_stored(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(_event(1))]
    lines += [json.dumps(row) for row, _field, _why in POISON]
    lines.append(
        '{"event_id": "h9", "customer_id": "H1", "type": "sign_in", '
        '"occurred_at": "2026-11-20T10:00:00Z", "properties": {"x": NaN}}'
    )
    lines.append(json.dumps(_event(10)))
    path.write_text("\n".join(lines) + "\n")
    report = import_file(engine, path, "events", chunk_size=3)
    n = len(POISON)
    assert (report.received, report.stored, report.rejected) == (n + 3, 2, n + 1)
    by_line = {f.at: f for f in report.faults}
    for line, (_row, field, why) in enumerate(POISON, start=2):
        fault = by_line[line]
        assert f"field '{field}'" in fault.reason and why in fault.reason, fault
    assert "NaN" in by_line[n + 2].reason or "NUL" in by_line[n + 2].reason
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(EventRow.event_id)).scalars())
    assert ids == ["h1", "h10"]
    rejects = rejects_path(path)
    assert stat.S_IMODE(rejects.stat().st_mode) == 0o600
    assert len(rejects.read_text().splitlines()) == n + 1


def test_a_customer_with_a_nul_in_an_attribute_is_refused(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "customers.jsonl"
    rows = [
        {"customer_id": "G1", "attributes": {"city": "Shang\u0000hai"}},
        {"customer_id": "G2", "attributes": {"city": "Shanghai"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = import_file(engine, path, "customers")
    assert (report.stored, report.rejected) == (1, 1)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CustomerRow)).scalar_one() == 1


@pytest.mark.parametrize(("row", "field", "why"), POISON)
def test_the_models_name_the_field_and_the_reason(
    row: dict[str, object], field: str, why: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        Event.model_validate(row)
    errors = refused.value.errors()
    assert errors[0]["loc"][0] == field and why in errors[0]["msg"]


def test_a_line_too_long_is_its_rejection_and_is_never_held_whole(
    engine: Engine, tmp_path: Path
) -> None:
    """A 3 MB line (JSON Lines) or CSV cell used to be read whole; the CSV one aborted the
    import ("field larger than field limit") and nothing of the file was stored."""
    events = tmp_path / "events.jsonl"
    huge = json.dumps(_event(2, properties={"note": "x" * (MAX_LINE_CHARS * 30)}))
    events.write_text("\n".join([json.dumps(_event(1)), huge, json.dumps(_event(3))]) + "\n")
    report = import_file(engine, events, "events")
    assert (report.received, report.stored, report.rejected) == (3, 2, 1)
    assert report.faults[0].at == 2 and "longer than 100,000 characters" in report.faults[0].reason
    assert rejects_path(events).stat().st_size < 1_000  # the rejects file holds no copy of it

    customers = tmp_path / "customers.csv"
    customers.write_text(
        "customer_id,name\nK1,Ann\nK2," + "y" * 200_000 + "\nK3,Bob\n", encoding="utf-8"
    )
    report = import_file(engine, customers, "customers")
    assert (report.received, report.stored, report.rejected) == (3, 2, 1)
    assert report.faults[0].at == 3 and "longer than" in report.faults[0].reason
    with engine.connect() as conn:
        stored = sorted(conn.execute(select(CustomerRow.customer_id)).scalars())
    assert "K1" in stored and "K3" in stored and "K2" not in stored
