"""Running projects survive a new worker: recorded ProjectWorkflow histories replay against
the current ProjectWorkflow.

`project_before_controls.json` was recorded (by `tests/record_project_histories.py`) with
the workflow as it was before issue 17's controls and notices: a back-dated example rollout
whose creation sent every overdue notice at once, an it_lead checking a business_owner item
of a later stage, go-live marked done before testing, a critical risk closed by someone who
does not own it and without a reason. The new rules and notices are behind
`workflow.patched()`, so that project replays as it ran. `project_after_controls.json` is the
same script run on the current code.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.project import CONTROLS_PATCH, NOTICES_PATCH, ProjectWorkflow

HISTORIES = Path(__file__).parent / "histories"
PATCHES = (CONTROLS_PATCH, NOTICES_PATCH)


def payloads(history_json: str) -> str:
    """Every payload of a history, decoded (update results, patch markers' ids, …)."""
    return "\n".join(
        base64.b64decode(data).decode("utf-8", "replace")
        for data in re.findall(r'"data": "([A-Za-z0-9+/=]+)"', history_json)
    )


@pytest.mark.parametrize("name", ["project_before_controls", "project_after_controls"])
async def test_a_recorded_project_replays(name: str) -> None:
    path = HISTORIES / f"{name}.json"
    raw = path.read_text(encoding="utf-8")
    history = WorkflowHistory.from_json("project-acme-crm", raw)
    text = payloads(raw)
    markers = {m for m in PATCHES if m in text}
    if name == "project_before_controls":
        # recorded before the patches: go-live was accepted before testing, and the project's
        # creation sent its overdue notices one by one
        assert markers == set()
        assert "milestone go-live done (Peter Wang)" in text
    else:
        assert markers == set(PATCHES)
    replayer = Replayer(workflows=[ProjectWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history)
    assert result.replay_failure is None
