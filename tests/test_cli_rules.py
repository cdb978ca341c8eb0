"""`crmflow rules …` and `crmflow events process` as a marketer runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crmflow.cli import app
from tests.conftest import REPO
from tests.rules_helpers import rules_dir

runner = CliRunner()
EXAMPLES = str(REPO / "examples/rules")


@pytest.fixture
def env(cli_env: Path) -> Path:
    return cli_env


def test_validate_the_examples() -> None:
    result = runner.invoke(app, ["rules", "validate", EXAMPLES, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] and len(data["rules"]) == 11
    assert data["rules"][0]["priority"] >= data["rules"][-1]["priority"]


def test_validate_reports_file_line_and_expectation(tmp_path: Path) -> None:
    bad = rules_dir(
        tmp_path,
        "rules:\n"
        "  - name: one\n"
        "    on: purchase\n"
        "    when: spend_12m > 5\n"
        "    then: [{set_tier: diamond}]\n"
        "  - name: one\n"
        "    then: [{award_points: 'event.amount *'}]\n",
    )
    result = runner.invoke(app, ["rules", "validate", str(bad)])
    assert result.exit_code == 1
    out = result.output
    assert "rules.yaml:4" in out and "unknown fact 'spend_12m'" in out
    assert "rules.yaml:5" in out and "tier 'diamond' is not defined" in out
    assert "rules.yaml:6" in out and "duplicate rule name 'one'" in out
    assert "rules.yaml:7" in out and "does not parse" in out
    as_json = runner.invoke(app, ["rules", "validate", str(bad), "--json"])
    errors = json.loads(as_json.stdout)["errors"]
    assert {e["line"] for e in errors} == {4, 5, 6, 7}


def test_schema_is_json_schema_for_both_files() -> None:
    rules = json.loads(runner.invoke(app, ["rules", "schema"]).stdout)
    assert rules["title"] == "crmflow rule file"
    assert "Rule" in rules["$defs"]
    program = json.loads(runner.invoke(app, ["rules", "schema", "--program"]).stdout)
    assert "tiers" in program["properties"]


def test_dry_run_explains_and_changes_nothing(env: Path) -> None:
    runner.invoke(app, ["customers", "import", str(REPO / "examples/customers.jsonl")])
    ev = env / "event.json"
    ev.write_text(
        json.dumps(
            {
                "event_id": "try-1",
                "customer_id": "C0002",
                "type": "purchase",
                "occurred_at": "2026-11-22T10:00:00+08:00",
                "properties": {"amount": 1500.0},
            }
        )
    )
    result = runner.invoke(
        app, ["rules", "test", EXAMPLES, str(ev), "--customer", "C0002", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    fired = {f["rule"]: f for f in data["events"][0]["fired"]}
    assert set(fired) >= {"earn-on-purchase", "big-spender"}
    assert fired["big-spender"]["because"]["event.amount"] == 1500.0
    earn = next(c for c in data["events"][0]["changes"] if c["kind"] == "earn")
    assert earn["points"] == 1500.0
    shown = json.loads(runner.invoke(app, ["customer", "show", "C0002", "--json"]).stdout)
    assert shown["points_balance"] == 0 and shown["history"] == []  # nothing was written


def test_deploy_versions_then_process_pending(env: Path) -> None:
    result = runner.invoke(app, ["events", "import", str(REPO / "examples/events.jsonl"), "--json"])
    report = json.loads(result.stdout)
    assert report["unprocessed"] == report["stored"] > 0
    deployed = json.loads(runner.invoke(app, ["rules", "deploy", EXAMPLES, "--json"]).stdout)
    assert deployed["new"] is True
    again = json.loads(runner.invoke(app, ["rules", "deploy", EXAMPLES, "--json"]).stdout)
    assert again == deployed | {"new": False}
    versions = json.loads(runner.invoke(app, ["rules", "versions", "--json"]).stdout)
    assert [v["version"] for v in versions] == [deployed["version"]]
    assert versions[0]["active"] is True
    processed = json.loads(runner.invoke(app, ["events", "process", "--json"]).stdout)
    assert processed["processed"] == report["stored"]
    assert processed["version"] == deployed["version"]
    nothing = json.loads(runner.invoke(app, ["events", "process", "--json"]).stdout)
    assert nothing["processed"] == 0


def test_an_import_that_races_another_says_what_to_do(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crmflow.event_chunks
    from crmflow.processing import ConcurrentProcessing

    def raced(*_a: object, **_k: object) -> None:
        raise ConcurrentProcessing("1 of 166 events were processed meanwhile")

    runner.invoke(app, ["rules", "deploy", EXAMPLES])
    monkeypatch.setattr(crmflow.event_chunks, "process_chunk", raced)
    result = runner.invoke(app, ["events", "import", str(REPO / "examples/events.jsonl")])
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "processed meanwhile" in said
    assert "Import the file again" in said
