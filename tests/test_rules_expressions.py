"""rules/expressions.py: arithmetic over numeric facts for effect amounts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rules.expressions import ExpressionError, parse_expression

FACTS: dict[str, Any] = {
    "event.amount": 10.5,
    "spend_30d": 200,
    "zero": 0,
    "neg": -3,
    "tier_rank": 2,
    "flag": True,
    "name": "gold",
}


def ev(text: str, facts: dict[str, Any] | None = None) -> float | None:
    evaluate, _ = parse_expression(text)
    return evaluate(FACTS if facts is None else facts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        ("2.5", 2.5),
        ("1 + 2", 3.0),
        ("7 - 10", -3.0),
        ("3 * 4", 12.0),
        ("7 / 2", 3.5),
        ("7 // 2", 3.0),
        ("-7 // 2", -4.0),
        ("7 % 3", 1.0),
        ("-7 % 3", 2.0),
        ("-5", -5.0),
        ("+5", 5.0),
        ("--5", 5.0),
        ("2 + 3 * 4", 14.0),
        ("(2 + 3) * 4", 20.0),
        ("event.amount", 10.5),
        ("event.amount * 2", 21.0),
        ("event.amount * 2 + spend_30d", 221.0),
        ("spend_30d / tier_rank", 100.0),
        ("-neg", 3.0),
        ("min(event.amount, spend_30d)", 10.5),
        ("min(3, 1, 2)", 1.0),
        ("max(event.amount, spend_30d, 1000)", 1000.0),
        ("round(event.amount)", 10.0),  # banker's rounding: 10.5 -> 10
        ("round(11.5)", 12.0),
        ("floor(event.amount)", 10.0),
        ("floor(neg / 2)", -2.0),
        ("ceil(event.amount)", 11.0),
        ("abs(neg)", 3.0),
        ("abs(neg) * max(1, tier_rank)", 6.0),
        ("  event.amount  ", 10.5),
    ],
)
def test_arithmetic_and_functions(text: str, expected: float) -> None:
    result = ev(text)
    assert result == expected
    assert isinstance(result, float)


def test_integer_facts_give_floats() -> None:
    assert ev("spend_30d") == 200.0
    assert isinstance(ev("spend_30d"), float)


@pytest.mark.parametrize(
    "text",
    [
        "missing",
        "event.missing * 2",
        "event.amount + missing",
        "min(event.amount, missing)",
        "floor(missing)",
        "-missing",
        "flag",  # a boolean is not a number
        "flag + 1",
        "name * 2",  # nor is text
    ],
)
def test_missing_or_non_numeric_fact_gives_none(text: str) -> None:
    assert ev(text) is None


def test_none_valued_fact_is_missing() -> None:
    assert ev("event.amount * 2", {"event.amount": None}) is None
    assert ev("event.amount * 2", {}) is None


@pytest.mark.parametrize(
    "text",
    ["1 / 0", "event.amount / zero", "event.amount // zero", "event.amount % zero", "5 % 0"],
)
def test_division_by_zero_gives_none(text: str) -> None:
    assert ev(text) is None


def test_overflow_to_infinity_gives_none() -> None:
    assert ev("event.amount * 1e308 * 10") is None


@pytest.mark.parametrize(
    "text",
    [
        "floor(event.amount / zero)",
        "ceil(1 / 0)",
        "round(event.amount % zero)",
        "floor(event.amount * 1e308 * 10)",
        "round(event.amount * 1e308 * 10, 2)",
        "ceil(event.amount * 1e308 * -10)",
        "abs(event.amount / zero)",
        "min(event.amount / zero, 1)",
        "max(event.amount % zero, 1)",
    ],
)
def test_function_of_division_by_zero_gives_none(text: str) -> None:
    # floor/ceil/round of NaN or an infinity raise in Python; the evaluator gives None
    assert ev(text) is None


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("min(1, event.amount / zero)", FACTS),
        ("max(1, event.amount / zero)", FACTS),
        ("min(1, 2, event.amount % zero)", FACTS),
        ("max(0, event.amount)", {"event.amount": math.nan}),
    ],
)
def test_min_max_of_a_division_by_zero_gives_none_whatever_the_order(
    text: str, facts: dict[str, Any]
) -> None:
    assert ev(text, facts) is None


@pytest.mark.parametrize(
    "text", ["floor(event.amount)", "ceil(event.amount)", "round(event.amount)"]
)
@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf])
def test_function_of_a_non_finite_fact_gives_none(text: str, amount: float) -> None:
    assert ev(text, {"event.amount": amount}) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("round(event.amount, 0)", 10.0),
        ("round(1.256, 2)", 1.26),
        ("round(1.256, 1)", 1.3),
        ("round(1234, -2)", 1200.0),
        ("round(event.amount, tier_rank)", 10.5),
        ("round(1.256, 1.9)", 1.3),  # the number of digits is truncated to an int
        ("min(event.amount, 1)", 1.0),
        ("max(1, 2, 3, 4, 5)", 5.0),
    ],
)
def test_round_digits_and_many_arguments(text: str, expected: float) -> None:
    assert ev(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("round(event.amount, 2, 1)", "round() takes 1 to 2 arguments, not 3"),
        ("floor(event.amount, 2)", "floor() takes 1 argument, not 2"),
        ("ceil(1, 2)", "ceil() takes 1 argument, not 2"),
        ("abs(neg, 1)", "abs() takes 1 argument, not 2"),
        ("min(event.amount)", "min() takes 2 or more arguments, not 1"),
        ("max(5)", "max() takes 2 or more arguments, not 1"),
        ("1 + floor(min(event.amount), 2)", "takes"),  # nested calls are checked too
    ],
)
def test_wrong_arity_refused_at_parse_time(text: str, expected: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)  # at load time, not a TypeError at event time
    assert repr(text) in str(info.value)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "event.amount ** 2",
        "2 ** 10",
        "event.amount.bit_length()",
        "event.amount.__class__",  # a dotted name: parses as a fact (see test below)
        "open('x')",
        "eval('1')",
        "'text'",
        "'a' * 3",
        "True",
        "None",
        "1j",
        "[1, 2]",
        "(1, 2)",
        "{1: 2}",
        "x if y else z",
        "lambda: 1",
        "event.amount > 3",
        "event.amount and 1",
        "not event.amount",
        "~event.amount",
        "event.amount << 2",
        "event.amount & 1",
        "event.amount | 1",
        "event.amount ^ 1",
        "min(*[1, 2])",
        "min(a=1)",
        "min()",
        "round(event.amount, ndigits=2)",
        "sum(1, 2)",
        "math.floor(1)",
        "(event.amount + 1).real",
        "event['amount']",
        "f'{event.amount}'",
        "(x := 1)",
        "[x for x in y]",
    ],
)
def test_forbidden_constructs_raise(text: str) -> None:
    if text == "event.amount.__class__":
        # not refused by the parser, but read as the fact "event.amount.__class__", which the
        # pack check rejects as an unknown fact; evaluation never touches Python attributes
        evaluate, facts = parse_expression(text)
        assert facts == ["event.amount.__class__"]
        assert evaluate(FACTS) is None
        return
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["", "event.amount +", "1 +* 2", "(1", "event.", "1 2"])
def test_syntax_errors_raise(text: str) -> None:
    with pytest.raises(ExpressionError, match="does not parse"):
        parse_expression(text)


def test_not_allowed_message_names_the_construct() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression("event.amount ** 2")
    msg = str(info.value)
    assert "'event.amount ** 2' is not allowed" in msg
    assert "min max round floor ceil abs" in msg


def test_boolean_constant_refused_with_reason() -> None:
    with pytest.raises(ExpressionError, match="booleans are not numbers"):
        parse_expression("event.amount * True")


def test_error_is_a_value_error() -> None:
    assert issubclass(ExpressionError, ValueError)


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("1 + 2", []),
        ("event.amount", ["event.amount"]),
        ("event.amount * tier_rank", ["event.amount", "tier_rank"]),
        ("min(spend_30d, attributes.limit) + abs(neg)", ["spend_30d", "attributes.limit", "neg"]),
        ("consent.email", ["consent.email"]),
        ("a.b.c.d", ["a.b.c.d"]),
        ("event.amount + event.amount", ["event.amount", "event.amount"]),
    ],
)
def test_facts_read_are_returned(text: str, facts: list[str]) -> None:
    _, read = parse_expression(text)
    assert read == facts


def test_function_names_are_not_facts() -> None:
    _, read = parse_expression("floor(event.amount) + ceil(1) + round(2) + abs(3)")
    assert read == ["event.amount"]


def test_bare_function_name_is_read_as_a_fact() -> None:
    # `min` without a call is a plain name, i.e. a fact called "min"
    evaluate, read = parse_expression("min")
    assert read == ["min"]
    assert evaluate({"min": 4}) == 4.0


def test_evaluator_is_reusable_and_pure() -> None:
    evaluate, _ = parse_expression("event.amount * 2")
    facts = {"event.amount": 3}
    assert evaluate(facts) == 6.0
    assert evaluate({"event.amount": 4.5}) == 9.0
    assert evaluate(facts) == 6.0
    assert facts == {"event.amount": 3}


def test_nan_fact_gives_none() -> None:
    assert ev("event.amount + 1", {"event.amount": math.nan}) is None
    assert ev("event.amount", {"event.amount": math.inf}) is None


@pytest.mark.parametrize(
    "text",
    [
        "-" * 5000 + "1",
        "(" * 300 + "1" + ")" * 300,
        "1" + " + 1" * 200,
        "event.amount" + " " * 500,
    ],
)
def test_deeply_nested_or_long_expression_refused_cleanly(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_deep_nesting_within_the_length_limit_is_refused_cleanly() -> None:
    # under 500 characters, but deeper than the recursive builder allows: refused, not a
    # RecursionError (what the limit is depends on the interpreter's stack)
    text = "-" * 499 + "1"
    try:
        evaluate, _ = parse_expression(text)
    except ExpressionError as exc:
        assert "nested too deeply" in str(exc)
    else:
        assert evaluate({}) == -1.0


def test_expression_of_500_characters_is_allowed() -> None:
    text = "1" + " + 1" * 124 + "   "
    assert len(text) == 500
    assert ev(text) == 125.0
