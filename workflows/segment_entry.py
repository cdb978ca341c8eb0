"""SegmentEntryWorkflow: one scheduled evaluation of a journey's segment (the Temporal
Schedule `journey-segment:<name>` starts it on the journey's cron expression)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from crmflow.contracts.journeys import JOURNEY_ENTER_SEGMENT, SegmentRequest


@workflow.defn(name="SegmentEntryWorkflow")
class SegmentEntryWorkflow:
    @workflow.run
    async def run(self, journey: str) -> dict[str, Any]:
        now = workflow.now()
        # the run key: a retried or replayed run queues nobody twice
        req = SegmentRequest(journey=journey, run=now.strftime("%Y%m%dT%H%M"), at=now)
        result: dict[str, Any] = await workflow.execute_activity(
            JOURNEY_ENTER_SEGMENT,
            req,
            result_type=dict,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5), maximum_attempts=10),
        )
        return result
