"""`crmflow model …` refusing what it cannot do, with the reason and exit code 1, never a
traceback: no purchases to fit on, no model to show or score with, a calibration day in
the future, a date that is not one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from crmflow.cli.app import app as cli_app


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_app, list(args))


def said(result: Result) -> str:
    """The output on one line (the terminal wraps long messages)."""
    return " ".join(result.output.split())


def test_refusals_name_the_reason(engine: Engine, cli_env: Path) -> None:
    empty = run("model", "fit")
    assert empty.exit_code == 1
    assert "no 'purchase' events up to" in said(empty)
    assert "nothing to fit the model on" in said(empty)
    assert "Traceback" not in said(empty)

    shown = run("model", "show")
    assert shown.exit_code == 0 and "No customer model yet: run `crmflow model fit`" in said(shown)
    assert json.loads(run("model", "show", "--json").output) == {"active": None, "recent": []}

    score = run("model", "score")
    assert score.exit_code == 1 and "no customer model has been fitted yet" in said(score)

    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    future = run("model", "fit", "--until", tomorrow)
    assert future.exit_code == 1
    assert f"until: the calibration period cannot end in the future ({tomorrow})" in said(future)

    bad = run("model", "fit", "--until", "30/09/1997")
    assert bad.exit_code == 1
    assert "--until: expected a date as YYYY-MM-DD, got '30/09/1997'" in said(bad)

    unit = run("model", "fit", "--unit", "months")
    assert unit.exit_code == 2 and "months" in said(unit)
