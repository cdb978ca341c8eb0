"""Customer-base model fits (BG/NBD, Gamma-Gamma) and per-customer scores

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

`customer_models` holds every fit (parameters, the data it came from, how it went; the
newest `ok` one is active); `customer_scores` each customer's latest scores under a model
(P(alive), expected purchases, expected spend, CLV), rewritten whole by every scoring —
derived data without a foreign key or a second index, which every scoring would otherwise
check or maintain for each of its rows.
"""

import sqlalchemy as sa
from alembic import op

import store.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "customer_models",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("fitted_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("calibration_end", store.db.UTCDateTime(), nullable=False),
        sa.Column("unit", sa.String(length=8), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("repeat_buyers", sa.Integer(), nullable=False),
        sa.Column("transactions", sa.Integer(), nullable=False),
        sa.Column("r", sa.Double(), nullable=True),
        sa.Column("alpha", sa.Double(), nullable=True),
        sa.Column("a", sa.Double(), nullable=True),
        sa.Column("b", sa.Double(), nullable=True),
        sa.Column("log_likelihood", sa.Double(), nullable=True),
        sa.Column("converged", sa.Boolean(), nullable=False),
        sa.Column("p", sa.Double(), nullable=True),
        sa.Column("q", sa.Double(), nullable=True),
        sa.Column("gamma", sa.Double(), nullable=True),
        sa.Column("spend_log_likelihood", sa.Double(), nullable=True),
        sa.Column("spend_converged", sa.Boolean(), nullable=False),
        sa.Column("spend_customers", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("fitted_by", sa.String(length=200), nullable=True),
        sa.Column("detail", store.db.JSONDoc, nullable=False),
        sa.Column("scored_at", store.db.UTCDateTime(), nullable=True),
        sa.Column("scored_customers", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer_models")),
    )
    op.create_index(
        op.f("ix_customer_models_fitted_at"), "customer_models", ["fitted_at"], unique=False
    )
    op.create_table(
        "customer_scores",
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("model_id", BigId, nullable=False),
        sa.Column("as_of", store.db.UTCDateTime(), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False),
        sa.Column("recency_days", sa.Double(), nullable=False),
        sa.Column("age_days", sa.Double(), nullable=False),
        sa.Column("avg_spend", sa.Double(), nullable=True),
        sa.Column("p_alive", sa.Double(), nullable=False),
        sa.Column("expected_purchases_30d", sa.Double(), nullable=False),
        sa.Column("expected_purchases_90d", sa.Double(), nullable=False),
        sa.Column("expected_purchases_365d", sa.Double(), nullable=False),
        sa.Column("expected_avg_spend", sa.Double(), nullable=True),
        sa.Column("clv_365d", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_scores")),
    )


def downgrade() -> None:
    op.drop_table("customer_scores")
    op.drop_index(op.f("ix_customer_models_fitted_at"), table_name="customer_models")
    op.drop_table("customer_models")
