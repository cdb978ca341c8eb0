"""Activities of ProjectWorkflow: send reminder and escalation notices, measure the KPIs.

Notices go out per recipient (the team file's e-mail addresses) through the channels:
- the `outbox` channel always: one row per notice and recipient, dedupe key
  `project:<notice key>:<e-mail>`. The key is unique in the table and a duplicate insert is
  ignored, so an activity retried, or a workflow that sends again after a worker restart
  (it records a notice as sent only once the activity returned), leaves one row;
- the `email` channel as well when SMTP is configured. The outbox row doubles as the e-mail's
  ledger: it is written after the server accepted the e-mail, and an e-mail whose row exists
  is not sent again. A crash between the two re-sends it with the same Message-ID (derived
  from the same dedupe key), which receivers recognise. A recipient the mail server refuses
  for good is noted in the row's headers and does not hold up the rest.

A notice without recipients (nobody on the team holds the role) still lands in the outbox,
addressed to nobody, so it is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select
from temporalio import activity

from activities.channels import Channel, OutgoingMessage, PermanentSendError, build_channels
from activities.channels.outbox import OutboxChannel
from crmflow.settings import Settings
from projects.reminders import Notice, Recipient
from store import project_kpis
from store.models import OutboxMessageRow
from workflows.project import (
    MEASURE_PROJECT_KPIS,
    SEND_PROJECT_NOTICES,
    KpiMeasurement,
    KpiMeasureRequest,
    NoticeBatch,
)


def message_key(notice: Notice, recipient: Recipient | None) -> str:
    """The channel dedupe key of one notice to one recipient."""
    who = recipient.email.casefold() if recipient else "nobody"
    return f"project:{notice.key}:{who}"[:250]


class ProjectActivities:
    """Bound to one engine and the worker's channels."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings | None = None,
        channels: dict[str, Channel] | None = None,
    ) -> None:
        self.engine = engine
        if channels is None:
            channels = build_channels(settings or Settings(), engine)
        self.channels = channels
        self.outbox = OutboxChannel(engine)

    def _recorded(self, key: str) -> bool:
        t = OutboxMessageRow.__table__
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.id).where(t.c.dedupe_key == key)).first() is not None

    async def _deliver(self, batch: NoticeBatch, notice: Notice, to: Recipient | None) -> None:
        key = message_key(notice, to)
        headers = {
            "X-Crmflow-Project": batch.project_id,
            "X-Crmflow-Notice": notice.key,
            "X-Crmflow-Level": notice.level,
            "X-Crmflow-Due": notice.due.isoformat(),
            "X-Crmflow-Scheduled-At": notice.send_at.isoformat(),
            "X-Crmflow-Workflow-Time": batch.at.isoformat(),
        }
        email = self.channels.get("email")
        if email is not None and to is not None:
            if self._recorded(key):
                return  # sent and recorded by an earlier attempt
            try:
                result = await email.send(
                    OutgoingMessage(
                        dedupe_key=key,
                        channel="email",
                        to=to.email,
                        subject=notice.subject,
                        text=notice.text,
                    )
                )
                headers["X-Crmflow-Email"] = result.provider_message_id
            except PermanentSendError as exc:
                headers["X-Crmflow-Email-Error"] = str(exc)[:500]
        await self.outbox.send(
            OutgoingMessage(
                dedupe_key=key,
                channel="outbox",
                to=to.email if to else None,
                subject=notice.subject,
                text=notice.text,
                headers=headers,
                data={"project_id": batch.project_id, "roles": notice.to_roles},
            )
        )

    @activity.defn(name=SEND_PROJECT_NOTICES)
    async def send_notices(self, batch: NoticeBatch) -> list[str]:
        """Send every notice to each recipient; return the notice keys now sent."""
        for notice in batch.notices:
            targets: list[Recipient | None] = [*notice.recipients] or [None]
            for to in targets:
                await self._deliver(batch, notice, to)
        return [n.key for n in batch.notices]

    @activity.defn(name=MEASURE_PROJECT_KPIS)
    def measure_kpis(self, req: KpiMeasureRequest) -> KpiMeasurement:
        with self.engine.connect() as conn:
            before = project_kpis.measure(conn, req.metrics, req.before_from, req.before_to)
            after = project_kpis.measure(conn, req.metrics, req.after_from, req.after_to)
        return KpiMeasurement(before=before, after=after)

    def all(self) -> list[Callable[..., Any]]:
        return [self.send_notices, self.measure_kpis]
