"""Activities of AutomationWorkflow: open (or resume) a run, work through a step chunk by
chunk, close the run.

A step commits each chunk in its own transaction together with the run's cursor, and
heartbeats after it. A worker that dies mid-step loses only its open chunk: the retried
activity (on any worker) reads the cursor from the database and goes on from the last
committed chunk, so totals come out exact. Events a chunk produces go through the ingest
path in the chunk's transaction (rules and journeys see them, once: their ids are made of
the run date and the customer). Staff notices are sent before their chunk is recorded, under
keys that make a resend a no-op.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError
from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.channels import Channel
from activities.staff_notices import StaffNotices
from automations.digest import render_digest_html
from automations.models import KpiDigestParams, ModelFitParams, parse_params
from crmflow.contracts.automations import (
    AUTOMATION_BEGIN,
    AUTOMATION_FINISH,
    AUTOMATION_STEP,
    STEPS,
    BeginRequest,
    FinishRequest,
    RunStart,
    RunSummary,
    StepRequest,
    StepResult,
    add_counts,
)
from crmflow.customer_model import scheduled_fit
from crmflow.event_chunks import store_events
from crmflow.processing import active_pack
from crmflow.settings import Settings
from store.automation_runs import (
    begin_run,
    finish_run,
    lock_run,
    previous_as_of,
    record_chunk,
)
from store.automations import STEP_FUNCTIONS, Chunk, Notice, RunContext
from store.db import utcnow
from store.kpi_digest import digest_figures

# OS errors that retrying cannot cure: the directory is not there to be made, not
# writable, or not a directory. A full disk or an I/O error may pass, and is retried.
PERMANENT_OS_ERRORS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.ELOOP,
    }
)


def permanent(message: str, kind: str) -> ApplicationError:
    """An error no retry can cure: the run fails at once and says why (its run row and
    `crmflow schedules runs` show the message)."""
    return ApplicationError(message, type=kind, non_retryable=True)


def run_date_of(as_of: datetime, timezone: str) -> str:
    """The run date: `as_of`'s calendar date in the schedule's time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise permanent(
            f"timezone {timezone!r} is not a time zone; expected e.g. Asia/Shanghai",
            "BadSchedule",
        ) from None
    return as_of.astimezone(zone).date().isoformat()


class AutomationActivities:
    def __init__(self, engine: Engine, settings: Settings, channels: dict[str, Channel]) -> None:
        self.engine = engine
        self.settings = settings
        self.notices = StaffNotices(engine, channels)

    def all(self) -> list[Callable[..., Any]]:
        return [self.begin, self.step, self.finish]

    @activity.defn(name=AUTOMATION_BEGIN)
    def begin(self, req: BeginRequest) -> RunStart:
        if req.input.automation not in STEPS:
            raise ApplicationError(
                f"unknown automation {req.input.automation!r}", non_retryable=True
            )
        with self.engine.begin() as conn:
            return begin_run(
                conn,
                schedule=req.input.schedule,
                automation=req.input.automation,
                run_date=run_date_of(req.as_of, req.input.timezone),
                as_of=req.as_of,
                workflow_id=req.workflow_id,
            )

    @activity.defn(name=AUTOMATION_FINISH)
    def finish(self, req: FinishRequest) -> RunSummary:
        with self.engine.begin() as conn:
            row = finish_run(conn, req.run_id, req.error)
        return RunSummary(
            schedule=row.schedule,
            automation=row.automation,
            run_date=row.run_date,
            attempt=row.attempt,
            status=row.status,
            counts=row.counts or {},
        )

    @activity.defn(name=AUTOMATION_STEP)
    async def step(self, req: StepRequest) -> StepResult:
        """Run one step to its end, a chunk per transaction, heartbeating after each."""
        result = StepResult()
        while True:
            chunk = await asyncio.to_thread(self._chunk, req)
            if chunk.notices:
                for n in chunk.notices:
                    await self.notices.send(
                        n.key, n.to, n.subject, n.text, html=n.html, data=n.data
                    )
                await asyncio.to_thread(self._record, req, chunk)
            if chunk.done:
                return result
            result.chunks += 1
            add_counts(result.counts, chunk.counts)
            if activity.in_activity():
                activity.heartbeat(req.step, chunk.cursor, result.chunks)

    def _context(self, conn: Any, req: StepRequest, run: Any) -> RunContext:
        inp = req.input
        try:
            params = parse_params(inp.automation, inp.params)
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise permanent(
                f"schedule {inp.schedule!r} ({inp.automation}) has parameters that do not "
                f"validate: {problems}; fix the schedules file and run `crmflow schedules apply`",
                "BadSchedule",
            ) from None
        pack = active_pack(conn)
        return RunContext(
            schedule=inp.schedule,
            run_date=run.run_date,
            as_of=run.as_of,
            timezone=inp.timezone,
            params=params,
            program=pack.program if pack else None,
            since=previous_as_of(conn, inp.schedule, run.run_date),
        )

    def _chunk(self, req: StepRequest) -> Chunk:
        """One chunk in one transaction: the step's work, its events through the ingest
        path, and the run's new cursor (unless notices must go out first)."""
        with self.engine.begin() as conn:
            run = lock_run(conn, req.run_id)
            cursor = run.cursor if run.step == req.step else None
            ctx = self._context(conn, req, run)
            if req.input.automation == "kpi_digest":
                return self._digest(conn, ctx, run, req, cursor)
            if req.input.automation == "model_fit":
                return self._model_fit(conn, ctx, run, req, cursor)
            fn = STEP_FUNCTIONS[(req.input.automation, req.step)]
            try:
                chunk = fn(conn, ctx, cursor)
            except LookupError as exc:
                raise ApplicationError(str(exc), non_retryable=True) from exc
            if chunk.events:
                stored = store_events(conn, chunk.events, utcnow())
                add_counts(
                    chunk.counts,
                    {"events_stored": stored.counts.stored, "rules_fired": stored.rules_fired},
                )
            if not chunk.done and not chunk.notices:
                record_chunk(conn, run, req.step, chunk.cursor, chunk.counts)
            return chunk

    def _model_fit(
        self, conn: Any, ctx: RunContext, run: Any, req: StepRequest, cursor: str | None
    ) -> Chunk:
        """Refit the customer model and score every customer, once per run."""
        if cursor == "fitted":
            return Chunk(cursor=cursor, done=True)
        p: ModelFitParams = ctx.params
        counts = scheduled_fit(conn, ctx.program, as_of=ctx.as_of, unit=p.unit, score=p.score)
        record_chunk(conn, run, req.step, "fitted", counts)
        return Chunk(cursor="fitted", done=False, counts=counts)

    def _record(self, req: StepRequest, chunk: Chunk) -> None:
        with self.engine.begin() as conn:
            run = lock_run(conn, req.run_id)
            record_chunk(conn, run, req.step, chunk.cursor, chunk.counts)

    def _digest(
        self, conn: Any, ctx: RunContext, run: Any, req: StepRequest, cursor: str | None
    ) -> Chunk:
        """The KPI digest: figures as JSON and an HTML report in `out_dir`, e-mailed to
        `email_to` (as staff notices, keyed by schedule and date)."""
        if cursor == "written":
            return Chunk(cursor=cursor, done=True)
        p: KpiDigestParams = ctx.params
        digest = digest_figures(conn, ctx.as_of, p.window_days, ctx.run_date, ctx.program)
        out = Path(p.out_dir)
        if not out.is_absolute():
            out = self.settings.home / out
        stem = f"{ctx.schedule}-{ctx.run_date}"
        title = f"KPI digest {ctx.run_date} ({p.window_days} days)"
        html = render_digest_html(digest, title)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{stem}.json").write_text(
                json.dumps(digest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
                encoding="utf-8",
            )
            (out / f"{stem}.html").write_text(html, encoding="utf-8")
        except OSError as exc:
            message = (
                f"the report cannot be written to {out} (params.out_dir of schedule "
                f"{ctx.schedule!r}): {exc.strerror or exc}"
            )
            if exc.errno in PERMANENT_OS_ERRORS:
                raise permanent(
                    message + "; give a directory the worker may write, then apply the file",
                    "ReportNotWritable",
                ) from None
            raise ApplicationError(message, type="ReportNotWritten") from exc
        text = f"{title}: the figures are in {out / stem}.json, the report in {out / stem}.html"
        notices = [
            Notice(
                key=f"kpi_digest:{ctx.schedule}:{ctx.run_date}:{to}",
                to=to,
                subject=title,
                text=text,
                html=html,
                data={"report": str(out / f"{stem}.html")},
            )
            for to in p.email_to
        ]
        chunk = Chunk(
            cursor="written",
            done=False,
            counts={"reports_written": 1, "emails": len(notices)},
            notices=notices,
        )
        if not notices:
            record_chunk(conn, run, req.step, chunk.cursor, chunk.counts)
        return chunk
