"""Rule and programme files: models, YAML with line numbers, and the checks of build_pack."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules.compiler import CompiledPack, content_version
from rules.models import (
    All,
    AnyOf,
    AwardPoints,
    Compare,
    Not,
    Program,
    Rule,
    RuleFile,
    SetTier,
)
from rules.pack import PackSource, build_pack, load_pack, read_source
from rules.source import SourceError, SourceProblem, parse_yaml, yaml_load

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """\
program: Test Rewards
welcome_tier: basic
tiers:
  - {name: basic, rank: 0, qualify: {metric: spend, threshold: 0}}
  - {name: silver, rank: 1, qualify: {metric: spend, threshold: 2000}}
  - {name: gold, rank: 2, qualify: {metric: spend, threshold: 8000}}
event_properties:
  amount: number
  currency: string
  channel: string
  gift: boolean
attributes:
  city: string
"""


def source(files: dict[str, str], program: str = PROGRAM) -> PackSource:
    return PackSource("program.yaml", program, list(files.items()))


def build(files: dict[str, str], program: str = PROGRAM) -> CompiledPack:
    return build_pack(source(files, program))


def errors(files: dict[str, str], program: str = PROGRAM) -> list[SourceProblem]:
    with pytest.raises(SourceError) as info:
        build(files, program)
    errs = info.value.errors
    assert errs, "a SourceError must list at least one problem"
    # the exception's text lists every problem, one a line, as file:line: message
    assert str(info.value).splitlines() == [str(e) for e in errs]
    return errs


def one_rule(when: str) -> str:
    """A rule file whose condition is on line 4."""
    return f"rules:\n  - name: r\n    on: purchase\n    when: {when}\n    then: [{{add_tag: x}}]\n"


def the_error(files: dict[str, str], program: str = PROGRAM) -> SourceProblem:
    errs = errors(files, program)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0]


# --------------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        # unknown facts
        ("spend_7d > 1", ["unknown fact 'spend_7d'", "known facts:", "spend_30d", "event.amount"]),
        ("event.colour == red", ["unknown fact 'event.colour'", "event_properties"]),
        ("consent == true", ["unknown fact 'consent'"]),
        ("other.thing == 1", ["unknown fact 'other.thing'"]),
        # operators that do not fit the fact's type
        ("tier < gold", ["operator '<' does not fit tier (string)", "!= == exists in not_in"]),
        ("tags == vip", ["operator '==' does not fit tags (list)", "contains exists"]),
        ("event.currency > 3", ["operator '>' does not fit event.currency (string)"]),
        ("has_owner > 1", ["operator '>' does not fit has_owner (boolean)", "!= == exists"]),
        ("has_owner in [true]", ["operator 'in' does not fit has_owner (boolean)"]),
        ("spend_30d contains 3", ["operator 'contains' does not fit spend_30d (number)"]),
        ("tags in [vip]", ["operator 'in' does not fit tags (list)"]),
        ("consent.email < 1", ["operator '<' does not fit consent.email (boolean)"]),
        ("attributes.city >= a", ["operator '>=' does not fit attributes.city (string)"]),
        # values of the wrong type
        ('spend_30d >= "lots"', ["spend_30d is compared with 'lots'", "expected a number"]),
        ("spend_30d == true", ["spend_30d is compared with True", "expected a number"]),
        ("event.amount in [1, two]", ["event.amount is compared with 'two'", "a number"]),
        ("has_owner == 1", ["has_owner is compared with 1", "expected a boolean"]),
        ("has_owner == yes", ["has_owner is compared with 'yes'", "expected a boolean"]),
        ("event.gift != 0", ["event.gift is compared with 0", "expected a boolean"]),
        ("event.currency == 3", ["event.currency is compared with 3", "expected a string"]),
        ("event.channel in [web, 3]", ["event.channel is compared with 3", "a string"]),
        ("tags contains 5", ["tags is compared with 5", "expected text"]),
        ("tier == true", ["tier is compared with True", "expected a string"]),
        # numbers that are not finite (durable_rules cannot read them)
        ("spend_30d > .inf", ["spend_30d is compared with inf", "expected a finite number"]),
        ("spend_30d >= -.inf", ["spend_30d is compared with -inf", "expected a finite number"]),
        ("event.amount != .nan", ["event.amount is compared with nan", "a finite number"]),
        ("event.amount in [1, .inf]", ["event.amount is compared with inf", "a finite number"]),
        ("attributes.anything == .inf", ["attributes.anything is compared with inf", "finite"]),
        # undefined tier and stage
        ("tier == diamond", ["tier 'diamond' is not defined", "tiers: basic, silver, gold"]),
        ("tier in [gold, diamond]", ["tier 'diamond' is not defined"]),
        ("tier not_in [platinum]", ["tier 'platinum' is not defined"]),
        ("lifecycle_stage == vip", ["stage 'vip' is not one of lead, prospect, customer, member"]),
        ("lifecycle_stage in [lead, vip]", ["stage 'vip' is not one of"]),
    ],
)
def test_condition_check_names_file_line_and_expectation(when: str, expected: list[str]) -> None:
    err = the_error({"a.yaml": one_rule(when)})
    assert err.file == "a.yaml"
    assert err.line == 4
    for part in expected:
        assert part in err.message, err.message
    assert str(err).startswith("a.yaml:4: ")


@pytest.mark.parametrize(
    "when",
    [
        "spend_30d >= 100",
        "spend_30d >= 99.5",
        "spend_30d >= 0.00001",
        "spend_30d < 1.0e+20",
        "spend_30d > 1e3",
        "attributes.anything < 1e-7",
        "spend_30d in [1, 2.5]",
        "spend_30d exists",
        "tier == gold",
        "tier in [basic, silver]",
        "tier != gold",
        "tier not_in [gold]",
        "tier exists",
        "tags contains vip",
        "tags exists",
        "has_owner == true",
        "has_owner != false",
        "birthday_month == true",
        "event.gift == false",
        "consent.email == true",
        "attributes.city == Shanghai",
        "attributes.anything > 3",  # untyped attributes take any operator and value
        "attributes.anything == yes",
        "lifecycle_stage in [lead, prospect]",
        "event.type == purchase",
        "event.currency in [CNY, USD]",
        "{fact: event.amount, op: '>=', value: 10}",
        "{not: {fact: tags, op: contains, value: vip}}",
        "{all: [tier_rank < 1, {any: [spend_30d > 1, {not: has_owner == true}]}]}",
    ],
)
def test_valid_conditions_build(when: str) -> None:
    pack = build({"a.yaml": one_rule(when)})
    assert [r.rule.name for r in pack.rules] == ["r"]


def test_nested_condition_errors_point_at_their_own_lines() -> None:
    text = textwrap.dedent(
        """\
        rules:
          - name: r
            when:
              all:
                - spend_30d > 1
                - spend_7d > 1
                - any:
                    - tier == gold
                    - tier == diamond
                - not: {fact: tags, op: "==", value: x}
                - not:
                    not: lifecycle_stage == vip
            then: [{add_tag: x}]
        """
    )
    errs = errors({"a.yaml": text})
    assert [(e.file, e.line) for e in errs] == [
        ("a.yaml", 6),
        ("a.yaml", 9),
        ("a.yaml", 10),
        ("a.yaml", 12),
    ]
    assert "spend_7d" in errs[0].message
    assert "diamond" in errs[1].message
    assert "'==' does not fit tags" in errs[2].message
    assert "stage 'vip'" in errs[3].message


# --------------------------------------------------------------------------- effects


def test_undefined_tier_in_set_tier() -> None:
    text = "rules:\n  - name: r\n    then:\n      - add_tag: x\n      - set_tier: diamond\n"
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 5)
    assert "set_tier: tier 'diamond' is not defined; tiers: basic, silver, gold" in err.message


def test_unknown_stage_in_set_stage() -> None:
    text = "rules:\n  - name: r\n    then:\n      - set_stage: vip\n"
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 4)
    assert "set_stage" in err.message
    assert "'lead', 'prospect', 'customer' or 'member'" in err.message


@pytest.mark.parametrize(
    ("effect", "expected"),
    [
        ('award_points: "event.amount ** 2"', "'event.amount ** 2' is not allowed"),
        ("award_points: {amount: \"__import__('os')\"}", "\"__import__('os')\" is not allowed"),
        ('deduct_points: "event.amount.bit_length()"', "is not allowed"),
        ("award_points: \"open('/etc/passwd')\"", "is not allowed"),
        ('award_points: "event.amount +"', "does not parse"),
        ('deduct_points: {amount: "(1"}', "does not parse"),
        ('award_points: "event.colour * 2"', "reads unknown fact 'event.colour'"),
        ('award_points: "event.currency * 2"', "reads event.currency (string), not a number"),
        ('award_points: "has_owner + 1"', "reads has_owner (boolean), not a number"),
        ('award_points: "tags * 2"', "reads tags (list), not a number"),
    ],
)
def test_bad_expression_names_file_and_line(effect: str, expected: str) -> None:
    text = (
        f"rules:\n  - name: r\n    on: purchase\n    then:\n      - add_tag: x\n      - {effect}\n"
    )
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 6)
    assert expected in err.message, err.message


@pytest.mark.parametrize(
    "effect",
    [
        'award_points: "event.amount * 2"',
        'award_points: "floor(event.amount / 10) * 2 + attributes.bonus"',
        "award_points: 100",
        "award_points: {amount: 5, multiplier: none, earn_rate: true, reason: x}",
        'deduct_points: "min(points_balance, 100)"',
        "add_tag: vip",
        "add_tag: {tag: vip, ttl_days: 0.5}",
        "remove_tag: vip",
        "set_tier: gold",
        "upgrade_tier: one",
        "downgrade_tier: qualified",
        "enroll_journey: welcome",
        "enroll_journey: {journey: welcome, data: {a: 1}}",
        "journey_event: {journey: birthday, event: birthday_month}",
        "retention_action: {task: Call them}",
        "retention_action: {coupon: {value: 50}}",
        "assign_owner: sales.amy",
        "return_to_pool: true",
        "set_stage: member",
    ],
)
def test_valid_effects_build(effect: str) -> None:
    text = f"rules:\n  - name: r\n    then:\n      - {effect}\n"
    pack = build({"a.yaml": text})
    assert len(pack.rules) == 1


def test_unknown_effect_key() -> None:
    text = "rules:\n  - name: r\n    then:\n      - add_tag: x\n      - send_sms: hi\n"
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 5)
    assert "expected one effect, a mapping with one key of: add_tag, remove_tag" in err.message
    assert "set_stage" in err.message


def test_effect_with_two_keys() -> None:
    text = "rules:\n  - name: r\n    then:\n      - {add_tag: x, remove_tag: y}\n"
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 4)
    assert "expected one effect" in err.message


@pytest.mark.parametrize(
    ("effect", "expected"),
    [
        ("add_tag: {tag: Bad Tag}", "'Bad Tag' is not a valid name"),
        ("add_tag: {tag: x, ttl_days: 0}", "greater than 0"),
        ("add_tag: {tag: x, colour: red}", "unknown field"),
        ("retention_action: {due_days: 2}", "needs a task, a coupon, or both"),
        ("retention_action: {task: x, coupon: {value: 5, code_prefix: bad}}", "pattern"),
        ("upgrade_tier: two", "expected 'one' or 'qualified'"),
        ("return_to_pool: sometimes", "valid boolean"),
        ("award_points: {amount: 5, multiplier: double}", "expected 'tier' or 'none'"),
        ("award_points: {reason: x}", "award_points: required field 'amount' is missing"),
        ("journey_event: {journey: x}", "journey_event: required field 'event' is missing"),
    ],
)
def test_bad_effect_arguments(effect: str, expected: str) -> None:
    text = f"rules:\n  - name: r\n    then:\n      - add_tag: x\n      - {effect}\n"
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 5)
    assert err.message.startswith("rules.0.then.1")
    assert expected in err.message, err.message


@pytest.mark.parametrize(
    ("effect", "expected"),
    [
        ("award_points: 0", "rules.0.then.1.award_points: Input should be greater than 0"),
        ("award_points: -5", "rules.0.then.1.award_points: Input should be greater than 0"),
        (
            "award_points: {amount: 0.0}",
            "rules.0.then.1.award_points.amount: Input should be greater than 0",
        ),
        ("award_points: .nan", "rules.0.then.1.award_points: Input should be a finite number"),
        ("deduct_points: 0", "rules.0.then.1.deduct_points: Input should be greater than 0"),
        (
            "deduct_points: {amount: -1}",
            "rules.0.then.1.deduct_points.amount: Input should be greater than 0",
        ),
    ],
)
def test_fixed_amount_must_be_positive(effect: str, expected: str) -> None:
    # a fixed amount is refused unless > 0 (the amount may also be an expression, so the
    # same line also says it is not text)
    text = f"rules:\n  - name: r\n    then:\n      - add_tag: x\n      - {effect}\n"
    errs = errors({"a.yaml": text})
    assert {(e.file, e.line) for e in errs} == {("a.yaml", 5)}
    assert any(e.message == expected for e in errs), [e.message for e in errs]


@pytest.mark.parametrize("effect", ["award_points: 0.01", "deduct_points: {amount: 1e3}"])
def test_small_and_exponent_fixed_amounts_build(effect: str) -> None:
    text = f"rules:\n  - name: r\n    then:\n      - {effect}\n"
    assert len(build({"a.yaml": text}).rules) == 1


@pytest.mark.parametrize("effect", ["award_points: .inf", "deduct_points: {amount: .inf}"])
def test_infinite_fixed_amount_is_refused(effect: str) -> None:
    text = f"rules:\n  - name: r\n    then:\n      - add_tag: x\n      - {effect}\n"
    errs = errors({"a.yaml": text})
    assert {(e.file, e.line) for e in errs} == {("a.yaml", 5)}


# --------------------------------------------------------------------------- shorthand


@pytest.mark.parametrize(
    ("text", "fact", "op", "value"),
    [
        ("event.amount >= 100", "event.amount", ">=", 100),
        ("  event.amount>=100", None, None, None),  # operators need spaces around them
        ("event.amount >= 99.5", "event.amount", ">=", 99.5),
        ("event.amount >= -3", "event.amount", ">=", -3),
        ("tier == gold", "tier", "==", "gold"),
        ("tier != gold", "tier", "!=", "gold"),
        ("tier < gold", "tier", "<", "gold"),
        ("tier <= gold", "tier", "<=", "gold"),
        ("tier > gold", "tier", ">", "gold"),
        ("tier in [gold, silver]", "tier", "in", ["gold", "silver"]),
        ("tier not_in [gold]", "tier", "not_in", ["gold"]),
        ("tags contains vip", "tags", "contains", "vip"),
        ("tags exists", "tags", "exists", None),
        ("has_owner == true", "has_owner", "==", True),
        ("has_owner == false", "has_owner", "==", False),
        ("has_owner == yes", "has_owner", "==", "yes"),  # YAML 1.2: yes is text
        ("event.type == on", "event.type", "==", "on"),
        ('event.channel == "a b"', "event.channel", "==", "a b"),
        ("event.channel == a b", "event.channel", "==", "a b"),
        ("owner == sales.amy", "owner", "==", "sales.amy"),
        ("attributes.x-y:z == 1", "attributes.x-y:z", "==", 1),
        ("spend_30d   >=    5  ", "spend_30d", ">=", 5),
    ],
)
def test_shorthand(text: str, fact: str | None, op: str | None, value: Any) -> None:
    if fact is None:
        with pytest.raises(ValueError, match="cannot read condition"):
            Compare.model_validate(text)
        return
    c = Compare.model_validate(text)
    assert (c.fact, c.op, c.value) == (fact, op, value)
    assert type(c.value) is type(value)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ('"spend_30d is big"', "cannot read condition 'spend_30d is big'; expected '<fact> <op>"),
        ('"spend_30d"', "cannot read condition"),
        ('"== 5"', "cannot read condition"),
        ('"spend_30d =< 5"', "cannot read condition"),
        ('"spend_30d >="', "'>=' needs one value"),
        ('"spend_30d == null"', "'==' needs one value"),
        ('"tags exists vip"', "'exists' takes no value"),
        ('"tier in gold"', "'in' needs a non-empty list of values"),
        ('"tier in []"', "'in' needs a non-empty list of values"),
        ('"tier not_in gold"', "'not_in' needs a non-empty list of values"),
        ('"tier == [gold]"', "'==' needs one value"),
        ("{fact: tier, op: like, value: gold}", "expected '=='"),
        ("{fact: tier, value: gold}", "required field 'op' is missing"),
        ("{op: exists}", "required field 'fact' is missing"),
        ("{fact: tier, op: '==', value: gold, extra: 1}", "unknown field"),
        ("{all: []}", "at least 1 item"),
        ("{any: []}", "at least 1 item"),
        ("5", "expected a condition: 'fact op value', {all: [...]}, {any: [...]} or {not: ...}"),
        ("[tier == gold]", "expected a condition"),
    ],
)
def test_bad_condition_shape(when: str, expected: str) -> None:
    err = the_error({"a.yaml": one_rule(when)})
    assert (err.file, err.line) == ("a.yaml", 4)
    assert err.message.startswith("rules.0.when")
    assert expected in err.message, err.message


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("'event.channel == \"web'", "cannot read the value '\"web' in 'event.channel == \"web'"),
        ("'tier in [gold'", "cannot read the value '[gold' in 'tier in [gold': expected ','"),
        ("'tier in {a: [b}'", "cannot read the value '{a: [b}'"),
    ],
)
def test_shorthand_with_broken_yaml_value_is_a_rule_error(when: str, expected: str) -> None:
    err = the_error({"a.yaml": one_rule(when)})
    assert (err.file, err.line) == ("a.yaml", 4)
    assert err.message.startswith("rules.0.when: ")
    assert expected in err.message, err.message
    with pytest.raises(ValueError, match="cannot read the value"):
        Compare.model_validate(yaml_load(when))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("event.amount >= 1e3", 1000.0),
        ("event.amount >= 1E3", 1000.0),
        ("event.amount >= 2e-3", 0.002),
        ("event.amount >= -1e+2", -100.0),
        ("event.amount in [1e3, 5]", [1000.0, 5]),
    ],
)
def test_exponent_number_in_shorthand(text: str, value: Any) -> None:
    # YAML 1.2: 1e3 is a number (PyYAML's YAML 1.1 resolver reads it as text)
    c = Compare.model_validate(text)
    assert c.value == value
    first = c.value[0] if isinstance(c.value, list) else c.value
    assert type(first) is float
    assert yaml_load("[1e3, 1_000, e3, 1e, 0x1e3]") == [1000.0, 1000, "e3", "1e", 0x1E3]
    pack = build({"a.yaml": one_rule(text)})
    assert pack.rules[0].rule.when == c


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("event.amount >= 1.5e3", 1500.0),
        ("event.amount >= 2.5E3", 2500.0),
        ("event.amount >= 1.e3", 1000.0),
        ("event.amount >= .5e3", 500.0),
        ("attributes.x >= 1.5e3", 1500.0),
    ],
)
def test_exponent_number_with_a_decimal_point_in_shorthand(text: str, value: float) -> None:
    assert Compare.model_validate(text).value == value


def test_condition_kinds() -> None:
    rule = Rule.model_validate(
        {
            "name": "r",
            "when": {"all": ["a == 1", {"any": ["b == 2", {"not": "c == 3"}]}]},
            "then": [{"add_tag": "x"}],
        }
    )
    assert isinstance(rule.when, All)
    inner = rule.when.all[1]
    assert isinstance(rule.when.all[0], Compare)
    assert isinstance(inner, AnyOf)
    assert isinstance(inner.any[1], Not)
    assert isinstance(inner.any[1].not_, Compare)
    # models can be validated again (round trip through model objects and through dumps)
    again = Rule.model_validate(rule.model_dump(by_alias=True))
    assert again == rule
    assert Rule.model_validate(rule) == rule


# --------------------------------------------------------------------------- YAML


def test_on_is_a_string_not_a_boolean() -> None:
    doc = parse_yaml("on: purchase\nyes: no\noff: true\nn: False\n", "x.yaml")
    assert doc.data == {"on": "purchase", "yes": "no", "off": True, "n": False}
    assert yaml_load("[on, off, yes, no, y, n, true, TRUE, false]") == [
        "on",
        "off",
        "yes",
        "no",
        "y",
        "n",
        True,
        True,
        False,
    ]
    pack = build({"a.yaml": "rules:\n  - name: r\n    on: purchase\n    then: [{add_tag: x}]\n"})
    assert pack.rules[0].rule.on == "purchase"
    assert pack.rules[0].rule.event_types() == ["purchase"]


def test_on_accepts_a_list_and_yes_as_an_event_type() -> None:
    text = "rules:\n  - name: r\n    on: [purchase, yes]\n    then: [{add_tag: x}]\n"
    pack = build({"a.yaml": text})
    assert pack.rules[0].rule.event_types() == ["purchase", "yes"]


def test_line_numbers_of_nodes() -> None:
    text = "# comment\nrules:\n  - name: r\n    when:\n      all:\n        - a == 1\n"
    doc = parse_yaml(text, "x.yaml")
    assert doc.line_of(()) == 2
    assert doc.line_of(("rules",)) == 2
    assert doc.line_of(("rules", 0)) == 3
    assert doc.line_of(("rules", 0, "name")) == 3
    assert doc.line_of(("rules", 0, "when")) == 4
    assert doc.line_of(("rules", 0, "when", "all", 0)) == 6
    # a path the file does not have: the deepest node it has
    assert doc.line_of(("rules", 0, "then", 3)) == 3
    assert doc.line_of(("nothing",)) == 2
    assert parse_yaml("", "x.yaml").line_of(("rules",)) is None


def test_yaml_syntax_error_names_file_and_line() -> None:
    text = "rules:\n  - name: r\n    then:\n      - add_tag: [x\n  - name: s\n"
    err = the_error({"a.yaml": text})
    assert err.file == "a.yaml"
    assert err.line in (4, 5)  # where the parser gives up
    assert err.message.startswith("not valid YAML: ")
    err = the_error({"b.yaml": "rules:\n\tfoo: 1\n"})
    assert (err.file, err.line) == ("b.yaml", 2)
    assert "not valid YAML" in err.message


def test_yaml_error_in_one_file_does_not_hide_errors_in_another() -> None:
    errs = errors(
        {
            "a.yaml": "rules: [\n",
            "b.yaml": one_rule("tier == diamond"),
            "c.yaml": "- just a list\n",
            "d.yaml": "",  # an empty file is no rules, not an error
        }
    )
    assert [(e.file, e.line) for e in errs] == [("a.yaml", 2), ("b.yaml", 4), ("c.yaml", 1)]
    assert "not valid YAML" in errs[0].message
    assert "diamond" in errs[1].message
    assert "valid dictionary" in errs[2].message


def test_empty_rule_file_and_empty_rules() -> None:
    pack = build({"a.yaml": "", "b.yaml": "rules: []\n", "c.yaml": "# nothing\n"})
    assert pack.rules == []


def test_rule_file_must_be_a_mapping_with_rules() -> None:
    err = the_error({"a.yaml": "rulez: []\n"})
    assert (err.file, err.line) == ("a.yaml", 1)
    assert err.message == "rulez: unknown field"


# --------------------------------------------------------------------------- rule fields


def test_duplicate_rule_name_across_files_names_the_first() -> None:
    a = "rules:\n  - name: one\n    then: [{add_tag: x}]\n  - name: dup\n    then: [{add_tag: x}]\n"
    b = (
        "rules:\n\n  - name: other\n    then: [{add_tag: x}]\n"
        "  - name: dup\n    then: [{add_tag: y}]\n"
    )
    err = the_error({"b.yaml": b, "a.yaml": a})  # files are read in name order
    assert (err.file, err.line) == ("b.yaml", 5)
    assert err.message == "duplicate rule name 'dup' (first in a.yaml:4)"


def test_duplicate_rule_name_in_one_file() -> None:
    a = "rules:\n  - name: dup\n    then: [{add_tag: x}]\n  - name: dup\n    then: [{add_tag: x}]\n"
    err = the_error({"a.yaml": a})
    assert (err.file, err.line) == ("a.yaml", 4)
    assert "(first in a.yaml:2)" in err.message


def test_duplicate_rule_name_with_load_pack_names_the_first_file_path(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (tmp_path / "program.yaml").write_text(PROGRAM)
    a = "rules:\n  - name: one\n    then: [{add_tag: x}]\n  - name: dup\n    then: [{add_tag: x}]\n"
    (rules_dir / "a.yaml").write_text(a)
    (rules_dir / "b.yaml").write_text("rules:\n  - name: dup\n    then: [{add_tag: y}]\n")
    with pytest.raises(SourceError) as info:
        load_pack(rules_dir)
    [err] = info.value.errors
    assert (err.file, err.line) == (str(rules_dir / "b.yaml"), 2)
    assert err.message == f"duplicate rule name 'dup' (first in {rules_dir / 'a.yaml'}:4)"


def test_rule_names_are_case_sensitive() -> None:
    a = "rules:\n  - name: Dup\n    then: [{add_tag: x}]\n  - name: dup\n    then: [{add_tag: x}]\n"
    assert len(build({"a.yaml": a}).rules) == 2


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("priority: high", "rules.0.priority: Input should be a valid integer"),
        ("enabled: maybe", "rules.0.enabled: Input should be a valid boolean"),
        ("colour: red", "rules.0.colour: unknown field"),
        ("on: Purchase", "rules.0.on: 'Purchase' is not a valid name"),
        ("description: [1]", "rules.0.description"),
    ],
)
def test_bad_rule_fields(field: str, expected: str) -> None:
    text = f"rules:\n  - name: r\n    {field}\n    then: [{{add_tag: x}}]\n"
    errs = errors({"a.yaml": text})
    assert {(e.file, e.line) for e in errs} == {("a.yaml", 3)}
    assert any(expected in e.message for e in errs), [e.message for e in errs]


def test_then_is_required_and_not_empty() -> None:
    err = the_error({"a.yaml": "rules:\n  - name: r\n    then: []\n"})
    assert (err.file, err.line) == ("a.yaml", 3)
    assert "at least 1 item" in err.message
    err = the_error({"a.yaml": "rules:\n  - name: r\n    on: purchase\n"})
    assert err.line == 2
    assert err.message == "rules.0: required field 'then' is missing"


def test_missing_field_is_named() -> None:
    err = the_error({"a.yaml": "rules:\n  - description: no name\n    then: [{add_tag: x}]\n"})
    assert (err.file, err.line) == ("a.yaml", 2)
    assert err.message == "rules.0: required field 'name' is missing"


def test_empty_on_list_is_refused() -> None:
    errs = errors({"a.yaml": "rules:\n  - name: r\n    on: []\n    then: [{add_tag: x}]\n"})
    assert {(e.file, e.line) for e in errs} == {("a.yaml", 3)}
    assert any("at least 1 item" in e.message for e in errs), [e.message for e in errs]
    with pytest.raises(ValueError):
        Rule.model_validate({"name": "r", "on": [], "then": [{"add_tag": "x"}]})


@pytest.mark.parametrize("name", ["Big Spender", "-lead", "_x", "a/b", "é", ""])
def test_bad_rule_name_message_fits_rule_names(name: str) -> None:
    text = f"rules:\n  - name: '{name}'\n    then: [{{add_tag: x}}]\n"
    err = the_error({"a.yaml": text})
    assert (err.file, err.line) == ("a.yaml", 2)
    assert err.message == (
        f"rules.0.name: {name!r} is not a valid rule name; expected letters, digits and "
        "_ . : - (no spaces), starting with a letter or digit"
    )


def test_valid_rule_names() -> None:
    for name in ("Big-Spender", "9lives", "a.b:c_d-e", "x" * 100):
        Rule.model_validate({"name": name, "then": [{"add_tag": "x"}]})
    with pytest.raises(ValueError):
        Rule.model_validate({"name": "x" * 101, "then": [{"add_tag": "x"}]})


def test_several_errors_in_one_file_all_reported_at_once() -> None:
    text = textwrap.dedent(
        """\
        rules:
          - name: a
            when: spend_7d > 1
            then: [{add_tag: x}]
          - name: b
            when: tier < gold
            then:
              - set_tier: diamond
              - award_points: "event.amount ** 2"
          - name: c
            when: tags == vip
            then: [{add_tag: x}]
        """
    )
    other = one_rule('spend_30d >= "lots"')
    errs = errors({"z.yaml": other, "a.yaml": text})
    assert [(e.file, e.line) for e in errs] == [
        ("a.yaml", 3),
        ("a.yaml", 6),
        ("a.yaml", 8),
        ("a.yaml", 9),
        ("a.yaml", 11),
        ("z.yaml", 4),
    ]


def test_several_schema_errors_in_one_file_all_reported_at_once() -> None:
    text = textwrap.dedent(
        """\
        rules:
          - name: a
            when: "spend_30d is big"
            then: [{add_tag: x}]
          - name: b
            then:
              - send_sms: hi
          - name: c
            priority: high
            then: [{add_tag: x}]
        """
    )
    errs = errors({"a.yaml": text})
    assert [(e.file, e.line) for e in errs] == [("a.yaml", 3), ("a.yaml", 7), ("a.yaml", 9)]


# --------------------------------------------------------------------------- programme


def program_error(program: str) -> SourceProblem:
    return the_error({}, program)


def test_program_welcome_tier_not_defined() -> None:
    err = program_error(PROGRAM.replace("welcome_tier: basic", "welcome_tier: diamond"))
    assert (err.file, err.line) == ("program.yaml", 2)
    assert err.message == (
        "welcome_tier: welcome_tier 'diamond' is not one of the tiers: basic, silver, gold"
    )


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("welcome_tier: basic", "welcome_tier: diamond", 2),
        # the tier checks look at the whole list: they are reported at its `tiers:` line
        ("{name: silver, rank: 1", "{name: silver, rank: 0", 3),
        ("{name: silver", "{name: basic", 3),
    ],
)
def test_program_model_errors_point_at_the_line(old: str, new: str, line: int) -> None:
    assert program_error(PROGRAM.replace(old, new)).line == line


def test_program_errors_point_at_the_line_whatever_the_field_order() -> None:
    # welcome_tier written after the tiers: still its own line
    moved = PROGRAM.replace("welcome_tier: basic\n", "") + "welcome_tier: diamond\n"
    err = program_error(moved)
    assert (err.file, err.line) == ("program.yaml", 13)
    assert "welcome_tier 'diamond' is not one of the tiers: basic, silver, gold" in err.message


def test_program_duplicate_rank_and_name() -> None:
    err = program_error(PROGRAM.replace("{name: silver, rank: 1", "{name: silver, rank: 0"))
    assert (err.file, err.line) == ("program.yaml", 3)
    assert err.message == "tiers: tier ranks must be unique: rank 0 repeated"
    err = program_error(PROGRAM.replace("{name: silver", "{name: basic"))
    assert (err.file, err.line) == ("program.yaml", 3)
    assert err.message == "tiers: tier names must be unique: basic repeated"
    both = PROGRAM.replace("{name: silver", "{name: basic").replace("{name: gold", "{name: basic")
    assert program_error(both).message == "tiers: tier names must be unique: basic repeated"


def test_program_bad_tiers_do_not_also_report_the_welcome_tier() -> None:
    # welcome_tier is checked against valid tiers only: one problem, at the tiers
    text = PROGRAM.replace("{name: silver", "{name: basic").replace(
        "welcome_tier: basic", "welcome_tier: diamond"
    )
    err = program_error(text)
    assert (err.file, err.line) == ("program.yaml", 3)
    assert "tier names must be unique" in err.message


@pytest.mark.parametrize(
    ("extra", "line", "expected"),
    [
        ("points:\n  expiry: {policy: whenever}\n", 15, "points.expiry: Input tag 'whenever'"),
        ("points:\n  expiry: {policy: rolling}\n", 15, "points.expiry: required field"),
        ("points:\n  rounding: up\n", 15, "points.rounding: expected 'floor', 'round' or 'ceil'"),
        ("points:\n  earn_rate: -1\n", 15, "points.earn_rate: Input should be greater than"),
        ("tier_policy:\n  downgrade: {policy: never}\n", 15, "tier_policy.downgrade"),
        ("tier_policy:\n  window_days: 0\n", 15, "tier_policy.window_days"),
        ("colour: red\n", 14, "colour: unknown field"),
        ("purchase_event: Purchase\n", 14, "'Purchase' is not a valid name"),
    ],
)
def test_program_field_errors(extra: str, line: int, expected: str) -> None:
    err = program_error(PROGRAM + extra)
    assert (err.file, err.line) == ("program.yaml", line)
    assert expected in err.message, err.message


def test_program_field_errors_inside_tiers_and_properties() -> None:
    err = program_error(PROGRAM.replace("amount: number", "amount: integer"))
    assert (err.file, err.line) == ("program.yaml", 8)
    assert (
        "event_properties.amount: expected 'number', 'money', 'string' or 'boolean'" in err.message
    )
    err = program_error(
        PROGRAM.replace("metric: spend, threshold: 2000", "metric: visits, threshold: 1")
    )
    assert (err.file, err.line) == ("program.yaml", 5)
    assert "tiers.1.qualify.metric: expected 'spend' or 'points_earned'" in err.message
    err = program_error(PROGRAM.replace("program: Test Rewards", "program: T\ncurrency: yuan"))
    assert (err.file, err.line) == ("program.yaml", 2)
    assert "currency" in err.message


def test_program_yaml_error_and_empty_program() -> None:
    err = program_error("program: [\n")
    assert err.file == "program.yaml"
    assert err.line == 2
    assert "not valid YAML" in err.message
    err = program_error("")
    assert (err.file, err.line) == ("program.yaml", None)
    assert str(err) == f"program.yaml: {err.message}"


def test_program_defaults() -> None:
    program = Program.model_validate(yaml_load(PROGRAM))
    assert program.currency == "CNY"
    assert program.points.expiry.policy == "rolling"
    assert program.tier_policy.window_days == 365
    assert program.purchase_event == "purchase"
    assert program.tier("gold") is not None
    assert program.tier("diamond") is None
    assert program.tier(None) is None
    assert [t.name for t in program.ordered_tiers()] == ["basic", "silver", "gold"]
    minimal = Program.model_validate(
        {
            "program": "p",
            "welcome_tier": "b",
            "tiers": [{"name": "b", "rank": 0, "qualify": {"metric": "spend", "threshold": 0}}],
        }
    )
    assert minimal.event_properties == {
        "amount": "money",
        "currency": "string",
        "order_id": "string",
    }
    assert minimal.points.pending_days == 0 and minimal.points.negative_balance == "forbid"
    assert minimal.points.clawback == "order" and minimal.refund_event == "refund"


# --------------------------------------------------------------------------- schema, examples


@pytest.mark.parametrize("model", [RuleFile, Program, Rule])
def test_json_schema(model: Any) -> None:
    schema = model.model_json_schema()
    assert schema["type"] == "object"
    json.dumps(schema)  # plain JSON


def test_rule_file_schema_mentions_every_effect_and_condition() -> None:
    text = json.dumps(RuleFile.model_json_schema())
    for key in ("add_tag", "award_points", "set_tier", "retention_action", "set_stage"):
        assert key in text
    for key in ('"all"', '"any"', '"not"', '"contains"', '"not_in"', '"exists"'):
        assert key in text


def test_examples_load() -> None:
    pack, src = load_pack(REPO / "examples" / "rules")
    assert len(pack.rules) == 11
    names = [r.rule.name for r in pack.rules]
    assert len(set(names)) == 11
    assert names[0] == "earn-on-purchase"
    assert [r.index for r in pack.rules] == list(range(11))
    assert pack.rules[0].file == "10-points.yaml"
    assert src.program_path.endswith("program.yaml")
    assert pack.version == content_version(src.program_text, src.files)
    assert [name for name, _ in src.files] == sorted(name for name, _ in src.files)
    # awarded amounts parse, and set_tier names a defined tier
    for r in pack.rules:
        for effect in r.rule.then:
            if isinstance(effect, SetTier):
                assert pack.program.tier(effect.set_tier) is not None
            if isinstance(effect, AwardPoints):
                assert effect.award_points.amount is not None


def test_example_source_rebuilds_to_the_same_version(tmp_path: Path) -> None:
    src = read_source(REPO / "examples" / "rules")
    first = build_pack(src)
    again = build_pack(PackSource(src.program_path, src.program_text, list(reversed(src.files))))
    assert again.version == first.version
    changed = PackSource(src.program_path, src.program_text + "\n# edit\n", src.files)
    assert build_pack(changed).version != first.version


def test_load_pack_finds_program_and_reports_paths(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (tmp_path / "program.yaml").write_text(PROGRAM)
    (rules_dir / "a.yaml").write_text(one_rule("tier == diamond"))
    (rules_dir / "b.yml").write_text(one_rule("tier == gold").replace("name: r", "name: s"))
    (rules_dir / "notes.txt").write_text("not a rule file")
    with pytest.raises(SourceError) as info:
        load_pack(rules_dir)
    [err] = info.value.errors
    assert err.file == str(rules_dir / "a.yaml")
    assert err.line == 4
    (rules_dir / "a.yaml").write_text(one_rule("tier == silver"))
    pack, src = load_pack(rules_dir)
    assert [(r.file, r.rule.name) for r in pack.rules] == [("a.yaml", "r"), ("b.yml", "s")]
    assert src.program_path == str(tmp_path / "program.yaml")


def test_load_pack_without_program(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no program\.yaml in this folder or its parent"):
        load_pack(tmp_path)
    (tmp_path / "program.yaml").write_text(PROGRAM)
    with pytest.raises(SourceError, match="not a folder of rule files"):
        load_pack(tmp_path / "missing", tmp_path / "program.yaml")


def test_program_file_in_rules_dir_is_not_a_rule_file(tmp_path: Path) -> None:
    (tmp_path / "program.yaml").write_text(PROGRAM)
    (tmp_path / "a.yaml").write_text(one_rule("tier == gold"))
    pack, src = load_pack(tmp_path)
    assert [name for name, _ in src.files] == ["a.yaml"]
    assert len(pack.rules) == 1


def test_rule_error_text() -> None:
    assert str(SourceProblem("a.yaml", 3, "bad")) == "a.yaml:3: bad"
    assert str(SourceProblem("a.yaml", None, "bad")) == "a.yaml: bad"
    exc = SourceError([SourceProblem("a", 1, "x"), SourceProblem("b", None, "y")])
    assert str(exc) == "a:1: x\nb: y"
    assert isinstance(exc, ValueError)


def test_pyyaml_would_read_on_as_true() -> None:
    # the reason for the YAML 1.2 loader: plain safe_load turns the `on:` key into True
    assert yaml.safe_load("on: purchase") == {True: "purchase"}


def test_a_date_that_does_not_exist_is_reported_with_its_line() -> None:
    from rules.source import SourceError, parse_yaml

    try:
        parse_yaml("rules: []\nsince: 2025-02-30\n", "x.yaml")
    except SourceError as exc:
        (err,) = exc.errors
        assert (err.file, err.line) == ("x.yaml", 2)
        assert err.message.startswith("not a valid date") and "YYYY-MM-DD" in err.message
    else:
        raise AssertionError("2025-02-30 was accepted")


# --------------------------------------------------------------------------- points policy


def test_deduct_points_on_a_refund_is_refused_while_refunds_claw_back_by_order() -> None:
    rule = (
        "rules:\n  - name: old-refund\n    on: refund\n    then:\n"
        "      - deduct_points: {amount: event.amount, reason: refund}\n"
    )
    err = the_error({"r.yaml": rule})
    assert (err.file, err.line) == ("r.yaml", 5)
    assert "refunds already claw back the order's points" in err.message
    # with clawback off, the old style of rule is the programme's own choice
    off = PROGRAM + "points: {clawback: none}\n"
    assert [r.rule.name for r in build({"r.yaml": rule}, off).rules] == ["old-refund"]


def test_a_reason_naming_an_event_field_is_refused() -> None:
    rule = (
        "rules:\n  - name: goodwill\n    on: purchase\n    then:\n"
        "      - award_points: {amount: 10, reason: event.reason}\n"
    )
    err = the_error({"r.yaml": rule})
    assert (err.file, err.line) == ("r.yaml", 5)
    assert err.message.startswith("reason 'event.reason' is stored as this literal text")


def test_pending_days_must_end_before_the_points_expire() -> None:
    err = program_error(
        PROGRAM + "points: {pending_days: 30, expiry: {policy: rolling, days: 30}}\n"
    )
    assert err.line == 14
    assert "pending_days (30) must be shorter than the expiry (30 days)" in err.message
    ok = build({}, PROGRAM + "points: {pending_days: 14, negative_balance: allow}\n")
    assert ok.program.points.pending_days == 14 and ok.program.points.negative_balance == "allow"


def test_money_is_read_as_a_number_by_the_rules() -> None:
    money = PROGRAM.replace("  amount: number", "  amount: money")
    pack = build({"r.yaml": one_rule("event.amount >= 100")}, money)
    assert pack.rules[0].rule.name == "r"
    err = the_error({"r.yaml": one_rule("event.amount contains 1")}, money)
    assert "does not fit event.amount (number)" in err.message


# --------------------------------------------------------------------------- event types


DECLARED = PROGRAM + "event_types: [purchase, sign_in, page_view]\n"


def test_an_undeclared_event_type_is_refused_at_its_line_listing_the_declared_ones() -> None:
    rule = "rules:\n  - name: r\n    on: sign_up\n    then: [{add_tag: x}]\n"
    err = the_error({"r.yaml": rule}, DECLARED)
    assert (err.file, err.line) == ("r.yaml", 3)
    assert err.message.startswith(
        "on: event type 'sign_up' is not declared in event_types in program.yaml; "
        "declared: purchase, sign_in, page_view (built in: purchase, refund, "
    )
    assert "unsubscribed" in err.message and "churn_scan" in err.message
    # in a list, each undeclared type at its own line
    listed = "rules:\n  - name: r\n    on:\n      - sign_in\n      - signin\n      - pageview\n"
    errs = errors({"r.yaml": listed + "    then: [{add_tag: x}]\n"}, DECLARED)
    assert [(e.line, e.message.split(";")[0]) for e in errs] == [
        (5, "on: event type 'signin' is not declared in event_types in program.yaml"),
        (6, "on: event type 'pageview' is not declared in event_types in program.yaml"),
    ]


@pytest.mark.parametrize(
    "event_type",
    [
        "purchase",
        "refund",
        "sales_follow_up",
        "unsubscribed",
        "points_expiring",
        "churn_scan",
        "lead_sla_check",
        "tier_changed",
        "birthday",
        "membership_anniversary",
    ],
)
def test_built_in_event_types_need_no_declaring(event_type: str) -> None:
    program = PROGRAM + "event_types: [sign_in]\n"
    rule = f"rules:\n  - name: r\n    on: {event_type}\n    then: [{{add_tag: x}}]\n"
    assert build({"r.yaml": rule}, program).rules[0].rule.event_types() == [event_type]


def test_the_programmes_own_event_names_are_built_in() -> None:
    program = PROGRAM + "event_types: [sign_in]\npurchase_event: order\nrefund_event: return\n"
    rule = "rules:\n  - name: r\n    on: [order, return]\n    then: [{add_tag: x}]\n"
    assert build({"r.yaml": rule}, program).rules[0].rule.event_types() == ["order", "return"]
    err = the_error({"r.yaml": rule.replace("return]", "purchase]")}, program)
    assert "event type 'purchase' is not declared" in err.message  # not this programme's


def test_no_event_types_means_any_event_type() -> None:
    assert Program.model_validate({**yaml.safe_load(PROGRAM)}).event_types == []
    rule = "rules:\n  - name: r\n    on: [anything_at_all, x]\n    then: [{add_tag: x}]\n"
    assert build({"r.yaml": rule}).rules[0].rule.event_types() == ["anything_at_all", "x"]
    bad = program_error(PROGRAM + "event_types: [Sign In]\n")
    assert bad.line == 14 and "event_types.0" in bad.message


def test_automation_events_written_by_the_store_are_built_in() -> None:
    """Every event type store/automations.py writes is one rules may always listen to."""
    import re

    from rules.pack import AUTOMATION_EVENTS

    text = (REPO / "store" / "automations.py").read_text()
    written = set(re.findall(r'_event\(\s*"([a-z_]+)"', text))
    written |= {"birthday", "membership_anniversary"}  # the date events, by their kind
    assert written >= {"points_expiring", "churn_scan", "lead_sla_check", "tier_changed"}
    assert written <= set(AUTOMATION_EVENTS)


def test_the_examples_declare_what_their_rules_and_journeys_use() -> None:
    from rules.pack import builtin_event_types

    pack, _ = load_pack(REPO / "examples" / "rules")  # their rules' `on:` are declared
    program = pack.program
    assert program.event_types
    known = {*program.event_types, *builtin_event_types(program)}
    for journey in sorted((REPO / "examples" / "journeys").glob("*.yaml")):
        data = yaml.safe_load(journey.read_text())
        used = [data.get("entry"), data.get("goal")]
        events = [d["event"] for d in used if isinstance(d, dict) and "event" in d]
        assert set(events) <= known, journey.name


# --------------------------------------------------------------------------- journey names


JOURNEY_RULES = (
    "rules:\n"
    "  - name: r\n"
    "    then:\n"
    "      - enroll_journey: welcom\n"
    "      - journey_event: {journey: winback, event: churn_risk}\n"
    "      - journey_event: {journey: win-back, event: churn_risk}\n"
)


def test_a_journey_that_does_not_exist_is_refused_at_its_line() -> None:
    with pytest.raises(SourceError) as info:
        build_pack(source({"r.yaml": JOURNEY_RULES}), journeys=["welcome", "winback"])
    errs = info.value.errors
    assert [(e.file, e.line, e.message) for e in errs] == [
        (
            "r.yaml",
            4,
            "enroll_journey: journey 'welcom' does not exist; journeys: welcome, winback",
        ),
        (
            "r.yaml",
            6,
            "journey_event: journey 'win-back' does not exist; journeys: welcome, winback",
        ),
    ]
    with pytest.raises(SourceError) as none:
        build_pack(source({"r.yaml": JOURNEY_RULES}), journeys=[])
    assert "journeys: none" in str(none.value)


def test_journey_names_are_not_checked_without_the_journeys() -> None:
    from rules.pack import named_journeys

    pack = build({"r.yaml": JOURNEY_RULES})
    assert named_journeys(pack) == ["welcom", "win-back", "winback"]
    ok = build_pack(source({"r.yaml": JOURNEY_RULES}), journeys=["welcom", "winback", "win-back"])
    assert len(ok.rules) == 1
