"""Template, team and holiday files: the examples load; every problem names file and line."""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import pytest

from projects.kpi import baseline_window, review_date, review_kpis
from projects.models import (
    MigrationSummary,
    MigrationThresholds,
    check_template,
    dependency_cycle,
    included,
    load_holidays,
    load_team,
    load_template,
    migration_failures,
    resolve_params,
)
from rules.source import SourceError, SourceProblem, parse_yaml

REPO = Path(__file__).resolve().parents[1]
ROLLOUT = REPO / "examples/rollout"

BASE = """\
template: t
title: T
parameters:
  legacy: {type: boolean, default: true}
stages:
  - id: a
    name: A
    duration: 3
    gates:
      - {id: a-end, name: A approval, sign_off: [executive_sponsor]}
  - id: b
    name: B
    duration: 2
    depends_on: [a]
milestones:
  - {id: m1, name: M1, stage: b}
"""


def problems(text: str, params: dict[str, object] | None = None) -> list[SourceProblem]:
    with pytest.raises(SourceError) as info:
        check_template(parse_yaml(textwrap.dedent(text), "t.yaml"), params)
    errs = info.value.errors
    assert errs and all(e.file == "t.yaml" for e in errs)
    return errs


def one(text: str, params: dict[str, object] | None = None) -> tuple[int | None, str]:
    errs = problems(text, params)
    assert len(errs) == 1, errs
    return errs[0].line, errs[0].message


# --------------------------------------------------------------------------- examples


def test_example_template_team_and_holidays_load() -> None:
    t = load_template(ROLLOUT / "crm-rollout.yaml", {"legacy_system": "false"})
    assert [s.id for s in t.stages] == [
        "requirements",
        "vendor-selection",
        "planning",
        "configuration",
        "data-migration",
        "testing",
        "pilot",
        "waves",
        "hypercare",
    ]
    assert t.migration is not None and t.migration.gate == "migration-sign-off"
    assert t.kpis is not None and t.kpis.targets[0].metric == "repurchase_rate"
    migration = t.stage("data-migration")
    assert not included(migration, resolve_params(t, {"legacy_system": "false"}))
    assert included(migration, resolve_params(t, {}))
    team = load_team(ROLLOUT / "team.yaml")
    assert team.timezone == "Asia/Shanghai"
    amy = team.person("AMY.XU@example.com")
    assert amy is not None and amy.roles == ["crm_admin", "project_manager"]
    assert [p.name for p in team.holding("business_owner")] == ["Lily Zhao", "Marco Liu"]
    cal = load_holidays(ROLLOUT / "holidays.yaml")
    assert cal.holidays[0].date == date(2025, 1, 1)
    assert cal.holidays[0].name == "New Year's Day"
    assert date(2025, 9, 28) in {d.date for d in cal.extra_working_days}


# --------------------------------------------------------------------------- template checks


def test_unknown_dependency_names_file_line_and_a_suggestion() -> None:
    text = BASE.replace("depends_on: [a]", "depends_on: [aa]")
    assert one(text) == (14, "stage 'b' depends on unknown stage 'aa' (did you mean 'a'?)")


def test_dependency_cycle_is_named() -> None:
    text = BASE.replace("    duration: 3\n", "    duration: 3\n    depends_on: [b]\n")
    line, message = one(text)
    assert line == 9
    assert message == "dependency cycle: a → b → a (each waits for the next)"


def test_cycle_finder_on_a_longer_loop() -> None:
    graph = {"a": ["c"], "b": ["a"], "c": ["b"], "d": ["a"]}
    assert dependency_cycle(graph) == ["a", "c", "b", "a"]
    assert dependency_cycle({"a": [], "b": ["a"]}) is None


def test_self_dependency() -> None:
    text = BASE.replace("depends_on: [a]", "depends_on: [b]")
    assert one(text) == (14, "stage 'b' depends on itself")


def test_gate_role_that_is_not_a_role() -> None:
    text = BASE.replace("sign_off: [executive_sponsor]", "sign_off: [ceo]")
    line, message = one(text)
    assert line == 10
    assert message == (
        "stages.0.gates.0.sign_off.0: expected 'executive_sponsor', 'project_manager', "
        "'business_owner', 'it_lead', 'crm_admin' or 'vendor_consultant'"
    )


def test_milestone_on_unknown_stage() -> None:
    text = BASE.replace("stage: b}", "stage: c}")
    assert one(text) == (16, "milestone 'm1' is on unknown stage 'c'")


def test_duplicate_ids_across_kinds() -> None:
    text = BASE.replace("id: m1,", "id: a-end,")
    assert one(text) == (16, "id 'a-end' is used twice (first by a gate)")


def test_condition_on_undeclared_parameter_and_wrong_type() -> None:
    text = BASE.replace("    duration: 2\n", "    duration: 2\n    when: {legacy_sys: true}\n")
    line, message = one(text)
    assert line == 14
    assert message.startswith("stage 'b' tests undeclared parameter 'legacy_sys'")
    text = BASE.replace("    duration: 2\n", "    duration: 2\n    when: {legacy: 'yes'}\n")
    assert one(text) == (14, "parameter 'legacy' is a boolean; 'yes' is not")


def test_missing_field_and_bad_duration_have_lines() -> None:
    text = BASE.replace("    duration: 2\n", "    duration: 0\n")
    line, message = one(text)
    assert (line, message) == (13, "stages.1.duration: Input should be greater than or equal to 1")
    errs = problems(BASE.replace("title: T\n", ""))
    assert (errs[0].line, errs[0].message) == (1, "required field 'title' is missing")


def test_not_a_mapping() -> None:
    assert one("- a\n- b\n") == (
        1,
        "a template is a mapping (template:, stages:, …), not a list",
    )


def test_migration_gate_must_be_a_gate() -> None:
    text = BASE + "migration: {gate: b}\n"
    line, message = one(text)
    assert line == 17
    assert message == "migration gate 'b' is not a gate; expected one of: a-end"


def test_parameters_from_the_command_line() -> None:
    t = check_template(parse_yaml(BASE, "t.yaml"))
    assert resolve_params(t, {"legacy": "false"}) == {"legacy": False}
    assert resolve_params(t, None) == {"legacy": True}
    with pytest.raises(
        ValueError, match="unknown parameter 'legcy' \\(did you mean 'legacy'\\?\\)"
    ):
        resolve_params(t, {"legcy": True})
    with pytest.raises(ValueError, match="parameter 'legacy' must be a boolean, not 'maybe'"):
        resolve_params(t, {"legacy": "maybe"})
    assert one(BASE, {"legacy": 3}) == (3, "parameter 'legacy' must be a boolean, not 3")


def test_escalation_levels_in_order() -> None:
    text = BASE + textwrap.dedent("""\
        reminders:
          escalation:
            - {to: project_manager, after_days: 3}
            - {to: owner, after_days: 1}
        """)
    line, message = one(text)
    assert line == 18
    assert message == "reminders.escalation: escalation levels need after_days in increasing order"


# --------------------------------------------------------------------------- team, holidays


def test_team_errors(tmp_path: Path) -> None:
    f = tmp_path / "team.yaml"
    f.write_text(
        textwrap.dedent("""\
        people:
          - {name: Pat, email: pat@example.com, roles: [project_manager]}
          - {name: Sam, email: sam-at-example, roles: [executive_sponsor, chef]}
        """)
    )
    with pytest.raises(SourceError) as info:
        load_team(f)
    got = [(e.file, e.line, e.message) for e in info.value.errors]
    assert got[0][:2] == (str(f), 3)
    assert got[0][2].startswith("people.1.email: String should match pattern")
    assert got[1][:2] == (str(f), 3)
    assert got[1][2].startswith("people.1.roles.1: expected 'executive_sponsor'")


def test_team_needs_a_manager_and_a_sponsor(tmp_path: Path) -> None:
    f = tmp_path / "team.yaml"
    f.write_text("people:\n  - {name: Pat, email: pat@example.com, roles: [it_lead]}\n")
    with pytest.raises(SourceError) as info:
        load_team(f)
    assert str(info.value) == (
        f"{f}:1: people: nobody holds project_manager or executive_sponsor; escalations need a "
        "project_manager and an executive_sponsor"
    )


def test_holidays_errors(tmp_path: Path) -> None:
    f = tmp_path / "holidays.yaml"
    f.write_text("holidays:\n  - 2025-01-01\n  - {date: 2025-02-30, name: nope}\n")
    with pytest.raises(SourceError) as info:
        load_holidays(f)
    (err,) = info.value.errors
    assert (err.line, err.message) == (
        3,
        "not a valid date: day is out of range for month; expected YYYY-MM-DD",
    )
    f.write_text("workdays: [mon, tue, funday]\n")
    with pytest.raises(SourceError) as info:
        load_holidays(f)
    assert info.value.errors[0].line == 1
    f.write_text("")
    with pytest.raises(SourceError, match="a holidays file is a mapping"):
        load_holidays(f)


def test_migration_thresholds_reasons() -> None:
    summary = MigrationSummary(
        checked_at="2025-05-01T00:00:00Z",
        source="legacy.csv",
        rows_in=100,
        rows_out=98,
        rejected=2,
        fill_rates={"phone": 0.93, "email": 0.99},
        duplicate_rows=0,
        invalid_rows=5,
        amount_source="1000.00",
        amount_mapped="990.00",
    )
    t = MigrationThresholds(fill_rates={"phone": 0.95}, max_invalid_rate=0.05)
    assert migration_failures(summary, t) == [
        "fill rate of phone is 93.0%, below 95.0%",
        "amounts differ by 10.00 (source 1000.00, migrated 990.00), above the tolerance 0.01",
    ]
    loose = t.model_copy(update={"fill_rates": {"phone": 0.9}, "amount_tolerance": 10})
    assert migration_failures(summary, loose) == []


def test_kpi_review_against_smart_targets() -> None:
    t = load_template(ROLLOUT / "crm-rollout.yaml")
    assert t.kpis is not None
    before = {"repurchase_rate": 0.20, "active_members": 1000, "journey_conversion": 0.05}
    after = {
        "repurchase_rate": 0.23,
        "active_members": 1100,
        "new_members": 2500,
        "journey_conversion": 0.06,
    }
    got = [(r.metric, r.met, r.note) for r in review_kpis(t.kpis, before, after)]
    assert got == [
        ("repurchase_rate", True, "increase of 15.0% against 10.0%"),
        ("active_members", False, "increase of 10.0% against 15.0%"),
        ("new_members", True, "2500 against at least 2000"),
        ("journey_conversion", False, "increase of 0.01 against 0.02"),
    ]
    assert review_date(t.kpis, date(2025, 6, 17)) == date(2025, 8, 12)
    assert baseline_window(t.kpis, date(2025, 6, 17)) == (date(2025, 4, 22), date(2025, 6, 17))
    missing = review_kpis(t.kpis, {}, {"active_members": 5})
    assert [(r.met, r.note) for r in missing][:2] == [
        (None, "not measured"),
        (None, "not measured"),
    ]
