"""Every workflow class a crmflow worker runs."""

from workflows.kpi_snapshot import KpiSnapshotWorkflow

WORKFLOWS: list[type] = [KpiSnapshotWorkflow]
