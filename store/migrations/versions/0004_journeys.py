"""journeys: versions, status, enrollments, steps

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import store.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "journeys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("active_version", sa.String(length=64), nullable=False),
        sa.Column("updated_at", store.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_journeys")),
    )
    op.create_table(
        "journey_versions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("definition", JSON_DOC, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=True),
        sa.Column("deployed_at", store.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_versions")),
        sa.UniqueConstraint("journey", "version", name=op.f("uq_journey_versions_journey")),
    )
    op.create_table(
        "journey_enrollments",
        sa.Column("workflow_id", sa.String(length=250), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("entry_no", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.Column("node_since", store.db.UTCDateTime(), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("entered_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", store.db.UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_journey_enrollments")),
    )
    op.create_index(
        "ix_journey_enrollments_journey_status", "journey_enrollments", ["journey", "status"]
    )
    op.create_index(
        "ix_journey_enrollments_customer", "journey_enrollments", ["customer_id", "journey"]
    )
    op.create_table(
        "journey_steps",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("step_key", sa.String(length=300), nullable=False),
        sa.Column("workflow_id", sa.String(length=250), nullable=False),
        sa.Column("journey", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("at", store.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_steps")),
        sa.UniqueConstraint("step_key", name=op.f("uq_journey_steps_step_key")),
    )
    op.create_index(
        op.f("ix_journey_steps_workflow_id"), "journey_steps", ["workflow_id"], unique=False
    )
    op.create_index(
        "ix_journey_steps_journey_node", "journey_steps", ["journey", "version", "node"]
    )


def downgrade() -> None:
    op.drop_table("journey_steps")
    op.drop_table("journey_enrollments")
    op.drop_table("journey_versions")
    op.drop_table("journeys")
