"""Every workflow class a crmflow worker runs."""

from workflows.automation import AutomationWorkflow
from workflows.journey import JourneyWorkflow
from workflows.kpi_snapshot import KpiSnapshotWorkflow
from workflows.project import ProjectWorkflow
from workflows.segment_entry import SegmentEntryWorkflow

WORKFLOWS: list[type] = [
    KpiSnapshotWorkflow,
    ProjectWorkflow,
    JourneyWorkflow,
    SegmentEntryWorkflow,
    AutomationWorkflow,
]
