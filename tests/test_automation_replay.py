"""AutomationWorkflow histories recorded before a change still replay against the workflow as
it is now: a schedule's run that was in flight across a deploy must not fail its workflow
task with a non-determinism error.

The `*_before.json` histories were recorded with the workflow as it was before the
operations work (date events, points expiry and the KPI digest from examples/schedules.yaml
on the example customers, and a digest that failed at its step); `*_after.json` with the
workflow as it is now. Record new ones with the code that is to be guarded, before changing
it: `python tests/histories/record_automation.py <checkout> <out dir> <tag>` (with
`git worktree add` for the old code; see docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.automation import AutomationWorkflow

HISTORIES = Path(__file__).parent / "histories"
RECORDED = sorted(HISTORIES.glob("automation_*.json"))


def test_histories_from_before_and_after_are_kept() -> None:
    names = {p.stem for p in RECORDED}
    for kind in ("date_events", "points_expiry", "kpi_digest", "kpi_digest_failed"):
        assert f"automation_{kind}_before" in names
        assert f"automation_{kind}_after" in names


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_a_recorded_run_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"automation-{path.stem}", path.read_text())
    replayer = Replayer(workflows=[AutomationWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
