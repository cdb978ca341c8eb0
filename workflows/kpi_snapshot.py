"""KpiSnapshotWorkflow: compute the programme's figures at the workflow's own `now`."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from crmflow.contracts.kpi import KPI_SNAPSHOT, KpiRequest, KpiSnapshot


@workflow.defn
class KpiSnapshotWorkflow:
    @workflow.run
    async def run(self, window_days: int = 30) -> KpiSnapshot:
        req = KpiRequest(as_of=workflow.now(), window_days=window_days)
        return await workflow.execute_activity(
            KPI_SNAPSHOT,
            req,
            result_type=KpiSnapshot,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1), maximum_attempts=5),
        )
