"""The journey file models: every node type, entries, re-entry, durations, the JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from journeys.models import (
    CHANNELS,
    NODE_TYPES,
    BranchNode,
    DelayNode,
    EventEntry,
    ExitNode,
    Journey,
    MessageNode,
    ReentryPolicy,
    SegmentEntry,
    SplitNode,
    UpdateNode,
    WaitForNode,
    edges,
)
from rules.models import AddTag, AwardPoints, Compare
from rules.source import yaml_load

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples/journeys").glob("*.yaml"))

EXIT = {"type": "exit"}


def journey(**overrides: Any) -> dict[str, Any]:
    """A small valid journey as data; `overrides` replace top-level fields."""
    data: dict[str, Any] = {
        "journey": "test",
        "entry": "rule",
        "start": "hello",
        "nodes": {
            "hello": {
                "type": "message",
                "channel": "email",
                "template": {"subject": "Hi", "text": "Hello {{ customer.name }}"},
                "next": "done",
            },
            "done": EXIT,
        },
    }
    data.update(overrides)
    return data


def node(data: dict[str, Any]) -> Any:
    """One node, validated in a journey."""
    return Journey.model_validate(journey(nodes={"n": data, "done": EXIT}, start="n")).nodes["n"]


def errors_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        Journey.model_validate(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def node_errors(data: dict[str, Any]) -> str:
    return "\n".join(f"{loc}: {msg}" for loc, msg in errors_of(journey(nodes={"n": data})))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_journeys(path: Path) -> None:
    parsed = Journey.model_validate(yaml_load(path.read_text()))
    assert parsed.journey == path.stem
    assert any(isinstance(n, ExitNode) for n in parsed.nodes.values())


def test_three_examples() -> None:
    assert [p.stem for p in EXAMPLES] == ["birthday", "points-expiring", "welcome", "winback"]


def test_defaults() -> None:
    j = Journey.model_validate(journey())
    assert j.entry == "rule" and j.entry_kind() == "rule"
    assert j.reentry == "never"
    assert j.channels == list(CHANNELS) == ["email", "sms", "wechat", "webhook", "outbox"]
    assert j.frequency_cap_policy == "skip"
    assert j.rate_limit_per_minute is None and j.goal is None and j.exit_on == []


def test_every_node_type() -> None:
    data = yaml_load(
        """
journey: all-types
entry: {event: sign_up, when: event.channel == app}
reentry: {after_days: 30, max_times: 3}
goal: {event: purchase, when: event.amount >= 100, within_days: 30}
exit_on: [unsubscribed]
channels: [email, sms]
frequency_cap_policy: defer
rate_limit_per_minute: 100
start: m
nodes:
  m:
    type: message
    channel: email
    template:
      subject: S
      text: T
      html: <p>H</p>
      variants: {zh-CN: {subject: 主题, text: 正文}}
    next: d
  d: {type: delay, duration: 3d, next: w}
  w: {type: wait_for, event: purchase, when: event.amount > 0, timeout: 7d,
      on_event: b, on_timeout: s}
  b:
    type: branch
    cases: [{when: tier == gold, next: u}]
    default: s
  s:
    type: split
    variants: [{name: a, weight: 1, next: u}, {name: b, weight: 2, next: x}]
    holdout: {weight: 1}
  u: {type: update, effects: [add_tag: vip, {award_points: 10}], next: x}
  x: {type: exit, description: the end}
"""
    )
    j = Journey.model_validate(data)
    kinds = {nid: type(n) for nid, n in j.nodes.items()}
    assert kinds == {
        "m": MessageNode,
        "d": DelayNode,
        "w": WaitForNode,
        "b": BranchNode,
        "s": SplitNode,
        "u": UpdateNode,
        "x": ExitNode,
    }
    assert set(NODE_TYPES) == {n.type for n in j.nodes.values()}
    assert isinstance(j.entry, EventEntry) and isinstance(j.entry.when, Compare)
    assert isinstance(j.reentry, ReentryPolicy) and j.reentry.max_times == 3
    assert j.goal is not None and j.goal.within_days == 30
    u = j.nodes["u"]
    assert isinstance(u, UpdateNode)
    assert isinstance(u.effects[0], AddTag) and u.effects[0].add_tag.tag == "vip"
    assert isinstance(u.effects[1], AwardPoints)
    s = j.nodes["s"]
    assert isinstance(s, SplitNode) and s.total_weight() == 4
    m = j.nodes["m"]
    assert isinstance(m, MessageNode) and m.template.variants["zh-CN"].subject == "主题"


def test_edges() -> None:
    data = yaml_load((REPO / "examples/journeys/winback.yaml").read_text())
    j = Journey.model_validate(data)
    assert edges(j.nodes["offer_test"]) == [
        (("variants", 0, "next"), "discount_email"),
        (("variants", 1, "next"), "points_email"),
    ]
    assert edges(j.nodes["wait_purchase"]) == [
        (("on_event",), "done"),
        (("on_timeout",), "reminder_time"),
    ]
    assert edges(j.nodes["done"]) == []


# --------------------------------------------------------------------------- entries


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("rule", "rule"),
        ({"event": "sign_up"}, "event"),
        ({"event": "purchase", "when": {"all": ["event.amount > 0", "tier == gold"]}}, "event"),
        ({"segment": "tags contains vip", "schedule": "0 9 * * 1"}, "segment"),
        ({"segment": {"any": ["tier == gold", "points_balance > 1000"]}, "once": True}, "segment"),
    ],
)
def test_entries(entry: Any, kind: str) -> None:
    assert Journey.model_validate(journey(entry=entry)).entry_kind() == kind


def test_segment_keeps_the_cron_expression() -> None:
    j = Journey.model_validate(journey(entry={"segment": "tier == gold", "schedule": "0 9 * * 1"}))
    assert isinstance(j.entry, SegmentEntry) and j.entry.schedule == "0 9 * * 1"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"segment": "tier == gold"}, "needs either a schedule or once: true"),
        ({"segment": "tier == gold", "schedule": "@daily", "once": True}, "not both"),
        ({"segment": "tier == gold", "once": False}, "needs either a schedule"),
        ("everyone", "Input should be 'rule'"),
        ({"rule": True}, "expected an entry: rule, {event"),
        ({"event": "Sign Up"}, "should match pattern"),
        ({"event": "sign_up", "extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_entries(entry: Any, message: str) -> None:
    assert any(message in msg for _, msg in errors_of(journey(entry=entry)))


@pytest.mark.parametrize(
    "reentry", ["never", {"after_days": 0}, {"after_days": 90}, {"max_times": 1}]
)
def test_reentry_policies(reentry: Any) -> None:
    Journey.model_validate(journey(reentry=reentry))


@pytest.mark.parametrize(
    ("reentry", "message"),
    [
        ("always", "Input should be 'never'"),
        ({}, "give after_days, max_times, or both"),
        ({"after_days": -1}, "greater than or equal to 0"),
        ({"max_times": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_reentry(reentry: Any, message: str) -> None:
    assert any(message in msg for _, msg in errors_of(journey(reentry=reentry)))


def test_channels_are_known_and_unique() -> None:
    assert any("Input should be 'email'" in m for _, m in errors_of(journey(channels=["fax"])))
    assert any(
        "'email' is repeated" in m for _, m in errors_of(journey(channels=["email", "email"]))
    )


def test_goal_needs_a_window() -> None:
    errs = errors_of(journey(goal={"event": "purchase"}))
    assert ("goal.within_days", "Field required") in errs


# --------------------------------------------------------------------------- nodes


def test_node_type_must_be_known() -> None:
    text = node_errors({"type": "email", "next": "done"})
    assert "expected a node with type: message, delay, wait_for, branch, split, update, exit" in (
        text
    )
    assert "expected a node with type" in node_errors({"next": "done"})


def test_node_ids_are_names() -> None:
    errs = errors_of(journey(nodes={"Hello World": EXIT}, start="Hello World"))
    assert any("should match pattern" in m for _, m in errs)


def test_unknown_node_field() -> None:
    assert "nodes.n.message.chanel: Extra inputs are not permitted" in node_errors(
        {
            "type": "message",
            "chanel": "email",
            "channel": "email",
            "template": {"text": "x"},
            "next": "done",
        }
    )


def test_message_needs_a_known_channel_a_template_and_next() -> None:
    text = node_errors({"type": "message", "channel": "fax"})
    assert "channel: Input should be 'email'" in text
    assert "template: Field required" in text and "next: Field required" in text


def test_locale_keys() -> None:
    ok = node(
        {
            "type": "message",
            "channel": "email",
            "template": {
                "text": "x",
                "variants": {
                    "zh-CN": {"text": "y"},
                    "en": {"text": "z"},
                    "zh_Hant_TW": {"text": "w"},
                },
            },
            "next": "done",
        }
    )
    assert set(ok.template.variants) == {"zh-CN", "en", "zh_Hant_TW"}
    text = node_errors(
        {
            "type": "message",
            "channel": "email",
            "template": {"text": "x", "variants": {"chinese simplified": {"text": "y"}}},
            "next": "done",
        }
    )
    assert "is not a locale" in text


@pytest.mark.parametrize(
    ("delay", "kind"),
    [
        ({"duration": "3d"}, "duration"),
        ({"duration": "P1DT12H"}, "duration"),
        ({"until_local_time": "09:30"}, "until_local_time"),
        ({"until_local_time": "10:00", "weekdays": ["mon", "fri"]}, "until_local_time"),
        ({"until_attribute": "birthday"}, "until_attribute"),
        (
            {
                "until_attribute": "points_expiry",
                "offset_days": -7,
                "at_local_time": "10:00",
                "repeat": "once",
                "if_missing": "continue",
            },
            "until_attribute",
        ),
    ],
)
def test_delay_kinds(delay: dict[str, Any], kind: str) -> None:
    parsed = node({"type": "delay", **delay, "next": "done"})
    assert isinstance(parsed, DelayNode) and parsed.kind() == kind


def test_delay_duration_as_timedelta() -> None:
    parsed = node({"type": "delay", "duration": "90m", "next": "done"})
    assert parsed.delta().total_seconds() == 5400
    assert parsed.days() == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        ({}, "exactly one of duration, until_local_time, until_attribute"),
        ({"duration": "1d", "until_local_time": "09:00"}, "(got duration, until_local_time)"),
        ({"duration": "3 days"}, "'3 days' is not a duration; expected a duration such as 3d"),
        ({"duration": "P1M"}, "months and years have no fixed length"),
        ({"duration": "0h"}, "longer than zero"),
        ({"until_local_time": "9:30"}, "is not a time of day; expected HH:MM"),
        ({"duration": "1d", "weekdays": ["mon"]}, "weekdays go with until_local_time"),
        ({"until_local_time": "09:00", "weekdays": ["mon", "mon"]}, "a day is repeated"),
        ({"until_local_time": "09:00", "weekdays": ["monday"]}, "Input should be 'mon'"),
        ({"until_local_time": "09:00", "weekdays": []}, "at least 1 item"),
        ({"duration": "1d", "offset_days": 3}, "offset_days go(es) with until_attribute"),
        ({"until_attribute": "birthday", "offset_days": 400}, "less than or equal to 365"),
        ({"until_attribute": "birth day"}, "should match pattern"),
    ],
)
def test_bad_delays(delay: dict[str, Any], message: str) -> None:
    assert message in node_errors({"type": "delay", **delay, "next": "done"})


def test_wait_for_needs_a_timeout_and_both_ways_on() -> None:
    text = node_errors({"type": "wait_for", "event": "purchase"})
    for name in ("timeout", "on_event", "on_timeout"):
        assert f"{name}: Field required" in text
    assert "is not a duration" in node_errors(
        {
            "type": "wait_for",
            "event": "purchase",
            "timeout": "forever",
            "on_event": "done",
            "on_timeout": "done",
        }
    )


def test_branch_conditions_are_rules_conditions() -> None:
    parsed = node(
        {
            "type": "branch",
            "cases": [
                {"when": "tags contains vip", "next": "done"},
                {"when": {"not": {"fact": "tier", "op": "==", "value": "gold"}}, "next": "done"},
            ],
            "default": "done",
        }
    )
    assert isinstance(parsed, BranchNode) and len(parsed.cases) == 2
    text = node_errors(
        {"type": "branch", "cases": [{"when": "tier is gold", "next": "done"}], "default": "done"}
    )
    assert "cannot read condition 'tier is gold'" in text
    assert "at least 1 item" in node_errors({"type": "branch", "cases": [], "default": "done"})


@pytest.mark.parametrize(
    ("weight", "message"),
    [(0, "greater than 0"), (-5, "greater than 0"), (float("inf"), "finite number")],
)
def test_split_weights_are_positive(weight: float, message: str) -> None:
    text = node_errors(
        {"type": "split", "variants": [{"name": "a", "weight": weight, "next": "done"}]}
    )
    assert message in text
    text = node_errors(
        {
            "type": "split",
            "variants": [{"name": "a", "weight": 1, "next": "done"}],
            "holdout": {"weight": weight},
        }
    )
    assert message in text


def test_holdout_has_no_next() -> None:
    text = node_errors(
        {
            "type": "split",
            "variants": [{"name": "a", "weight": 1, "next": "done"}],
            "holdout": {"weight": 1, "next": "done"},
        }
    )
    assert "holdout.next: Extra inputs are not permitted" in text


def test_update_uses_rules_effects() -> None:
    text = node_errors({"type": "update", "effects": [{"send_gift": "x"}], "next": "done"})
    assert "expected one effect, a mapping with one key of: add_tag" in text
    text = node_errors({"type": "update", "effects": [{"award_points": -5}], "next": "done"})
    assert "greater than 0" in text
    assert "at least 1 item" in node_errors({"type": "update", "effects": [], "next": "done"})


# --------------------------------------------------------------------------- schema


def test_json_schema() -> None:
    schema = Journey.model_json_schema(by_alias=True)
    json.dumps(schema)  # plain JSON
    defs = schema["$defs"]
    for name in (
        "MessageNode",
        "DelayNode",
        "WaitForNode",
        "BranchNode",
        "SplitNode",
        "UpdateNode",
        "ExitNode",
        "Compare",
        "AddTag",
        "EventEntry",
        "SegmentEntry",
    ):
        assert name in defs, name
    entry = schema["properties"]["entry"]["oneOf"]
    assert {"const": "rule", "type": "string"}.items() <= entry[0].items()
    assert defs["MessageNode"]["properties"]["channel"]["enum"] == list(CHANNELS)
    assert defs["DelayNode"]["properties"]["weekdays"]["anyOf"][0]["items"]["enum"][0] == "mon"
    assert set(schema["required"]) == {"journey", "entry", "start", "nodes"}


def test_journeys_import_no_store_activities_workflows_or_temporal() -> None:
    code = (
        "import sys, journeys.models, journeys.validate, journeys.interpret, journeys.timing\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'store', 'activities', 'workflows', 'crmflow', 'temporalio', 'sqlalchemy', 'durable'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
