"""Send reservations, delivery attempts and what an enrollment waits for

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

- `send_scopes`: one row per limit (`rate:<journey>`, `cap:<customer>`), locked by whoever
  reserves under it, so two workers never both take the last place.
- `send_reservations`: a message's place under a limit, from before its send until it is
  abandoned (`held` → `used`, or `released`).
- `delivery_attempts`: every try of a send: when, how long, what the provider answered.
- `journey_enrollments.waiting_for / wait_until / wait_detail`: what an enrollment waits for
  (a delay, an event, quiet hours, the rate limit, the frequency cap) and until when.
"""

import sqlalchemy as sa
from alembic import op

import store.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "send_scopes",
        sa.Column("scope", sa.String(length=250), nullable=False),
        sa.Column("touched_at", store.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_send_scopes")),
    )
    op.create_table(
        "send_reservations",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=250), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("workflow_id", sa.String(length=250), nullable=True),
        sa.Column("slot_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("updated_at", store.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_reservations")),
        sa.UniqueConstraint("scope", "key", name=op.f("uq_send_reservations_scope")),
    )
    op.create_index("ix_send_reservations_scope_slot", "send_reservations", ["scope", "slot_at"])
    op.create_index(op.f("ix_send_reservations_workflow_id"), "send_reservations", ["workflow_id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(length=250), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", store.db.UTCDateTime(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(op.f("ix_delivery_attempts_dedupe_key"), "delivery_attempts", ["dedupe_key"])
    op.create_index(op.f("ix_delivery_attempts_customer_id"), "delivery_attempts", ["customer_id"])
    with op.batch_alter_table("journey_enrollments") as t:
        t.add_column(sa.Column("waiting_for", sa.String(length=24), nullable=True))
        t.add_column(sa.Column("wait_until", store.db.UTCDateTime(), nullable=True))
        t.add_column(sa.Column("wait_detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("journey_enrollments") as t:
        t.drop_column("wait_detail")
        t.drop_column("wait_until")
        t.drop_column("waiting_for")
    op.drop_index(op.f("ix_delivery_attempts_customer_id"), table_name="delivery_attempts")
    op.drop_index(op.f("ix_delivery_attempts_dedupe_key"), table_name="delivery_attempts")
    op.drop_table("delivery_attempts")
    op.drop_index(op.f("ix_send_reservations_workflow_id"), table_name="send_reservations")
    op.drop_index("ix_send_reservations_scope_slot", table_name="send_reservations")
    op.drop_table("send_reservations")
    op.drop_table("send_scopes")
