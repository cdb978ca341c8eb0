"""rules: versions, audit log, journey outbox, tasks, coupons

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import store.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "rule_versions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("program_path", sa.Text(), nullable=False),
        sa.Column("program_text", sa.Text(), nullable=False),
        sa.Column(
            "files",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("rule_count", sa.Integer(), nullable=False),
        sa.Column("deployed_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rule_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_rule_versions_version")),
    )
    with op.batch_alter_table("rule_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rule_versions_active"), ["active"], unique=False)

    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("at", store.db.UTCDateTime(), nullable=False),
        sa.Column("recorded_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("rules_version", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("skipped", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_audit_log_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_customer_at", ["customer_id", "at"], unique=False)

    op.create_table(
        "coupons",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Numeric(precision=14, scale=2), nullable=False),
        sa.Column("expires_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=True),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("redeemed_at", store.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_coupons_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupons")),
        sa.UniqueConstraint("code", name=op.f("uq_coupons_code")),
    )
    with op.batch_alter_table("coupons", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_coupons_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "follow_up_tasks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("due_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=True),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", store.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_follow_up_tasks_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_follow_up_tasks")),
    )
    with op.batch_alter_table("follow_up_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_follow_up_tasks_customer_id"), ["customer_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_follow_up_tasks_owner"), ["owner"], unique=False)

    op.create_table(
        "journey_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("dedupe_key", sa.String(length=250), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("command", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=200), nullable=True),
        sa.Column("rule", sa.String(length=100), nullable=True),
        sa.Column("created_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("dispatched_at", store.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_journey_outbox_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_outbox")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_journey_outbox_dedupe_key")),
    )
    with op.batch_alter_table("journey_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_journey_outbox_pending", ["dispatched_at", "id"], unique=False)

    with op.batch_alter_table("points_lots", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lot_key", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_points_lots_lot_key"), ["lot_key"])


def downgrade() -> None:

    with op.batch_alter_table("points_lots", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_points_lots_lot_key"), type_="unique")
        batch_op.drop_column("lot_key")

    with op.batch_alter_table("journey_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_journey_outbox_pending")

    op.drop_table("journey_outbox")
    with op.batch_alter_table("follow_up_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_follow_up_tasks_owner"))
        batch_op.drop_index(batch_op.f("ix_follow_up_tasks_customer_id"))

    op.drop_table("follow_up_tasks")
    with op.batch_alter_table("coupons", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_coupons_customer_id"))

    op.drop_table("coupons")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_customer_at")

    op.drop_table("audit_log")
    with op.batch_alter_table("rule_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rule_versions_active"))

    op.drop_table("rule_versions")
