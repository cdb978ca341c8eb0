"""Activities of ProjectWorkflow: send reminder and escalation notices, measure the KPIs.

Notices go out per recipient (the team file's e-mail addresses) as staff notices
(`activities.staff_notices`): always to the outbox, and by e-mail when SMTP is configured,
under the dedupe key `project:<notice key>:<e-mail>`, so a retried activity, or a workflow
that sends again after a worker restart (it records a notice as sent only once the activity
returned), leaves one row and one e-mail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from temporalio import activity

from activities.channels import Channel, build_channels
from activities.staff_notices import StaffNotices
from crmflow.contracts.projects import (
    MEASURE_PROJECT_KPIS,
    SEND_PROJECT_NOTICES,
    KpiMeasurement,
    KpiMeasureRequest,
    NoticeBatch,
)
from crmflow.settings import Settings
from projects.reminders import Notice, Recipient
from store import project_kpis


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
        self.notices = StaffNotices(engine, channels)

    async def _deliver(self, batch: NoticeBatch, notice: Notice, to: Recipient | None) -> None:
        headers = {
            "X-Crmflow-Project": batch.project_id,
            "X-Crmflow-Notice": notice.key,
            "X-Crmflow-Level": notice.level,
            "X-Crmflow-Due": notice.due.isoformat(),
            "X-Crmflow-Scheduled-At": notice.send_at.isoformat(),
            "X-Crmflow-Workflow-Time": batch.at.isoformat(),
        }
        await self.notices.send(
            message_key(notice, to),
            to.email if to else None,
            notice.subject,
            notice.text,
            headers=headers,
            data={"project_id": batch.project_id, "roles": notice.to_roles},
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
