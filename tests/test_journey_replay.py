"""Enrollments outlive the code: every JourneyWorkflow history kept in tests/histories/
replays against the workflow as it is now.

The histories were recorded by `tests/record_histories.py` from the example journeys
(welcome's branch, winback's split arms, goal and exit, birthday's calendar delay,
points-expiring's event entry) with the workflow of their time (`journey_v1_*`: before
typed activity calls, `@workflow.init` and the wait states; `journey_before_*`: before
the facts stayed in the store). A change that gives any of them a different sequence of
commands without a `workflow.patched()` guard fails here, before it reaches enrollments
that have been running for months. Re-record after a deliberate, guarded change with

    .venv/bin/python -m tests.record_histories tests/histories journey_vN_
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.journey import JourneyWorkflow

HISTORIES = Path(__file__).parent / "histories"
RECORDED = sorted(HISTORIES.glob("journey_*.json"))


def test_histories_cover_the_examples() -> None:
    names = {p.name for p in RECORDED}
    for journey in ("welcome", "winback", "birthday", "points-expiring"):
        assert any(f"_{journey}_" in n for n in names), journey


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_history_replays(path: Path) -> None:
    data = json.loads(path.read_text())
    wid = (
        next(
            (
                e["workflowExecutionStartedEventAttributes"].get("workflowId")
                for e in data["events"]
                if "workflowExecutionStartedEventAttributes" in e
            ),
            None,
        )
        or f"replay:{path.stem}"
    )
    history = WorkflowHistory.from_json(wid, data)
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


async def test_a_changed_command_sequence_fails_the_replay(tmp_path: Path) -> None:
    """The check can fail: a history whose first activity is another one does not replay."""
    path = HISTORIES / "journey_v1_welcome_01.json"
    text = path.read_text().replace('"journey_deliver"', '"journey_record"', 1)
    history = WorkflowHistory.from_json("replay:tampered", text)
    replayer = Replayer(workflows=[JourneyWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
