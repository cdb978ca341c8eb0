"""Console users and their sessions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

`users` holds the console's users (name, role, team member, argon2 password hash, disabled);
`console_sessions` the signed-in sessions (a hash of the cookie's token, the CSRF secret,
expiry, sign-out).
"""

import sqlalchemy as sa
from alembic import op

import store.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("person", sa.String(length=200), nullable=True),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("disabled_at", store.db.UTCDateTime(), nullable=True),
        sa.Column("last_sign_in_at", store.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_users")),
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=100), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", store.db.UTCDateTime(), nullable=False),
        sa.Column("ended_at", store.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_console_sessions")),
    )
    op.create_index(
        op.f("ix_console_sessions_user_name"), "console_sessions", ["user_name"], unique=False
    )
    op.create_index(
        op.f("ix_console_sessions_expires_at"), "console_sessions", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_console_sessions_expires_at"), table_name="console_sessions")
    op.drop_index(op.f("ix_console_sessions_user_name"), table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("users")
