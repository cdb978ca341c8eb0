"""store.bulk.insert_rows stores exactly what the ORM stores, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select, text

from store.bulk import insert_rows
from store.models import CustomerRow, EventRow, PointsLedgerRow
from store.sql import table_of

SHANGHAI = timezone(timedelta(hours=8))


def _customer(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            table_of(CustomerRow).insert(),
            [
                {
                    "customer_id": "B1",
                    "created_at": datetime.now(UTC),
                    "updated_at": datetime.now(UTC),
                }
            ],
        )


def _both_ways(engine: Engine, model: Any, rows: list[dict[str, Any]], key: str) -> None:
    """Insert rows[0] with SQLAlchemy and rows[1] with insert_rows; then compare."""
    table = table_of(model)
    with engine.begin() as conn:
        conn.execute(table.insert(), [rows[0]])
        insert_rows(conn, table, [rows[1]])
    columns = [c for c in rows[0] if c != key]
    with engine.connect() as conn:
        got = [
            conn.execute(select(*(table.c[c] for c in columns)).where(table.c[key] == r[key])).one()
            for r in rows
        ]
        assert got[0] == got[1]
        if engine.dialect.name == "sqlite":
            raw = [
                conn.execute(
                    text(
                        "SELECT "
                        + ", ".join(f"typeof({c}), CAST({c} AS TEXT)" for c in columns)
                        + f" FROM {table.name} WHERE {key} = :k"
                    ),
                    {"k": r[key]},
                ).one()
                for r in rows
            ]
            assert raw[0] == raw[1]


def test_events_are_stored_as_the_orm_stores_them(engine: Engine) -> None:
    _customer(engine)
    row = {
        "customer_id": "B1",
        "type": "purchase",
        "occurred_at": datetime(2026, 3, 1, 10, 0, tzinfo=SHANGHAI),
        "received_at": datetime(2026, 3, 1, 2, 0, 0, 123456, tzinfo=UTC),
        "properties": {"amount": 12.5, "items": ["a", "é"], "nested": {"x": None}},
    }
    _both_ways(engine, EventRow, [{**row, "event_id": "x1"}, {**row, "event_id": "x2"}], "event_id")


def test_ledger_rows_with_decimals_and_nulls(engine: Engine) -> None:
    _customer(engine)
    row = {
        "customer_id": "B1",
        "lot_id": None,
        "kind": "debit",
        "amount": Decimal("-12.50"),
        "at": datetime(2026, 3, 1, tzinfo=UTC),
        "event_id": None,
        "reason": "refund",
    }
    _both_ways(
        engine,
        PointsLedgerRow,
        [{**row, "dedupe_key": "d1"}, {**row, "dedupe_key": "d2"}],
        "dedupe_key",
    )


def test_conflicts_can_be_ignored_and_naive_times_are_refused(engine: Engine) -> None:
    _customer(engine)
    row = {
        "event_id": "dup",
        "customer_id": "B1",
        "type": "t",
        "occurred_at": datetime(2026, 3, 1, tzinfo=UTC),
        "received_at": datetime(2026, 3, 1, tzinfo=UTC),
        "properties": {},
    }
    with engine.begin() as conn:
        insert_rows(conn, table_of(EventRow), [row, row], ignore_conflicts_on="event_id")
    with engine.connect() as conn:
        assert conn.execute(select(EventRow.event_id)).scalars().all() == ["dup"]
    import pytest

    with pytest.raises(ValueError, match="naive"), engine.begin() as conn:
        insert_rows(
            conn,
            table_of(EventRow),
            [{**row, "event_id": "n", "occurred_at": datetime(2026, 1, 1)}],
        )
