"""Health red / amber / green with reasons as time passes, and what is due next."""

from __future__ import annotations

from datetime import UTC, date, datetime

from projects.health import due_next, health, late_days, status_report
from projects.models import Team, check_template
from projects.plan import WorkCalendar
from projects.state import (
    ProjectState,
    RiskChange,
    RiskInput,
    add_risk,
    check_item,
    close_risk,
    complete_milestone,
    new_project,
    sign_off,
    update_risk,
)
from rules.source import parse_yaml

TEMPLATE = """\
template: t
title: T
stages:
  - id: build
    name: Build
    duration: 5
    checklist:
      - {id: spec, title: Spec written, owner: business_owner, due: start}
  - id: launch
    name: Launch
    duration: 2
    depends_on: [build]
    gates:
      - {id: launch-ok, name: Launch approval, at: start, sign_off: [executive_sponsor]}
milestones:
  - {id: built, name: Build done, stage: build}
  - {id: live, name: Live, stage: launch}
health:
  late_red_after_days: 2
  slip_red_after_days: 10
"""
TEAM = Team.model_validate(
    {
        "people": [
            {"name": "Pat", "email": "pat@example.com", "roles": ["project_manager"]},
            {"name": "Sam", "email": "sam@example.com", "roles": ["executive_sponsor"]},
            {"name": "Bo", "email": "bo@example.com", "roles": ["business_owner"]},
        ]
    }
)
START = date(2025, 3, 3)  # Monday; build runs to Friday 7th, launch Mon 10th - Tue 11th


def make() -> ProjectState:
    t = check_template(parse_yaml(TEMPLATE, "t.yaml"))
    return new_project("p", "P", t, {}, TEAM, None, START, datetime(2025, 3, 1, tzinfo=UTC))


def noon(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 12, tzinfo=UTC)


def test_late_days_count_working_days() -> None:
    cal = WorkCalendar()
    fri = date(2025, 3, 7)
    assert late_days(cal, fri, fri) == 0
    assert late_days(cal, fri, date(2025, 3, 9)) == 0  # the weekend does not count
    assert late_days(cal, fri, date(2025, 3, 10)) == 1
    assert late_days(cal, fri, date(2025, 3, 12)) == 3


def test_health_goes_amber_then_red_as_a_milestone_gets_late() -> None:
    s = make()
    check_item(s, "spec", "Bo", noon(date(2025, 3, 3)))
    assert health(s, noon(date(2025, 3, 7))).status == "green"
    h = health(s, noon(date(2025, 3, 10)))
    assert h.status == "amber"
    assert [(r.status, r.kind, r.ref, r.message) for r in h.reasons] == [
        (
            "amber",
            "milestone",
            "built",
            "milestone 'Build done' (due 2025-03-07) is 1 working day late",
        ),
        (
            "amber",
            "slip",
            "p",
            "forecast finish 2025-03-12 is 1 working day past baseline 1 "
            "(2025-03-11); critical path: build → launch",
        ),
    ]
    h = health(s, noon(date(2025, 3, 11)))
    assert h.status == "amber"  # two days late: still amber (late_red_after_days: 2)
    assert [(r.status, r.kind) for r in h.reasons] == [
        ("amber", "milestone"),
        ("amber", "gate"),
        ("amber", "slip"),
    ]
    assert h.reasons[0].message == "milestone 'Build done' (due 2025-03-07) is 2 working days late"
    h = health(s, noon(date(2025, 3, 12)))
    assert h.status == "red"
    assert (h.reasons[0].status, h.reasons[0].ref) == ("red", "built")
    assert h.reasons[0].message == "milestone 'Build done' (due 2025-03-07) is 3 working days late"
    # done: build finished today, so launch (and its gate) move on; the slip stays
    complete_milestone(s, "built", "Pat", noon(date(2025, 3, 12)))
    h = health(s, noon(date(2025, 3, 12)))
    assert [(r.status, r.kind) for r in h.reasons] == [("amber", "slip")]
    assert h.reasons[0].message.startswith("forecast finish 2025-03-14 is 3 working days past")


def test_gate_waiting_and_item_overdue() -> None:
    s = make()
    h = health(s, noon(date(2025, 3, 4)))
    assert [(r.status, r.kind, r.message) for r in h.reasons] == [
        (
            "amber",
            "slip",
            "forecast finish 2025-03-12 is 1 working day past baseline 1 "
            "(2025-03-11); critical path: build → launch",
        ),
        (
            "amber",
            "item",
            "item 'Spec written' (business_owner, due 2025-03-03) is 1 working day late",
        ),
    ]
    check_item(s, "spec", "Bo", noon(date(2025, 3, 3)))
    complete_milestone(s, "built", "Pat", noon(date(2025, 3, 7)))
    h = health(s, noon(date(2025, 3, 13)))  # the launch gate was due Monday 10th
    gate = [r for r in h.reasons if r.kind == "gate"]
    assert [(r.status, r.message) for r in gate] == [
        (
            "red",
            "gate 'Launch approval' waiting for executive_sponsor (due 2025-03-10) is 3 "
            "working days late",
        )
    ]
    sign_off(s, "launch-ok", "Sam", noon(date(2025, 3, 13)))
    assert not [r for r in health(s, noon(date(2025, 3, 13))).reasons if r.kind == "gate"]


def test_open_risks_by_severity() -> None:
    s = make()
    now = noon(date(2025, 3, 3))
    check_item(s, "spec", "Bo", now)
    add_risk(s, RiskInput(title="Vendor slow", owner="Pat", severity="medium"), "Pat", now)
    assert health(s, now).status == "green"
    add_risk(s, RiskInput(title="Data quality", owner="Bo", severity="high"), "Pat", now)
    h = health(s, now)
    assert (h.status, h.reasons[0].message) == (
        "amber",
        "open high risk R2 'Data quality' (owner Bo)",
    )
    update_risk(s, "R2", RiskChange(severity="critical"), "Pat", now)
    assert health(s, now).status == "red"
    close_risk(s, "R2", "Pat", now, comment="vendor cleaned the data")
    assert health(s, now).status == "green"


def test_due_next_in_date_order() -> None:
    s = make()
    now = noon(date(2025, 3, 4))
    got = [(d.kind, d.id, d.due, d.owners, d.late_days) for d in due_next(s, now, k=3)]
    assert got == [
        ("item", "spec", date(2025, 3, 3), ["business_owner"], 1),
        ("milestone", "built", date(2025, 3, 7), ["project_manager"], 0),
        ("gate", "launch-ok", date(2025, 3, 10), ["executive_sponsor"], 0),
    ]
    assert [d.id for d in due_next(s, now, k=10)] == ["spec", "built", "launch-ok", "live"]


def test_status_report_plan_against_actual() -> None:
    s = make()
    check_item(s, "spec", "Bo", noon(date(2025, 3, 4)))
    r = status_report(s, noon(date(2025, 3, 5)), k=2)
    build = r.stages[0]
    assert (build.status, build.planned_start, build.actual_start, build.baseline_finish) == (
        "in_progress",
        date(2025, 3, 4),
        date(2025, 3, 4),
        date(2025, 3, 7),
    )
    assert (build.items_done, build.items_total, build.critical) == (1, 1, True)
    assert r.forecast_finish == date(2025, 3, 12)
    assert r.baseline == 1 and r.baseline_finish == date(2025, 3, 11)
    assert [m.id for m in r.milestones] == ["built", "live"]
    assert r.gates[0].still_needed == {"executive_sponsor": 1}
    assert len(r.due_next) == 2
    assert r.health.status == "amber"
    assert r.model_dump(mode="json")["today"] == "2025-03-05"
