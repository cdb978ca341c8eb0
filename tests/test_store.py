"""The schema: migrations match the models on both databases, timestamps stay in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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
