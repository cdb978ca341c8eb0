"""Project operations: each refused with a reason a project manager understands, or applied
with who and when; stage progress derived from checks, sign-offs and milestones."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from projects.models import MigrationSummary, Team, check_template
from projects.state import (
    ProjectRuleError,
    ProjectState,
    RiskChange,
    RiskInput,
    add_risk,
    check_item,
    close_risk,
    complete_milestone,
    finish_stage,
    new_project,
    rebaseline,
    record_migration_check,
    reopen_risk,
    severity_of,
    sign_off,
    start_stage,
    still_needed,
    update_risk,
    validate_sign_off,
)
from rules.source import parse_yaml

TEMPLATE = """\
template: t
title: T
parameters:
  legacy: {type: boolean, default: true}
stages:
  - id: req
    name: Requirements
    duration: 3
    owner: business_owner
    checklist:
      - {id: goals, title: SMART goals agreed, owner: business_owner}
      - {id: notes, title: Notes filed, owner: crm_admin, required: false}
    gates:
      - id: req-ok
        name: Requirements approval
        sign_off: [executive_sponsor, {role: business_owner, count: 2}]
  - id: config
    name: Configuration
    duration: 2
    depends_on: [req]
    owner: crm_admin
    checklist:
      - {id: tiers, title: Tiers configured, owner: crm_admin}
    gates:
      - {id: design-ok, name: Design sign-off, at: start, sign_off: [it_lead]}
  - id: migrate
    name: Data migration
    duration: 2
    when: {legacy: true}
    depends_on: [req]
    gates:
      - {id: migration-ok, name: Migration sign-off, sign_off: [it_lead]}
  - id: golive
    name: Go-live
    duration: 1
    depends_on: [config, migrate]
milestones:
  - {id: live, name: Go-live, stage: golive}
migration:
  gate: migration-ok
  thresholds: {min_fill_rate: 0.9, max_duplicate_rate: 0.05}
"""

TEAM = Team.model_validate(
    {
        "timezone": "Asia/Shanghai",
        "people": [
            {"name": "Pat", "email": "pat@example.com", "roles": ["project_manager"]},
            {"name": "Sam", "email": "sam@example.com", "roles": ["executive_sponsor"]},
            {"name": "Bo", "email": "bo@example.com", "roles": ["business_owner"]},
            {"name": "Bea", "email": "bea@example.com", "roles": ["business_owner"]},
            {"name": "Ivy", "email": "ivy@example.com", "roles": ["it_lead", "crm_admin"]},
        ],
    }
)
START = date(2025, 3, 3)  # Monday
T0 = datetime(2025, 3, 3, 2, tzinfo=UTC)  # 10:00 in Shanghai


def make(legacy: bool = True) -> ProjectState:
    t = check_template(parse_yaml(TEMPLATE, "t.yaml"))
    return new_project("p1", "Pilot", t, {"legacy": legacy}, TEAM, None, START, T0)


def at(days: int) -> datetime:
    return T0 + timedelta(days=days)


def refused(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(ProjectRuleError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return str(info.value)


def test_new_project_has_plan_and_first_baseline() -> None:
    s = make()
    assert [(x.id, x.start, x.finish) for x in s.plan.stages] == [
        ("req", date(2025, 3, 3), date(2025, 3, 5)),
        ("config", date(2025, 3, 6), date(2025, 3, 7)),
        ("migrate", date(2025, 3, 6), date(2025, 3, 7)),
        ("golive", date(2025, 3, 10), date(2025, 3, 10)),
    ]
    assert [(b.number, b.reason, b.plan.finish) for b in s.baselines] == [
        (1, "initial plan", date(2025, 3, 10))
    ]
    assert set(s.items) == {"goals", "notes", "tiers"}
    assert set(s.gates) == {"req-ok", "design-ok", "migration-ok"}


def test_sign_off_by_the_wrong_role_is_refused_with_the_reason() -> None:
    s = make()
    check_item(s, "goals", "Bo", at(0))
    before = s.model_dump()
    assert refused(sign_off, s, "req-ok", "Pat", at(0)) == (
        "Pat holds project_manager; gate 'Requirements approval' needs executive_sponsor "
        "(1 more sign-off), business_owner (2 more sign-offs)"
    )
    assert s.model_dump() == before  # a refused operation changes nothing
    assert refused(sign_off, s, "req-ok", "Nobody", at(0)) == (
        "'Nobody' is not on the project's team; team: Pat, Sam, Bo, Bea, Ivy"
    )
    assert refused(sign_off, s, "req-ok", "Bo", at(0), role="executive_sponsor") == (
        "Bo does not hold executive_sponsor (holds business_owner)"
    )


def test_end_gate_waits_for_required_items_then_records_every_sign_off() -> None:
    s = make()
    assert refused(sign_off, s, "req-ok", "Sam", at(0)) == (
        "gate 'Requirements approval' cannot be signed yet: required checklist items are "
        "still open: 'SMART goals agreed' (business_owner)"
    )
    item = check_item(s, "goals", "bo@EXAMPLE.com", at(0), note="in the wiki")
    assert (item.by, item.at, item.note) == ("Bo", at(0), "in the wiki")
    assert s.stages["req"].actual_start == date(2025, 3, 3)
    rec = sign_off(s, "req-ok", "Sam", at(1), comment="go")
    assert (rec.person, rec.role, rec.at, rec.comment) == ("Sam", "executive_sponsor", at(1), "go")
    assert refused(sign_off, s, "req-ok", "Sam", at(1)) == (
        "Sam already signed gate 'Requirements approval' (as executive_sponsor on 2025-03-04)"
    )
    sign_off(s, "req-ok", "Bo", at(1))
    assert still_needed(s, "req-ok") == {"business_owner": 1}
    assert s.gates["req-ok"].passed_at is None
    assert s.stages["req"].actual_finish is None
    sign_off(s, "req-ok", "Bea", at(2))
    assert s.gates["req-ok"].passed_at == at(2)
    assert [(x.person, x.role) for x in s.gates["req-ok"].sign_offs] == [
        ("Sam", "executive_sponsor"),
        ("Bo", "business_owner"),
        ("Bea", "business_owner"),
    ]
    # the stage finished on time (the optional item does not hold it up)
    assert s.stages["req"].actual_finish == date(2025, 3, 5)
    assert refused(sign_off, s, "req-ok", "Ivy", at(2)) == (
        "gate 'Requirements approval' already has all its sign-offs (passed on 2025-03-05)"
    )


def test_a_stage_finishing_late_pushes_the_plan() -> None:
    s = make()
    check_item(s, "goals", "Bo", at(0))
    for who in ("Sam", "Bo", "Bea"):
        sign_off(s, "req-ok", who, at(7))  # Monday 10th, three working days late
    assert s.stages["req"].actual_finish == date(2025, 3, 10)
    cfg = s.plan.stage("config")
    assert cfg is not None and (cfg.start, cfg.finish) == (date(2025, 3, 11), date(2025, 3, 12))
    assert s.plan.finish == date(2025, 3, 13)
    assert s.baselines[0].plan.finish == date(2025, 3, 10)  # the baseline stays


def finish_requirements(s: ProjectState, when: datetime) -> None:
    check_item(s, "goals", "Bo", when)
    for who in ("Sam", "Bo", "Bea"):
        sign_off(s, "req-ok", who, when)
    assert s.stages["req"].actual_finish is not None


def test_start_gate_holds_the_stage() -> None:
    s = make()
    finish_requirements(s, at(2))
    assert refused(check_item, s, "tiers", "Ivy", at(3)) == (
        "stage 'Configuration' waits for its start gate 'Design sign-off' "
        "(needs it_lead (1 more sign-off))"
    )
    assert refused(start_stage, s, "config", "Pat", at(3)) == (
        "stage 'Configuration' waits for its start gate 'Design sign-off' "
        "(needs it_lead (1 more sign-off))"
    )
    sign_off(s, "design-ok", "Ivy", at(3))
    assert s.stages["config"].actual_start == date(2025, 3, 6)
    check_item(s, "tiers", "Ivy", at(4))
    assert s.stages["config"].actual_finish == date(2025, 3, 7)


def test_migration_gate_waits_for_a_passing_check() -> None:
    s = make()
    finish_requirements(s, at(2))
    assert refused(sign_off, s, "migration-ok", "Ivy", at(3)) == (
        "gate 'Migration sign-off' cannot be signed yet: no migration check has been "
        "recorded; run the migration check on the source data first"
    )
    bad = MigrationSummary(
        checked_at=at(3),
        source="legacy.csv",
        rows_in=40,
        rows_out=36,
        rejected=4,
        fill_rates={"phone": 0.85, "email": 0.95},
        duplicate_rows=1,
        invalid_rows=0,
        amount_source=Decimal("100.00"),
        amount_mapped=Decimal("100.00"),
    )
    assert record_migration_check(s, bad) == [
        "fill rate of phone is 85.0%, below 90.0%",
        "rejected rate is 10.0%, above 2.0%",
    ]
    assert refused(sign_off, s, "migration-ok", "Ivy", at(3)) == (
        "gate 'Migration sign-off' cannot be signed yet: the latest migration check "
        "(2025-03-06, legacy.csv) does not meet the thresholds: fill rate of phone is 85.0%, "
        "below 90.0%; rejected rate is 10.0%, above 2.0%"
    )
    good = bad.model_copy(update={"rows_out": 40, "rejected": 0, "fill_rates": {"phone": 0.95}})
    assert record_migration_check(s, good) == []
    assert validate_sign_off(s, "migration-ok", "Ivy", at(3))[1] == "it_lead"
    sign_off(s, "migration-ok", "Ivy", at(3))
    assert s.stages["migrate"].actual_finish == date(2025, 3, 6)


def test_left_out_stage_things_say_why() -> None:
    s = make(legacy=False)
    assert "migrate" not in s.stages
    assert refused(sign_off, s, "migration-ok", "Ivy", at(3)) == (
        "gate 'migration-ok' belongs to stage 'migrate', which this project leaves out "
        "(legacy is False, not True)"
    )
    assert refused(check_item, s, "goal", "Bo", at(0)) == (
        "no checklist item 'goal' (did you mean 'goals'?)"
    )


def test_milestone_done_once() -> None:
    s = make()
    # (recorded as a project from before the controls would have: see test_projects_controls)
    m = complete_milestone(s, "live", "Pat", at(7), note="smooth", strict=False)
    assert (m.done, m.by, m.at) == (True, "Pat", at(7))
    assert refused(complete_milestone, s, "live", "Sam", at(8)) == (
        "milestone 'Go-live' was already done by Pat on 2025-03-10"
    )
    # go-live has only the milestone: done means finished
    assert s.stages["golive"].actual_finish == date(2025, 3, 10)


def test_explicit_start_and_finish_need_a_manager_and_a_complete_stage() -> None:
    s = make()
    assert refused(finish_stage, s, "req", "Bea", at(2)) == (
        "stage 'Requirements' cannot finish: required items open: 'SMART goals agreed'; "
        "gates not passed: 'Requirements approval'"
    )
    assert refused(start_stage, s, "golive", "Bo", at(2)) == (
        "Bo holds business_owner; starting stage 'Go-live' needs project_manager or "
        "executive_sponsor"
    )
    assert refused(start_stage, s, "golive", "Pat", at(2), on=date(2025, 3, 9)) == (
        "the start date 2025-03-09 is in the future (today is 2025-03-05)"
    )
    assert refused(start_stage, s, "golive", "Pat", at(2), on=date(2025, 3, 4)) == (
        "starting 'Go-live' would start stage 'Go-live', which waits for 'Configuration', "
        "'Data migration' to finish; to start it anyway, give the reason for the override"
    )
    start_stage(s, "golive", "Pat", at(2), on=date(2025, 3, 4), override="dress rehearsal")
    assert s.stages["golive"].override == "dress rehearsal"
    assert [(o.by, o.action, o.reason) for o in s.overrides] == [
        ("Pat", "start golive", "dress rehearsal")
    ]
    assert s.stages["golive"].actual_start == date(2025, 3, 4)
    assert refused(finish_stage, s, "golive", "Pat", at(2), on=date(2025, 3, 3)) == (
        "stage 'Go-live' started on 2025-03-04; it cannot finish on 2025-03-03"
    )
    finish_stage(s, "golive", "Pat", at(2))
    assert s.stages["golive"].actual_finish == date(2025, 3, 5)


def test_risks_add_update_close_with_history() -> None:
    s = make()
    r = add_risk(
        s,
        RiskInput(
            title="Legacy data quality",
            owner="ivy@example.com",
            probability="high",
            impact="medium",
            mitigation="trial migration",
        ),
        "Pat",
        at(0),
    )
    assert (r.id, r.owner, r.severity, r.status) == ("R1", "Ivy", "high", "open")
    r2 = add_risk(s, RiskInput(title="Vendor late", owner="Pat", severity="low"), "Sam", at(0))
    assert r2.id == "R2"
    assert refused(add_risk, s, RiskInput(title="x", owner="Pat"), "Pat", at(0)) == (
        "a risk needs a severity (low, medium, high, critical), or both probability and "
        "impact (low, medium, high)"
    )
    update_risk(s, "r1", RiskChange(impact="high", comment="worse than thought"), "Ivy", at(1))
    assert (r.impact, r.severity) == ("high", "critical")
    assert r.history[-1].changes == {"impact": "medium → high", "severity": "high → critical"}
    assert refused(update_risk, s, "R1", RiskChange(impact="high"), "Ivy", at(1)) == (
        "nothing to change on risk R1"
    )
    close_risk(s, "R1", "Pat", at(2), comment="cleaned")
    assert r.status == "closed"
    assert [h.action for h in r.history] == ["added", "updated", "closed"]
    assert refused(close_risk, s, "R1", "Pat", at(2)) == "risk R1 is already closed"
    assert refused(update_risk, s, "R1", RiskChange(title="y"), "Pat", at(2)) == (
        "risk R1 is closed; reopen it to change it"
    )
    reopen_risk(s, "R1", "Pat", at(3))
    assert r.status == "open"
    assert refused(close_risk, s, "R9", "Pat", at(2)) == "no risk 'R9'; risks: R1, R2"


def test_severity_matrix() -> None:
    assert [
        severity_of(p, i)
        for p, i in [
            ("low", "low"),
            ("low", "high"),
            ("medium", "medium"),
            ("high", "medium"),
            ("high", "high"),
        ]
    ] == ["low", "medium", "medium", "high", "critical"]


def test_rebaseline_keeps_the_old_baselines() -> None:
    s = make()
    assert refused(rebaseline, s, "Bo", at(5)) == (
        "Bo holds business_owner; re-baselining needs project_manager or executive_sponsor"
    )
    b = rebaseline(s, "Pat", at(5), reason="late start")  # Saturday 8th in Shanghai
    assert [x.number for x in s.baselines] == [1, 2]
    assert (b.by, b.reason) == ("Pat", "late start")
    # nothing started: the new baseline starts on the next working day
    assert b.plan.stages[0].start == date(2025, 3, 10)
    assert b.plan.finish == date(2025, 3, 17)
    assert s.baselines[0].plan.finish == date(2025, 3, 10)


def test_state_round_trips_through_json() -> None:
    s = make()
    check_item(s, "goals", "Bo", at(0))
    add_risk(s, RiskInput(title="r", owner="Pat", severity="high"), "Pat", at(0))
    again = ProjectState.model_validate_json(s.model_dump_json())
    assert again == s
    assert again.work_calendar().add(START, 1) == date(2025, 3, 4)


def test_finishing_a_stage_that_had_not_started_is_held_to_its_dependencies() -> None:
    s = make()
    assert refused(finish_stage, s, "golive", "Pat", at(2)) == (
        "finishing 'Go-live' would start stage 'Go-live', which waits for 'Configuration', "
        "'Data migration' to finish; to start it anyway, give the reason for the override"
    )
    finish_stage(s, "golive", "Pat", at(2), override="soft launch, recorded late")
    assert s.stages["golive"].actual_start == s.stages["golive"].actual_finish == date(2025, 3, 5)
    assert [(o.action, o.reason) for o in s.overrides] == [
        ("finish golive", "soft launch, recorded late")
    ]
