"""The schema: migrations match the models on both databases, timestamps stay in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, select

from store.migrate import current_revision, head_revision, upgrade
from store.models import Base, CustomerRow, EventRow


def test_migrations_are_at_head_and_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    upgrade(engine)  # a second upgrade is a no-op
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_timestamps_round_trip_as_aware_utc(engine: Engine) -> None:
    shanghai = timezone(timedelta(hours=8))
    at = datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=shanghai)
    with engine.begin() as conn:
        conn.execute(insert(CustomerRow).values(customer_id="c1", consent={}, attributes={}))
        conn.execute(
            insert(EventRow).values(
                event_id="e1", customer_id="c1", type="purchase", occurred_at=at, properties={}
            )
        )
    with engine.connect() as conn:
        got = conn.execute(select(EventRow.occurred_at)).scalar_one()
        created = conn.execute(select(CustomerRow.created_at)).scalar_one()
    assert got == at
    assert got.tzinfo == UTC
    assert created.tzinfo == UTC


def test_the_typed_ledger_migration_relabels_old_debits_and_marks_earnings(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(eng, "0006")
    with eng.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO customers (customer_id, consent, attributes, timezone, "
                "lifecycle_stage, is_stub, state_version, created_at, updated_at) "
                "VALUES ('c', '{}', '{}', 'UTC', 'member', 0, 0, :t, :t)"
            ),
            {"t": "2026-01-01 00:00:00.000000"},
        )
        for kind, amount, reason in [
            ("earn", 100, "earn-on-purchase: purchase"),
            ("debit", -40, "refund-deducts-points: refund"),
            ("debit", -10, "spend: voucher"),
        ]:
            conn.execute(
                text(
                    "INSERT INTO points_ledger (customer_id, kind, amount, at, reason) "
                    "VALUES ('c', :k, :a, '2026-01-02 00:00:00.000000', :r)"
                ),
                {"k": kind, "a": amount, "r": reason},
            )
    upgrade(eng)
    with eng.connect() as conn:
        rows = conn.execute(text("SELECT kind, qualifying FROM points_ledger ORDER BY id")).all()
        debt = conn.execute(text("SELECT points_debt FROM customers")).scalar_one()
    assert [(k, bool(q)) for k, q in rows] == [
        ("earn", True),
        ("clawback", False),
        ("adjust_debit", False),
    ]
    assert float(debt) == 0
    eng.dispose()
