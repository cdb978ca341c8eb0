"""Notices to staff (project teams, sales managers): not marketing, so no consent, quiet
hours or caps. Each goes out per recipient through

- the `outbox` channel always: one row per notice and recipient, under a dedupe key that is
  unique in the table, so a retried activity leaves one row;
- the `email` channel as well when SMTP is configured. The outbox row doubles as the
  e-mail's ledger: it is written after the server accepted the e-mail, and an e-mail whose
  row exists is not sent again. A crash between the two re-sends it with the same
  Message-ID (derived from the same key), which receivers recognise. A recipient the mail
  server refuses for good is noted in the row's headers and does not hold up the rest;
- every team chat configured (`activities.team_chat`: WeCom and DingTalk group robots,
  Slack). A chat is a room, not a person: a notice sent to several people with the same
  text (an escalation to the owner and the PM, a digest to a list) is posted once. Each
  post is recorded in the outbox as a row of its own (channel `wecom_robot`,
  `dingtalk_robot` or `slack`, no address: the robot's URL is a secret), written after the
  robot accepted it, and a post whose row exists is not made again — robots take no
  idempotency key, so this ledger is what keeps a retried activity from posting twice. A
  chat that refuses or stays unreachable after its retries is noted in the notice's row
  (`X-Crmflow-Chat-<channel>`), logged and counted (`crmflow_staff_notices_total`); it never
  fails the notice: the outbox and the e-mail have it whole.

A notice to nobody (no recipient known) still lands in the outbox, so it is visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from sqlalchemy import Engine, select

from activities.channels import Channel, OutgoingMessage, PermanentSendError
from activities.channels.base import TransientSendError
from activities.channels.outbox import OutboxChannel
from activities.team_chat import TEAM_CHATS
from crmflow.metrics import record_staff_notice
from store.models import OutboxMessageRow

log = logging.getLogger(__name__)


def chat_key(chat: str, key: str, to: str | None, subject: str, text: str) -> str:
    """The ledger key of one post to `chat`: the notice's key without its recipient, and
    the text, so the same notice to several people is one post."""
    base = key
    if to and key.casefold().endswith(":" + to.casefold()):
        base = key[: -len(to) - 1]
    digest = hashlib.sha256(f"{base}\n{subject}\n{text}".encode()).hexdigest()[:24]
    return f"chat:{chat}:{base[:180]}:{digest}"


class StaffNotices:
    def __init__(self, engine: Engine, channels: dict[str, Channel]) -> None:
        self.engine = engine
        self.channels = channels
        self.outbox = OutboxChannel(engine)
        self.chats = {name: c for name, c in channels.items() if name in TEAM_CHATS}

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
        leaves = (email is not None and to is not None) or bool(self.chats)
        if leaves and await asyncio.to_thread(self._recorded, key):
            return  # sent and recorded by an earlier attempt
        for name, chat in self.chats.items():
            headers[f"X-Crmflow-Chat-{name}"] = await self._post(name, chat, key, to, subject, text)
        if email is not None and to is not None:
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
                record_staff_notice("email", "sent")
            except PermanentSendError as exc:
                headers["X-Crmflow-Email-Error"] = str(exc)[:500]
                record_staff_notice("email", "failed")
            except TransientSendError:
                record_staff_notice("email", "retried")
                raise
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
        record_staff_notice("outbox", "sent")

    async def _post(
        self, name: str, chat: Channel, key: str, to: str | None, subject: str, text: str
    ) -> str:
        """Post the notice to one team chat unless it was posted already; what happened, in
        words for the notice's row (never the robot's URL)."""
        ledger = chat_key(name, key, to, subject, text)
        if await asyncio.to_thread(self._recorded, ledger):
            return "sent"
        msg = OutgoingMessage(dedupe_key=ledger, channel=name, subject=subject, text=text)
        try:
            await chat.send(msg)
        except (PermanentSendError, TransientSendError) as exc:
            kind = "refused" if isinstance(exc, PermanentSendError) else "unreachable"
            log.warning("staff notice %s: team chat %s %s: %s", key, name, kind, exc)
            record_staff_notice(name, "failed")
            return f"{kind}: {exc}"[:500]
        await self.outbox.send(
            msg.model_copy(update={"headers": {"X-Crmflow-Notice-Key": key[:200]}})
        )
        record_staff_notice(name, "sent")
        return "sent"
