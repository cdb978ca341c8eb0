"""Export and erasure: the erased customer's tombstone mark and the privacy log

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

`customers.erased_at` marks a customer whose personal data was erased (the row stays, as a
pseudonymous tombstone); `privacy_log` records every export and erasure (who, when, which
tables, how many rows) without personal data.
"""

import sqlalchemy as sa
from alembic import op

import store.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("customers") as t:
        t.add_column(sa.Column("erased_at", store.db.UTCDateTime(), nullable=True))
    op.create_table(
        "privacy_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", store.db.UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("actor_name", sa.String(length=100), nullable=True),
        sa.Column("person", sa.String(length=200), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("tables", store.db.JSONDoc, nullable=False),
        sa.Column("detail", store.db.JSONDoc, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_log")),
    )
    op.create_index(op.f("ix_privacy_log_at"), "privacy_log", ["at"], unique=False)
    op.create_index(
        op.f("ix_privacy_log_customer_id"), "privacy_log", ["customer_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_privacy_log_customer_id"), table_name="privacy_log")
    op.drop_index(op.f("ix_privacy_log_at"), table_name="privacy_log")
    op.drop_table("privacy_log")
    with op.batch_alter_table("customers") as t:
        t.drop_column("erased_at")
