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


@pytest.fixture
def files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings for commands that read files only: no database is opened."""
    monkeypatch.setenv("CRMFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    monkeypatch.setenv("CRMFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    return tmp_path


def test_dry_run_explains_every_rule(files_only: Path) -> None:
    ev = files_only / "event.json"
    ev.write_text(
        json.dumps(
            {
                "event_id": "try-2",
                "customer_id": "C9",
                "type": "purchase",
                "occurred_at": "2026-11-22T10:00:00+08:00",
                "properties": {"amount": 300.0},
            }
        )
    )
    result = runner.invoke(app, ["rules", "test", EXAMPLES, str(ev), "--json"])
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)["events"][0]
    by = {r["rule"]: r for r in done["rules"]}
    assert len(by) == 11 and not (files_only / "never.db").exists()
    assert by["earn-on-purchase"]["status"] == "fired"
    assert by["welcome-bonus"] == {
        "rule": "welcome-bonus",
        "file": "10-points.yaml",
        "priority": 90,
        "status": "not_listening",
        "reason": "listens to sign_up, not purchase",
        "false_condition": None,
    }
    assert by["birthday-month"]["reason"] == (
        "when.all[0]: birthday_month == true was false: birthday_month is missing"
    )
    spend = by["upgrade-on-spend"]["false_condition"]["branches"][0]
    assert spend["path"] == "when.any[0].all[1]" and spend["values"] == {"spend_365d": 300.0}
    assert done["facts"]["spend_365d"] == 300.0 and done["facts"]["event.type"] == "purchase"
    table = runner.invoke(app, ["rules", "test", EXAMPLES, str(ev)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "2 of 11 rule(s) fire" in table.output
    assert "not listening" in table.output and "condition false" in table.output
    assert 'when.all[0]: event.type != purchase was false: event.type = "purchase"' in (
        table.output
    )
    assert "when.any[1]: spend_90d >= 3000 was false: spend_90d = 300.0" in table.output


JOURNEY_RULE = (
    "rules:\n  - name: hello\n    on: sign_up\n    then:\n      - enroll_journey: welcom\n"
)


def test_validate_checks_journey_names_with_the_journeys_folder(files_only: Path) -> None:
    journeys = str(REPO / "examples/journeys")
    ok = runner.invoke(app, ["rules", "validate", EXAMPLES, "--journeys", journeys, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["warnings"] == []
    bad = rules_dir(files_only, JOURNEY_RULE)
    result = runner.invoke(app, ["rules", "validate", str(bad), "--journeys", journeys])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "rules.yaml:5" in said
    assert (
        "enroll_journey: journey 'welcom' does not exist; journeys: birthday, "
        "points-expiring, welcome, winback" in said
    )
    deploy = runner.invoke(app, ["rules", "deploy", str(bad), "--journeys", journeys, "--json"])
    assert deploy.exit_code == 1 and json.loads(deploy.stdout)["errors"][0]["line"] == 5


def test_validate_without_the_journeys_warns_that_names_were_not_checked(files_only: Path) -> None:
    bad = rules_dir(files_only, JOURNEY_RULE)
    result = runner.invoke(app, ["rules", "validate", str(bad)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "warning: journey names were not checked (no journeys were given): welcom" in said
    assert "--journeys DIR checks them" in said
    data = json.loads(runner.invoke(app, ["rules", "validate", str(bad), "--json"]).stdout)
    assert data["warnings"] == ["journey names were not checked (no journeys were given): welcom"]


def test_a_broken_journey_in_the_folder_is_reported_with_its_line(files_only: Path) -> None:
    folder = files_only / "journeys"
    folder.mkdir()
    for p in (REPO / "examples/journeys").glob("*.yaml"):
        (folder / p.name).write_text(p.read_text())
    welcome = folder / "welcome.yaml"
    welcome.write_text(welcome.read_text().replace("entry: rule", "entry: rul"))
    result = runner.invoke(app, ["rules", "validate", EXAMPLES, "--journeys", str(folder)])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert f"{welcome}:7" in said
    assert "enroll_journey" not in said  # its name still counts: no second complaint


def test_validate_refuses_an_undeclared_event_type(files_only: Path) -> None:
    bad = rules_dir(files_only, "rules:\n  - name: r\n    on: signup\n    then: [{add_tag: x}]\n")
    result = runner.invoke(app, ["rules", "validate", str(bad), "--json"])
    assert result.exit_code == 1
    (error,) = json.loads(result.stdout)["errors"]
    assert error["line"] == 3
    assert error["message"].startswith(
        "on: event type 'signup' is not declared in event_types in program.yaml; "
        "declared: purchase, refund, sign_up, sign_in"
    )


def test_journeys_sent_as_texts_are_checked_as_the_folder_is(files_only: Path) -> None:
    """The API's shape of the same service: journeys by file name, beside the rule files."""
    from crmflow.services import rules as service

    program = (REPO / "examples/program.yaml").read_text()
    journeys = {p.name: p.read_text() for p in (REPO / "examples/journeys").glob("*.yaml")}
    rules = {"r.yaml": JOURNEY_RULE}
    with pytest.raises(service.RulesInvalid) as caught:
        service.validate(service.RulesTexts(program=program, files=rules, journeys=journeys))
    (problem,) = caught.value.problems
    assert problem.field == "r.yaml:5" and "journey 'welcom' does not exist" in problem.reason
    journeys["welcome.yaml"] = journeys["welcome.yaml"].replace("entry: rule", "entry: rul")
    fixed = {"r.yaml": JOURNEY_RULE.replace("welcom\n", "welcome\n")}
    with pytest.raises(service.RulesInvalid) as caught:
        service.validate(service.RulesTexts(program=program, files=fixed, journeys=journeys))
    assert [p.field for p in caught.value.problems] == ["journeys/welcome.yaml:7"]
    summary = service.validate(service.RulesTexts(program=program, files=fixed))
    assert summary.warnings == ["journey names were not checked (no journeys were given): welcome"]
