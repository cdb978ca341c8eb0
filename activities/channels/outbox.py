"""The `outbox` channel: messages land in the `outbox_messages` table instead of leaving.

The embedded default, so a demo sends somewhere visible (and a test can read what was sent).
The dedupe key is unique in the table and the insert ignores a duplicate, so sending the same
message twice leaves one row and returns the same provider id (`outbox:<row id>`); the first
content stored wins.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.sql.expression import Executable

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
        self._insert: Executable | None = None
        self._find: Executable | None = None

    async def send(self, msg: OutgoingMessage) -> SendResult:
        return await asyncio.to_thread(self.write, msg)

    def send_sync(self, msg: OutgoingMessage) -> SendResult:
        return self.write(msg)

    def write(self, msg: OutgoingMessage) -> SendResult:
        """Insert the message unless its dedupe key is there already; return the row's id."""
        headers = dict(msg.headers)
        if msg.unsubscribe_url:
            headers["List-Unsubscribe"] = f"<{msg.unsubscribe_url}>"
        row = {
            "dedupe_key": msg.dedupe_key,
            "customer_id": msg.customer_id,
            "channel": msg.channel,
            "address": msg.to,
            "subject": msg.subject,
            "body_text": msg.text,
            "body_html": msg.html,
            "headers": headers,
        }
        try:
            with self.engine.begin() as conn:
                insert, find = self._statements(conn)
                # RETURNING yields the new row's id, or nothing when the key was there already.
                row_id = conn.execute(insert, row).scalar_one_or_none()
                inserted = row_id is not None
                if row_id is None:
                    row_id = conn.execute(find, {"key": msg.dedupe_key}).scalar_one()
        except (DataError, IntegrityError) as exc:  # a value the table cannot hold
            raise PermanentSendError(f"outbox refused the message: {exc.orig}") from exc
        except DBAPIError as exc:  # the database is down, locked, or the connection dropped
            raise TransientSendError(f"outbox database error: {exc.orig}") from exc
        return SendResult(
            provider_message_id=f"outbox:{row_id}",
            detail={"outbox_id": row_id, "inserted": inserted},
        )

    def _statements(self, conn: Connection) -> tuple[Executable, Executable]:
        """The insert and the look-up, built once (the engine has one database), executed with
        parameter dicts: no statement to build and no cache key to compute per message."""
        if self._insert is None or self._find is None:
            t = table_of(OutboxMessageRow)
            self._insert = (
                insert_for(conn, t)
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(t.c.id)
            )
            self._find = select(t.c.id).where(t.c.dedupe_key == bindparam("key"))
        return self._insert, self._find
