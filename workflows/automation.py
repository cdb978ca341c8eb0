"""AutomationWorkflow: one run of a scheduled automation (points expiry, tier review, tag
expiry, churn scan, lead SLA, date events, KPI digest), started by a Temporal Schedule,
by `crmflow schedules trigger` or by a backfill.

The run is "as of" the time the schedule meant it for (Temporal's
`TemporalScheduledStartTime`, so a backfilled day runs as that day), and its run date is
that time's date in the schedule's zone. The workflow only sequences activities: it opens
the run (resuming an unfinished attempt of the same date at its step), runs each step of the
automation — each a long activity that commits chunk by chunk and heartbeats — and closes
the run with its counts, or as failed with the reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from crmflow.contracts.automations import (
        AUTOMATION_BEGIN,
        AUTOMATION_FINISH,
        AUTOMATION_STEP,
        STEPS,
        AutomationInput,
        BeginRequest,
        FinishRequest,
        RunStart,
        RunSummary,
        StepRequest,
        StepResult,
        add_counts,
    )

SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
QUICK = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=20,
)


def _scheduled_time() -> datetime | None:
    try:
        return workflow.info().typed_search_attributes.get(SCHEDULED_START)
    except (KeyError, TypeError, ValueError):
        return None


@workflow.defn
class AutomationWorkflow:
    def __init__(self) -> None:
        self._step: str | None = None
        self._counts: dict[str, float] = {}

    @workflow.query
    def progress(self) -> dict[str, object]:
        return {"step": self._step, "counts": dict(self._counts)}

    @workflow.run
    async def run(self, inp: AutomationInput) -> RunSummary:
        as_of = inp.as_of or _scheduled_time() or workflow.now()
        start = await workflow.execute_activity(
            AUTOMATION_BEGIN,
            BeginRequest(input=inp, as_of=as_of, workflow_id=workflow.info().workflow_id),
            result_type=RunStart,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=QUICK,
        )
        steps = list(STEPS[inp.automation])
        if "activate" in steps and not workflow.patched("points-activate"):
            steps.remove("activate")  # a run recorded before pending points existed
        if start.resumed and start.step in steps:
            steps = steps[steps.index(start.step) :]
        try:
            for step in steps:
                self._step = step
                done = await workflow.execute_activity(
                    AUTOMATION_STEP,
                    StepRequest(run_id=start.run_id, step=step, input=inp),
                    result_type=StepResult,
                    start_to_close_timeout=timedelta(hours=12),
                    heartbeat_timeout=timedelta(seconds=inp.heartbeat_seconds),
                    retry_policy=STEP_RETRY,
                )
                add_counts(self._counts, done.counts)
        except ActivityError as exc:
            reason = str(exc.cause or exc)
            await workflow.execute_activity(
                AUTOMATION_FINISH,
                FinishRequest(run_id=start.run_id, error=reason[:2000]),
                result_type=RunSummary,
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=QUICK,
            )
            raise ApplicationError(
                f"{inp.automation} for {start.run_date} failed at step {self._step}: {reason}",
                non_retryable=True,
            ) from exc
        self._step = None
        return await workflow.execute_activity(
            AUTOMATION_FINISH,
            FinishRequest(run_id=start.run_id),
            result_type=RunSummary,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=QUICK,
        )
