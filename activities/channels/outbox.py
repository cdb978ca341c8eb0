"""The `outbox` channel: messages land in the `outbox_messages` table instead of leaving.

The embedded default, so a demo sends somewhere visible (and a test can read what was sent).
The dedupe key is unique in the table and the insert ignores a duplicate, so sending the same
message twice leaves one row and returns the same provider id (`outbox:<row id>`); the first
content stored wins.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
)
from store.models import OutboxMessageRow
from store.sql import insert_for, table_of


class OutboxChannel:
    """Writes each message as one row, through a SQLAlchemy engine, in a worker thread."""

    name = "outbox"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def send(self, msg: OutgoingMessage) -> SendResult:
        return await asyncio.to_thread(self.write, msg)

    def write(self, msg: OutgoingMessage) -> SendResult:
        """Insert the message unless its dedupe key is there already; return the row's id."""
        t = table_of(OutboxMessageRow)
        headers = dict(msg.headers)
        if msg.unsubscribe_url:
            headers["List-Unsubscribe"] = f"<{msg.unsubscribe_url}>"
        try:
            with self.engine.begin() as conn:
                stmt = (
                    insert_for(conn, t)
                    .values(
                        dedupe_key=msg.dedupe_key,
                        customer_id=msg.customer_id,
                        channel=msg.channel,
                        address=msg.to,
                        subject=msg.subject,
                        body_text=msg.text,
                        body_html=msg.html,
                        headers=headers,
                    )
                    .on_conflict_do_nothing(index_elements=["dedupe_key"])
                    .returning(t.c.id)
                )
                # RETURNING yields the new row's id, or nothing when the key was there already.
                row_id = conn.execute(stmt).scalar_one_or_none()
                inserted = row_id is not None
                if row_id is None:
                    row_id = conn.execute(
                        select(t.c.id).where(t.c.dedupe_key == msg.dedupe_key)
                    ).scalar_one()
        except (DataError, IntegrityError) as exc:  # a value the table cannot hold
            raise PermanentSendError(f"outbox refused the message: {exc.orig}") from exc
        except DBAPIError as exc:  # the database is down, locked, or the connection dropped
            raise TransientSendError(f"outbox database error: {exc.orig}") from exc
        return SendResult(
            provider_message_id=f"outbox:{row_id}",
            detail={"outbox_id": row_id, "inserted": inserted},
        )
