"""Points that hold money: a typed ledger, pending lots, debts, refunds by order, rewards

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Old `debit` entries are relabelled by their reason: the example pack's refund rule wrote
`<rule>: refund`, so a reason naming a refund becomes `clawback`, anything else
`adjust_debit`. Earnings become qualifying.
"""

import sqlalchemy as sa
from alembic import op

import store.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
POINTS = sa.Numeric(precision=14, scale=2)


def upgrade() -> None:
    with op.batch_alter_table("customers") as t:
        t.add_column(sa.Column("points_debt", POINTS, server_default="0", nullable=False))
    with op.batch_alter_table("points_lots") as t:
        t.add_column(sa.Column("order_id", sa.String(length=200), nullable=True))
        t.add_column(sa.Column("available_at", store.db.UTCDateTime(), nullable=True))
        t.add_column(sa.Column("activated_at", store.db.UTCDateTime(), nullable=True))
    with op.batch_alter_table("points_ledger") as t:
        t.add_column(sa.Column("order_id", sa.String(length=200), nullable=True))
        t.add_column(
            sa.Column("qualifying", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        t.add_column(sa.Column("actor", sa.String(length=200), nullable=True))
        t.add_column(sa.Column("ref", sa.String(length=200), nullable=True))
        t.create_index(t.f("ix_points_ledger_ref"), ["ref"], unique=False)
    with op.batch_alter_table("coupons") as t:
        t.add_column(sa.Column("voided_at", store.db.UTCDateTime(), nullable=True))
    op.execute("UPDATE points_ledger SET qualifying = true WHERE kind = 'earn'")
    op.execute(
        "UPDATE points_ledger SET kind = CASE WHEN lower(reason) LIKE '%refund%' "
        "THEN 'clawback' ELSE 'adjust_debit' END WHERE kind = 'debit'"
    )
    op.create_table(
        "order_refunds",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=200), nullable=True),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("purchased_at", store.db.UTCDateTime(), nullable=True),
        sa.Column("refunded_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("amount", POINTS, nullable=False),
        sa.Column("points", POINTS, nullable=False),
        sa.Column("debt", POINTS, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_order_refunds_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_refunds")),
        sa.UniqueConstraint("event_id", name=op.f("uq_order_refunds_event_id")),
    )
    op.create_index("ix_order_refunds_customer_order", "order_refunds", ["customer_id", "order_id"])
    op.create_table(
        "rewards",
        sa.Column("reward_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("cost", POINTS, nullable=False),
        sa.Column("stock", sa.Integer(), nullable=True),
        sa.Column("issued", sa.Integer(), server_default="0", nullable=False),
        sa.Column("per_member_limit", sa.Integer(), nullable=True),
        sa.Column("valid_from", store.db.UTCDateTime(), nullable=True),
        sa.Column("valid_to", store.db.UTCDateTime(), nullable=True),
        sa.Column("min_tier", sa.String(length=64), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("coupon", store.db.JSONDoc, nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("updated_at", store.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("reward_id", name=op.f("pk_rewards")),
    )
    op.create_table(
        "redemptions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("reward_id", sa.String(length=64), nullable=False),
        sa.Column("cost", POINTS, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=True),
        sa.Column("by", sa.String(length=200), nullable=True),
        sa.Column("created_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("reversed_at", store.db.UTCDateTime(), nullable=True),
        sa.Column("reversed_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_redemptions_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reward_id"], ["rewards.reward_id"], name=op.f("fk_redemptions_reward_id_rewards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_redemptions")),
        sa.UniqueConstraint("key", name=op.f("uq_redemptions_key")),
    )
    op.create_index(
        "ix_redemptions_customer_reward", "redemptions", ["customer_id", "reward_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_redemptions_customer_reward", table_name="redemptions")
    op.drop_table("redemptions")
    op.drop_table("rewards")
    op.drop_index("ix_order_refunds_customer_order", table_name="order_refunds")
    op.drop_table("order_refunds")
    op.execute("UPDATE points_ledger SET kind = 'debit' WHERE kind IN ('clawback', 'adjust_debit')")
    with op.batch_alter_table("coupons") as t:
        t.drop_column("voided_at")
    with op.batch_alter_table("points_ledger") as t:
        t.drop_index(t.f("ix_points_ledger_ref"))
        t.drop_column("ref")
        t.drop_column("actor")
        t.drop_column("qualifying")
        t.drop_column("order_id")
    with op.batch_alter_table("points_lots") as t:
        t.drop_column("activated_at")
        t.drop_column("available_at")
        t.drop_column("order_id")
    with op.batch_alter_table("customers") as t:
        t.drop_column("points_debt")
