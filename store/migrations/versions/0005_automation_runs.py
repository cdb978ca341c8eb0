"""automation runs: progress and counts of scheduled automations, per run date

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import store.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "automation_runs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("schedule", sa.String(length=64), nullable=False),
        sa.Column("automation", sa.String(length=32), nullable=False),
        sa.Column("run_date", sa.String(length=10), nullable=False),
        sa.Column("as_of", store.db.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=True),
        sa.Column("cursor", sa.String(length=250), nullable=True),
        sa.Column("counts", JSON_DOC, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=250), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", store.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_automation_runs")),
        sa.UniqueConstraint(
            "schedule", "run_date", "attempt", name="uq_automation_runs_schedule_date"
        ),
    )
    op.create_index(
        "ix_automation_runs_started", "automation_runs", ["schedule", "started_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_automation_runs_started", table_name="automation_runs")
    op.drop_table("automation_runs")
