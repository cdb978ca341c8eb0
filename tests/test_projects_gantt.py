"""The Gantt chart: planned, actual and baseline bars, critical stages, milestones, today."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from pathlib import Path

from projects.gantt import CHAR, LABEL, gantt_svg, project_html, project_svg
from projects.models import Team, check_template, load_holidays, load_team, load_template
from projects.plan import compute_plan
from projects.state import ProjectState, check_item, complete_milestone, new_project, sign_off
from rules.source import parse_yaml

SVG = "{http://www.w3.org/2000/svg}"
TEMPLATE = """\
template: t
title: T
stages:
  - id: a
    name: Design <& review>
    duration: 3
    checklist: [{id: x, title: X, owner: crm_admin}]
  - {id: b, name: Build, duration: 2, depends_on: [{stage: a, lag: 3}]}
  - {id: c, name: Docs, duration: 1, depends_on: [a]}
milestones:
  - {id: done, name: Done, stage: b}
  - {id: designed, name: Designed, stage: a}
"""
TEAM = Team.model_validate(
    {
        "people": [
            {"name": "Pat", "email": "pat@example.com", "roles": ["project_manager", "crm_admin"]},
            {"name": "Sam", "email": "sam@example.com", "roles": ["executive_sponsor"]},
        ]
    }
)


def elements(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def test_svg_has_planned_actual_baseline_milestones_and_today() -> None:
    t = check_template(parse_yaml(TEMPLATE, "t.yaml"))
    s = new_project(
        "p", "Pilot & co", t, {}, TEAM, None, date(2025, 3, 3), datetime(2025, 3, 1, tzinfo=UTC)
    )
    # a starts on the 4th; it is in progress until its milestone is done
    check_item(s, "x", "Pat", datetime(2025, 3, 4, 12, tzinfo=UTC))
    svg = project_svg(s, datetime(2025, 3, 6, 12, tzinfo=UTC))
    planned = elements(svg, "planned")
    assert len(planned) == 3
    assert len(elements(svg, "critical")) == 2  # a and b; c has float
    assert len(elements(svg, "baseline")) == 3
    (actual,) = elements(svg, "actual")
    assert "".join(actual.itertext()) == "actual 2025-03-04 to in progress"
    day = float(planned[2].get("width") or 0)  # c is one day long
    assert float(actual.get("width") or 0) == 3 * day  # 4th to today, the 6th
    diamonds = elements(svg, "milestone")
    assert len(diamonds) == 2
    assert [d.get("fill") for d in diamonds] == ["white", "white"]
    (today,) = elements(svg, "today")
    assert today.get("x1") == today.get("x2")
    # the plan's first day is at least 3 days after the chart's left edge
    first_bar = float(planned[0].get("x") or 0)
    assert first_bar > LABEL
    texts = " ".join("".join(e.itertext()) for e in ET.fromstring(svg).iter(f"{SVG}text"))
    assert "Design <& review> ★" in texts  # escaped in the file, intact once parsed
    assert "Design &lt;&amp; review&gt;" in svg
    assert "Pilot &amp; co" in svg


def test_bar_lengths_follow_calendar_days() -> None:
    t = check_template(parse_yaml(TEMPLATE, "t.yaml"))
    plan = compute_plan(t, {}, date(2025, 3, 3))
    svg = gantt_svg(plan, date(2025, 3, 3))
    a, b, c = elements(svg, "planned")
    # a: Mon 3rd - Wed 5th; lag Thu, Fri, Mon; b: Tue 11th - Wed 12th; c: Thu 6th
    day = float(c.get("width") or 0)
    assert float(a.get("width") or 0) == 3 * day
    assert float(b.get("width") or 0) == 2 * day
    assert float(b.get("x") or 0) - float(a.get("x") or 0) == 8 * day
    assert elements(svg, "baseline") == [] and elements(svg, "actual") == []


def test_html_page_embeds_the_svg() -> None:
    t = check_template(parse_yaml(TEMPLATE, "t.yaml"))
    s = new_project(
        "p", "Pilot", t, {}, TEAM, None, date(2025, 3, 3), datetime(2025, 3, 1, tzinfo=UTC)
    )
    html = project_html(s, datetime(2025, 3, 3, tzinfo=UTC))
    assert html.startswith("<!doctype html>")
    assert html.count("<svg ") == 1 and "<h1>Pilot: plan</h1>" in html


def example_late() -> tuple[ProjectState, datetime]:
    """The example rollout started on 2025-03-03 with only its first stage done, seen 449
    days later: everything still open is forecast from that day on."""
    rollout = Path(__file__).resolve().parents[1] / "examples" / "rollout"
    t0 = datetime(2025, 3, 3, 2, tzinfo=UTC)
    s = new_project(
        "acme-crm",
        "acme-crm",
        load_template(rollout / "crm-rollout.yaml"),
        None,
        load_team(rollout / "team.yaml"),
        load_holidays(rollout / "holidays.yaml"),
        date(2025, 3, 3),
        t0,
    )
    for item, who in [
        ("stakeholder-interviews", "Lily Zhao"),
        ("smart-goals", "Lily Zhao"),
        ("kpi-baseline", "Marco Liu"),
        ("budget", "Grace Chen"),
    ]:
        check_item(s, item, who, t0)
    complete_milestone(s, "kick-off", "Peter Wang", t0)
    for who in ("Grace Chen", "Lily Zhao"):
        sign_off(s, "requirements-approval", who, t0)
    assert s.stages["requirements"].actual_finish == date(2025, 3, 3)
    return s, datetime(2026, 5, 26, 4, tzinfo=UTC)


def test_a_late_project_draws_forecast_dependencies_and_gates() -> None:
    s, now = example_late()
    svg = project_svg(s, now)
    stages = s.plan.stages
    # every stage still open is forecast after today, beside its plan and baseline
    forecast = elements(svg, "forecast")
    assert len(forecast) == len(stages) - 1  # requirements has finished
    assert all("forecast: " in "".join(f.itertext()) for f in forecast)
    (today,) = elements(svg, "today")
    # (the today line is drawn mid-day: half a day, at most 12 px, after the day starts)
    assert all(float(f.get("x") or 0) >= float(today.get("x1") or 0) - 12 for f in forecast)
    assert len(elements(svg, "baseline")) == len(stages)
    arrows = elements(svg, "dependency")
    assert len(arrows) == sum(len(x.depends_on) for x in stages)
    assert any("after a lag of 5 working days" in "".join(a.itertext()) for a in arrows)
    gates = elements(svg, "gate")
    assert len(gates) == len(s.plan.gates)
    passed = [g for g in gates if "passed" in "".join(g.itertext())]
    assert len(passed) == 1 and "Requirements approval" in "".join(passed[0].itertext())


def test_month_labels_do_not_overlap() -> None:
    s, now = example_late()
    for seen in (now, datetime(2025, 3, 20, tzinfo=UTC)):  # 15 months wide; a few weeks
        months = elements(project_svg(s, seen), "month")
        spans = [
            (float(m.get("x") or 0), float(m.get("x") or 0) + len(m.text or "") * CHAR)
            for m in months
        ]
        assert len(spans) >= 3
        assert all(b[0] > a[1] for a, b in itertools.pairwise(spans))
        texts = [m.text for m in months]
        assert texts[0] == "Mar 2025"  # the year on the first label, not a sliver of Feb
        assert "Jan 2026" in texts or seen.year == 2025
