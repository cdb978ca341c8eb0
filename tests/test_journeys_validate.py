"""Validating journey files: every problem named with its file, line and node, all at once;
and `crmflow journeys validate` / `schema` (the typer app, before it is wired into the CLI)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crmflow.cli.journeys import journeys_app
from journeys.models import Journey
from journeys.validate import JourneyError, check_journey, load_journey, validate_text
from rules.models import Program
from rules.source import SourceError, parse_yaml, yaml_load

REPO = Path(__file__).resolve().parents[1]
PROGRAM_TEXT = (REPO / "examples/program.yaml").read_text()
PROGRAM = Program.model_validate(yaml_load(PROGRAM_TEXT))
EXAMPLES = sorted((REPO / "examples/journeys").glob("*.yaml"))
runner = CliRunner()

HEADER = """\
journey: test
entry: rule
start: hello
nodes:
"""
HELLO = """\
  hello:
    type: message
    channel: email
    template:
      subject: Hi
      text: Hello {{ customer.name }}
    next: done
"""
DONE = """\
  done:
    type: exit
"""


def problems(text: str, known_events: list[str] | None = None) -> list[JourneyError]:
    """The errors for a journey's text (dedented), each checked to carry file and line."""
    with pytest.raises(SourceError) as info:
        validate_text(textwrap.dedent(text), "j.yaml", PROGRAM, known_events)
    errs = info.value.errors
    assert errs
    for e in errs:
        assert isinstance(e, JourneyError) and e.file == "j.yaml" and e.line, e
    return errs  # type: ignore[return-value]


def one(text: str, known_events: list[str] | None = None) -> JourneyError:
    errs = problems(text, known_events)
    assert len(errs) == 1, "\n".join(map(str, errs))
    return errs[0]


def valid(text: str, known_events: list[str] | None = None) -> Journey:
    return validate_text(textwrap.dedent(text), "j.yaml", PROGRAM, known_events)


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_example_programme(path: Path) -> None:
    loaded = load_journey(path)
    assert loaded.program_path == str(REPO / "examples/program.yaml")
    assert loaded.journey.journey == path.stem


def test_welcome_is_entered_by_the_rule_that_enrolls_it() -> None:
    rules = (REPO / "examples/rules/10-points.yaml").read_text()
    assert "enroll_journey: welcome" in rules
    assert load_journey(REPO / "examples/journeys/welcome.yaml").journey.entry == "rule"


@pytest.mark.parametrize(
    ("name", "event"), [("winback", "churn_risk"), ("birthday", "birthday_month")]
)
def test_journey_events_from_the_rules_enter_their_journeys(name: str, event: str) -> None:
    rules = "".join(p.read_text() for p in (REPO / "examples/rules").glob("*.yaml"))
    assert f"journey_event: {{journey: {name}, event: {event}}}" in rules
    entry = load_journey(REPO / f"examples/journeys/{name}.yaml").journey.entry
    assert getattr(entry, "event", None) == event


def test_a_minimal_journey_is_valid() -> None:
    assert valid(HEADER + HELLO + DONE).start == "hello"


# --------------------------------------------------------------------------- file and format


def test_yaml_syntax_error_has_its_line() -> None:
    err = one(HEADER + "  hello: {type: exit\n  done: x\n")
    assert err.line == 6 and "not valid YAML" in err.message


@pytest.mark.parametrize(("text", "found"), [("", "an empty file"), ("- a\n- b\n", "a list")])
def test_a_journey_is_a_mapping(text: str, found: str) -> None:
    err = one(text)
    assert err.line == 1 and f"a journey file is a mapping (journey:, entry:, …), not {found}" in (
        err.message
    )


def test_format_errors_name_the_node_and_line() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: message
    channel: email
    colour: red
    template: {subject: Hi, text: Hello}
    next: done
  wait:
    type: delay
    duration: 3 days
    next: done
"""
        + DONE
    )
    by_line = {e.line: e for e in errs}
    assert by_line[8].node == "hello"
    assert by_line[8].message == "node 'hello': colour: unknown field"
    assert by_line[13].node == "wait"
    assert "node 'wait': duration: '3 days' is not a duration" in by_line[13].message


def test_header_errors_have_their_lines() -> None:
    errs = problems(
        """\
        journey: Bad Name
        entry: {segment: tier == gold}
        channels: [email, fax]
        start: done
        nodes:
          done: {type: exit}
        """
    )
    assert [e.line for e in errs] == [1, 2, 3]
    assert "'Bad Name' is not a valid name" in errs[0].message
    assert "needs either a schedule or once: true" in errs[1].message
    assert "channels.1: expected 'email'" in errs[2].message
    assert all(e.node is None for e in errs)


def test_missing_required_fields() -> None:
    err = one("journey: test\nentry: rule\nnodes: {done: {type: exit}}\n")
    assert err.message == "required field 'start' is missing" and err.line == 1


# --------------------------------------------------------------------------- graph


def test_start_must_be_a_node() -> None:
    err = one(HEADER.replace("start: hello", "start: helo") + HELLO + DONE)
    assert err.line == 3 and err.node is None
    assert err.message == "start: 'helo' is not a node (did you mean 'hello'?)"


def test_next_must_be_a_node() -> None:
    err, unreachable = problems(HEADER + HELLO.replace("next: done", "next: dnoe") + DONE)
    assert (err.line, err.node) == (11, "hello")
    assert err.message == "node 'hello': next: 'dnoe' is not a node (did you mean 'done'?)"
    assert (unreachable.line, unreachable.node) == (12, "done")  # nothing leads to it now


def test_every_way_on_must_be_a_node() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: wait_for
    event: purchase
    timeout: 1d
    on_event: nowhere
    on_timeout: pick
  pick:
    type: branch
    cases:
      - {when: tier == gold, next: gold_path}
    default: done
  s:
    type: split
    variants: [{name: a, weight: 1, next: elsewhere}]
"""
        + DONE
    )
    found = {(e.line, e.node, e.message.split(": ", 1)[1]) for e in errs}
    assert (9, "hello", "on_event: 'nowhere' is not a node") in found
    assert (14, "pick", "cases.0.next: 'gold_path' is not a node") in found
    assert (18, "s", "variants.0.next: 'elsewhere' is not a node") in found
    assert (16, "s", "unreachable: no path from start 'hello' leads here") in found


def test_unreachable_nodes() -> None:
    errs = problems(
        HEADER
        + HELLO
        + """\
  orphan:
    type: message
    channel: email
    template: {subject: Hi, text: Hi}
    next: orphan_end
  orphan_end: {type: exit}
"""
        + DONE
    )
    assert [(e.line, e.node) for e in errs] == [(12, "orphan"), (17, "orphan_end")]
    assert errs[0].message == "node 'orphan': unreachable: no path from start 'hello' leads here"


def test_paths_that_never_end() -> None:
    err = one(
        HEADER
        + HELLO.replace("next: done", "next: wait")
        + """\
  wait:
    type: wait_for
    event: purchase
    timeout: 7d
    on_event: thanks
    on_timeout: hello
  thanks:
    type: message
    channel: email
    template: {subject: Thanks, text: Thanks}
    next: hello
"""
    )
    assert (err.line, err.node) == (5, "hello")
    assert err.message == (
        "node 'hello': this path never ends: hello → wait → hello loops with no way to an exit"
    )


def test_a_path_that_ends_on_one_side_only() -> None:
    err = one(
        HEADER
        + """\
  hello:
    type: branch
    cases: [{when: tier == gold, next: done}]
    default: stuck
  stuck: {type: delay, duration: 1d, next: stuck}
"""
        + DONE
    )
    assert err.node == "stuck" and err.line == 9
    assert "stuck → stuck loops with no way to an exit" in err.message


def test_a_holdout_ends_the_path() -> None:
    valid(
        HEADER
        + """\
  hello:
    type: split
    variants: [{name: a, weight: 1, next: done}]
    holdout: {weight: 1}
"""
        + DONE
    )


def test_a_split_whose_variants_never_end() -> None:
    err = one(
        HEADER
        + """\
  hello:
    type: split
    variants: [{name: a, weight: 1, next: w}]
    holdout: {weight: 1}
  w: {type: delay, duration: 1d, next: w}
"""
    )
    assert err.node == "w" and "never ends" in err.message


def test_loops_with_no_wait() -> None:
    errs = problems(
        HEADER
        + HELLO.replace("next: done", "next: check")
        + """\
  check:
    type: branch
    cases: [{when: purchases_30d >= 1, next: done}]
    default: hello
"""
        + DONE
    )
    assert [(e.line, e.node) for e in errs] == [(5, "hello")]
    assert errs[0].message == (
        "node 'hello': the loop hello → check → hello has no delay or wait_for: "
        "it would run again and again without pause"
    )


def test_a_self_loop_with_no_wait() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: update
    effects: [add_tag: x]
    next: hello
"""
    )
    messages = [e.message for e in errs]
    assert (
        "node 'hello': the loop hello → hello has no delay or wait_for: it would run again "
        "and again without pause" in messages
    )
    assert any("never ends" in m for m in messages)


def test_a_loop_that_waits_and_can_end_is_fine() -> None:
    valid(
        HEADER
        + HELLO.replace("next: done", "next: wait")
        + """\
  wait:
    type: wait_for
    event: purchase
    timeout: 7d
    on_event: done
    on_timeout: hello
"""
        + DONE
    )


def test_a_loop_that_avoids_its_wait_is_found() -> None:
    # hello -> a -> hello waits nowhere, even though hello -> w -> hello does
    errs = problems(
        HEADER
        + """\
  hello:
    type: branch
    cases: [{when: tier == gold, next: w}, {when: tier == silver, next: done}]
    default: a
  w: {type: delay, duration: 1d, next: hello}
  a: {type: update, effects: [add_tag: x], next: hello}
"""
        + DONE
    )
    assert [e.message for e in errs] == [
        "node 'hello': the loop hello → a → hello has no delay or wait_for: "
        "it would run again and again without pause"
    ]


def test_an_invalid_node_does_not_hide_graph_errors_elsewhere() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: delay
    duration: soon
    next: nowhere_else
  other: {type: exit}
"""
    )
    assert {(e.line, e.node) for e in errs} == {(7, "hello"), (9, "other")}
    assert any("unreachable" in e.message for e in errs)


# --------------------------------------------------------------------------- channels


def test_channel_not_allowed_in_this_journey() -> None:
    err = one(HEADER.replace("start:", "channels: [sms]\nstart:") + HELLO + DONE)
    assert (err.line, err.node) == (8, "hello")
    assert (
        err.message == "node 'hello': channel 'email' is not one of this journey's channels (sms)"
    )


def test_unknown_channel() -> None:
    err = one(HEADER + HELLO.replace("channel: email", "channel: fax") + DONE)
    assert (err.line, err.node) == (7, "hello")
    assert "node 'hello': channel: expected 'email', 'sms', 'wechat', 'webhook' or 'outbox'" in (
        err.message
    )


def test_what_each_channel_needs() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: message
    channel: email
    template:
      text: no subject
      variants:
        zh-CN: {subject: 你好}
    next: sms
  sms:
    type: message
    channel: sms
    template: {subject: SMS has none, text: hi, html: <b>no</b>}
    next: done
"""
        + DONE
    )
    got = {(e.line, e.message) for e in errs}
    assert (8, "node 'hello': the template needs a subject for email") in got
    assert (11, "node 'hello': the zh-CN variant has neither text nor html") in got
    assert (16, "node 'sms': the template: sms messages have no subject") in got
    assert (16, "node 'sms': the template: sms messages have no html") in got
    assert len(errs) == 4


# --------------------------------------------------------------------------- events


def test_any_event_name_by_default_but_well_formed() -> None:
    valid(HEADER.replace("entry: rule", "entry: {event: something_new}") + HELLO + DONE)
    err = one(HEADER.replace("entry: rule", "entry: {event: Something New}") + HELLO + DONE)
    assert err.line == 2 and "'Something New' is not a valid name" in err.message


def test_unknown_events_when_the_known_ones_are_given() -> None:
    text = (
        HEADER.replace("entry: rule", "entry: {event: sign_up}").replace(
            "start:", "exit_on: [unsubscribe]\ngoal: {event: purchse, within_days: 7}\nstart:"
        )
        + HELLO.replace("next: done", "next: wait")
        + """\
  wait:
    type: wait_for
    event: opened
    timeout: 1d
    on_event: done
    on_timeout: done
"""
        + DONE
    )
    known = ["sign_up", "purchase", "unsubscribed", "message_opened"]
    errs = problems(text, known)
    got = [(e.line, e.node, e.message.split(";")[0]) for e in errs]
    assert got == [
        (3, None, "unknown event type 'unsubscribe' (did you mean 'unsubscribed'?)"),
        (4, None, "unknown event type 'purchse' (did you mean 'purchase'?)"),
        (16, "wait", "node 'wait': unknown event type 'opened' (did you mean 'message_opened'?)"),
    ]
    assert "known: message_opened, purchase, sign_up, unsubscribed" in errs[0].message
    valid(
        text.replace("unsubscribe]", "unsubscribed]")
        .replace("purchse", "purchase")
        .replace("event: opened", "event: message_opened"),
        known,
    )


# --------------------------------------------------------------------------- conditions


def test_conditions_are_checked_like_rules() -> None:
    errs = problems(
        HEADER.replace("entry: rule", "entry: {event: purchase, when: event.amount > big}")
        + """\
  hello:
    type: branch
    cases:
      - when:
          all:
            - spend_12m > 5
            - tier == diamond
        next: done
      - when: tags > 3
        next: done
    default: done
"""
        + DONE
    )
    got = {(e.line, e.message) for e in errs}
    assert (2, "event.amount is compared with 'big'; expected a number") in got
    assert (
        10,
        "node 'hello': unknown fact 'spend_12m'; known facts: event.type, tier, "
        "tier_rank, points_balance, points_pending, tags, lifecycle_stage, owner, has_owner, "
        "spend_30d, "
        "spend_90d, spend_365d, purchases_30d, purchases_90d, purchases_365d, "
        "points_earned_365d, days_since_last_purchase, avg_days_between_purchases, "
        "purchase_gap_ratio, days_since_last_follow_up, hours_since_last_follow_up, "
        "days_since_created, birthday_month, p_alive, expected_purchases_30d, "
        "expected_purchases_90d, expected_purchases_365d, expected_avg_spend, clv_365d, "
        "event.amount, event.currency, event.channel, "
        "event.order_id, event.by, consent.<channel>, attributes.<name>",
    ) in got
    assert (
        11,
        "node 'hello': tier 'diamond' is not defined; tiers: basic, silver, gold, platinum",
    ) in got
    assert (
        13,
        "node 'hello': operator '>' does not fit tags (list); use one of contains exists",
    ) in got
    assert len(errs) == 4


def test_a_format_error_in_one_node_does_not_stop_checks_in_others() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: branch
    cases: [{when: spend_12m > 1, next: done}]
    default: broken
  broken:
    type: message
    channel: email
    template: {subject: x, text: x}
"""
        + DONE
    )
    assert [(e.line, e.node) for e in errs] == [(7, "hello"), (9, "broken")]
    assert "unknown fact 'spend_12m'" in errs[0].message
    assert errs[1].message == "node 'broken': required field 'next' is missing"


def test_profile_conditions_cannot_read_the_event() -> None:
    errs = problems(
        HEADER.replace("entry: rule", "entry: {segment: event.amount > 5, once: true}")
        + """\
  hello:
    type: branch
    cases: [{when: {any: [event.channel == app, tier == gold]}, next: done}]
    default: done
"""
        + DONE
    )
    assert [(e.line, e.message) for e in errs] == [
        (
            2,
            "segments test the customer's profile; 'event.amount' is only set in entry, goal "
            "and wait_for conditions",
        ),
        (
            7,
            "node 'hello': branches test the customer's profile; 'event.channel' is only set "
            "in entry, goal and wait_for conditions",
        ),
    ]


def test_event_conditions_can_read_the_event() -> None:
    valid(
        HEADER.replace("entry: rule", "entry: {event: purchase, when: event.amount > 5}").replace(
            "start:", "goal: {event: purchase, when: event.currency == CNY, within_days: 7}\nstart:"
        )
        + HELLO.replace("next: done", "next: wait")
        + """\
  wait:
    type: wait_for
    event: purchase
    when: {all: [event.amount >= 100, tags contains vip]}
    timeout: 1d
    on_event: done
    on_timeout: done
"""
        + DONE
    )


def test_goal_condition_is_checked() -> None:
    err = one(
        HEADER.replace(
            "start:", "goal:\n  event: purchase\n  when: event.total > 5\n  within_days: 7\nstart:"
        )
        + HELLO
        + DONE
    )
    assert err.line == 5 and "unknown fact 'event.total'; declare it under event_properties" in (
        err.message
    )


# --------------------------------------------------------------------------- updates


def test_update_effects_are_checked_against_the_programme() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: update
    effects:
      - set_tier: diamond
      - award_points: {amount: "points_balance *"}
      - award_points: "event.amount * 2"
      - deduct_points: "spend_12m / 10"
      - add_tag: fine
    next: done
"""
        + DONE
    )
    got = [(e.line, e.message) for e in errs]
    assert got[0] == (
        8,
        "node 'hello': set_tier: tier 'diamond' is not defined; tiers: basic, "
        "silver, gold, platinum",
    )
    assert got[1][0] == 9 and "does not parse" in got[1][1]
    assert got[2] == (
        10,
        "node 'hello': expression 'event.amount * 2' reads 'event.amount'; there is no event here",
    )
    assert got[3] == (
        11,
        "node 'hello': expression 'spend_12m / 10' reads unknown fact 'spend_12m'",
    )
    assert len(got) == 4 and all(e.node == "hello" for e in errs)


def test_update_with_valid_effects() -> None:
    valid(
        HEADER
        + """\
  hello:
    type: update
    effects:
      - set_tier: gold
      - award_points: {amount: "min(points_balance, 100)", multiplier: none}
      - add_tag: {tag: vip, ttl_days: 30}
      - remove_tag: lapsed
      - retention_action: {task: Call them}
      - journey_event: {journey: winback, event: nudge}
    next: done
"""
        + DONE
    )


# --------------------------------------------------------------------------- templates


def test_undefined_names_in_templates() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: message
    channel: email
    template:
      subject: Hi {{ customer.nmae }}
      text: |
        Hello {{ customer.name }},

        your city: {{ customer.attributes.city }}
        your pet: {{ customer.attributes.pet }}
        {{ coupon_code }}
    next: done
"""
        + DONE
    )
    got = {(e.line, e.message) for e in errs}
    assert (
        9,
        "node 'hello': the template's subject does not render: 'dict object' has no "
        "attribute 'nmae'",
    ) in got
    assert (
        15,
        "node 'hello': the template's text uses undefined 'coupon_code'; templates see "
        "customer, data, journey, unsubscribe_url",
    ) in got
    assert len(errs) == 2
    # once coupon_code is gone, the next undefined name shows, at its own line
    errs = problems(
        HEADER
        + """\
  hello:
    type: message
    channel: email
    template:
      subject: Hi
      text: |
        Hello {{ customer.name }},

        your pet: {{ customer.attributes.pet }}
    next: done
"""
        + DONE
    )
    assert [(e.line, e.node) for e in errs] == [(13, "hello")]
    assert "has no attribute 'pet'" in errs[0].message


def test_templates_that_do_not_parse() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: message
    channel: email
    template:
      subject: "{{ customer.name"
      html: |
        <p>Hello</p>
        {% if customer.tier == 'gold' %}
        <p>Gold!</p>
      variants:
        zh-CN:
          subject: 你好
          text: "{{ customer.name | no_such_filter }}"
    next: done
"""
        + DONE
    )
    got = {(e.line, e.message.split(":")[0] + ":" + e.message.split(":")[1]) for e in errs}
    assert (9, "node 'hello': the template's subject does not parse") in got
    assert (12, "node 'hello': the template's html does not parse") in got  # the open if
    assert (17, "node 'hello': the zh-CN variant's text does not parse") in got
    assert len(errs) == 3


def test_templates_render_in_a_sandbox() -> None:
    err = one(
        HEADER
        + HELLO.replace("Hello {{ customer.name }}", "'{{ customer.__class__.__mro__ }}'")
        + DONE
    )
    assert err.line == 10 and "unsafe" in err.message


def test_templates_may_use_declared_attributes_defaults_and_filters() -> None:
    valid(
        HEADER
        + HELLO.replace(
            "Hello {{ customer.name }}",
            "'{{ customer.attributes.city }} {{ customer.attributes.pet | default("
            ") }} "
            "{{ customer.points_balance | round | int }} {{ unsubscribe_url }} {{ journey }}'",
        )
        + DONE
    )


def test_a_runtime_error_in_a_template() -> None:
    err = one(HEADER + HELLO.replace("Hello {{ customer.name }}", "'{{ 1 // 0 }}'") + DONE)
    assert err.line == 10 and "ZeroDivisionError" in err.message


# --------------------------------------------------------------------------- splits


def test_split_variant_names() -> None:
    errs = problems(
        HEADER
        + """\
  hello:
    type: split
    variants:
      - {name: a, weight: 1, next: done}
      - {name: a, weight: 1, next: done}
      - {name: holdout, weight: 1, next: done}
"""
        + DONE
    )
    assert [(e.line, e.message) for e in errs] == [
        (9, "node 'hello': variant name 'a' is used twice in this split"),
        (10, "node 'hello': 'holdout' names the holdout group; rename it"),
    ]


def test_split_weights_positive() -> None:
    err = one(
        HEADER
        + """\
  hello:
    type: split
    variants: [{name: a, weight: 1, next: done}]
    holdout: {weight: -10}
"""
        + DONE
    )
    assert err.line == 8 and err.message == (
        "node 'hello': holdout.weight: Input should be greater than 0"
    )


# --------------------------------------------------------------------------- delays


def test_until_attribute_must_not_be_declared_as_a_non_date() -> None:
    program = PROGRAM.model_copy(update={"attributes": {"birthday": "number"}})
    text = HEADER + "  hello: {type: delay, until_attribute: birthday, next: done}\n" + DONE
    with pytest.raises(SourceError) as info:
        check_journey(parse_yaml(text, "j.yaml"), program)
    [err] = info.value.errors
    assert err.line == 5 and "declared as a number in the programme" in err.message


# --------------------------------------------------------------------------- all at once


def test_every_problem_at_once_in_line_order() -> None:
    errs = problems(
        """\
        journey: many
        entry: {event: purchase}
        channels: [email]
        start: hello
        nodes:
          hello:
            type: message
            channel: sms
            template: {text: "{{ customer.nam }}"}
            next: branch
          branch:
            type: branch
            cases: [{when: spend_12m > 1, next: hello}]
            default: nowhere
          orphan: {type: exit}
        """
    )
    lines = [e.line or 0 for e in errs]
    assert lines == sorted(lines)
    text = "\n".join(str(e) for e in errs)
    for expected in (
        "j.yaml:6: node 'hello': the loop hello → branch → hello has no delay or wait_for",
        "j.yaml:8: node 'hello': channel 'sms' is not one of this journey's channels (email)",
        "j.yaml:9: node 'hello': the template's text does not render",
        "j.yaml:13: node 'branch': unknown fact 'spend_12m'",
        "j.yaml:14: node 'branch': default: 'nowhere' is not a node",
        "j.yaml:15: node 'orphan': unreachable",
    ):
        assert expected in text, expected
    assert len(errs) == 6, text


# --------------------------------------------------------------------------- programme


def test_programme_found_beside_the_journeys_folder(tmp_path: Path) -> None:
    (tmp_path / "journeys").mkdir()
    (tmp_path / "program.yaml").write_text(PROGRAM_TEXT)
    path = tmp_path / "journeys" / "j.yaml"
    path.write_text(HEADER + HELLO + DONE)
    assert load_journey(path).program_path == str(tmp_path / "program.yaml")
    (tmp_path / "journeys" / "program.yaml").write_text(PROGRAM_TEXT)
    assert load_journey(path).program_path == str(tmp_path / "journeys" / "program.yaml")


def test_programme_missing_or_given(tmp_path: Path) -> None:
    path = tmp_path / "a" / "j.yaml"
    path.parent.mkdir()
    path.write_text(HEADER + HELLO + DONE)
    with pytest.raises(SourceError, match=r"no program\.yaml in this folder or its parent"):
        load_journey(path)
    program = tmp_path / "elsewhere.yaml"
    program.write_text(PROGRAM_TEXT)
    assert load_journey(path, program).program.program == "Acme Rewards"


def test_a_broken_programme_is_reported_at_its_own_line(tmp_path: Path) -> None:
    program = tmp_path / "program.yaml"
    program.write_text(PROGRAM_TEXT.replace("welcome_tier: basic", "welcome_tier: wood"))
    path = tmp_path / "j.yaml"
    path.write_text(HEADER + HELLO + DONE)
    with pytest.raises(SourceError) as info:
        load_journey(path, program)
    [err] = info.value.errors
    assert err.file == str(program) and err.line == 5 and "'wood'" in err.message


# --------------------------------------------------------------------------- CLI


def squash(text: str) -> str:
    return "".join(text.split())


def test_cli_validate_the_examples() -> None:
    for path in EXAMPLES:
        result = runner.invoke(journeys_app, ["validate", str(path)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"ok: journey '{path.stem}'")
        assert squash(f"programme {REPO / 'examples/program.yaml'}") in squash(result.output)
    result = runner.invoke(
        journeys_app, ["validate", str(REPO / "examples/journeys/winback.yaml"), "--json"]
    )
    data = json.loads(result.stdout)
    assert data["ok"] and data["journey"] == "winback" and data["start"] == "offer_test"
    assert data["entry"] == {"kind": "event", "event": "churn_risk", "when": False}
    assert data["channels"] == ["email", "sms"]
    assert data["nodes"]["offer_test"] == "split"
    assert data["node_types"] == {"split": 1, "message": 3, "wait_for": 1, "delay": 1, "exit": 1}
    assert data["goal"]["event"] == "purchase"


def test_cli_validate_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "program.yaml").write_text(PROGRAM_TEXT)
    path = tmp_path / "bad.yaml"
    path.write_text(HEADER + HELLO.replace("next: done", "next: gone") + "  spare: {type: exit}\n")
    result = runner.invoke(journeys_app, ["validate", str(path)])
    assert result.exit_code == 1
    # rich wraps long lines: compare without whitespace
    assert squash(f"{path}:11: node 'hello': next: 'gone' is not a node") in squash(result.output)
    assert squash(f"{path}:12: node 'spare': unreachable") in squash(result.output)
    assert "2 problem(s) found" in result.output
    result = runner.invoke(journeys_app, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert [(e["line"], e["node"]) for e in data["errors"]] == [(11, "hello"), (12, "spare")]


def test_cli_validate_with_known_events_and_a_programme(tmp_path: Path) -> None:
    path = REPO / "examples/journeys/winback.yaml"
    program = tmp_path / "p.yaml"
    program.write_text(PROGRAM_TEXT)
    args = ["validate", str(path), "--program", str(program), "--json"]
    known = ["--event", "churn_risk", "--event", "purchase", "--event", "unsubscribed"]
    assert runner.invoke(journeys_app, args + known).exit_code == 0
    result = runner.invoke(journeys_app, args + known[:4])
    assert result.exit_code == 1
    [err] = json.loads(result.stdout)["errors"]
    assert err["message"].startswith("unknown event type 'unsubscribed'")


def test_cli_schema(tmp_path: Path) -> None:
    result = runner.invoke(journeys_app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "crmflow journey file"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "MessageNode" in schema["$defs"]
    out = tmp_path / "journey.schema.json"
    result = runner.invoke(journeys_app, ["schema", "--out", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text()) == schema
