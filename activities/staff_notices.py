"""Notices to staff (project teams, sales managers): not marketing, so no consent, quiet
hours or caps. Each goes out per recipient through

- the `outbox` channel always: one row per notice and recipient, under a dedupe key that is
  unique in the table, so a retried activity leaves one row;
- the `email` channel as well when SMTP is configured. The outbox row doubles as the
  e-mail's ledger: it is written after the server accepted the e-mail, and an e-mail whose
  row exists is not sent again. A crash between the two re-sends it with the same
  Message-ID (derived from the same key), which receivers recognise. A recipient the mail
  server refuses for good is noted in the row's headers and does not hold up the rest.

A notice to nobody (no recipient known) still lands in the outbox, so it is visible.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from activities.channels import Channel, OutgoingMessage, PermanentSendError
from activities.channels.outbox import OutboxChannel
from store.models import OutboxMessageRow


class StaffNotices:
    def __init__(self, engine: Engine, channels: dict[str, Channel]) -> None:
        self.engine = engine
        self.channels = channels
        self.outbox = OutboxChannel(engine)

    def _recorded(self, key: str) -> bool:
        t = OutboxMessageRow.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.id).where(t.c.dedupe_key == key)).first() is not None

    async def send(
        self,
        key: str,
        to: str | None,
        subject: str,
        text: str,
        *,
        html: str | None = None,
        headers: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Send one notice to one recipient (`to`: an e-mail address, or None)."""
        headers = dict(headers or {})
        email = self.channels.get("email")
        if email is not None and to is not None:
            if self._recorded(key):
                return  # sent and recorded by an earlier attempt
            try:
                result = await email.send(
                    OutgoingMessage(
                        dedupe_key=key,
                        channel="email",
                        to=to,
                        subject=subject,
                        text=text,
                        html=html,
                    )
                )
                headers["X-Crmflow-Email"] = result.provider_message_id
            except PermanentSendError as exc:
                headers["X-Crmflow-Email-Error"] = str(exc)[:500]
        await self.outbox.send(
            OutgoingMessage(
                dedupe_key=key,
                channel="outbox",
                to=to,
                subject=subject,
                text=text,
                html=html,
                headers=headers,
                data=data or {},
            )
        )
