"""The interpreter's pure decisions: next node, split assignment, conditions (held to the
durable_rules engine), and message rendering with locale fallback in a strict sandbox."""

from __future__ import annotations

import itertools
import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import UndefinedError
from jinja2.sandbox import SecurityError

from journeys.conditions import evaluate
from journeys.interpret import HOLDOUT, assign_variant, choose_case, next_node, render_message
from journeys.models import BranchNode, Journey, MessageNode, SplitNode
from journeys.templates import choose_locale, sample_profile
from journeys.validate import load_journey
from rules.compiler import compile_pack
from rules.engine import DurableRulesEngine
from rules.models import All, AnyOf, Compare, Not, Program, Rule
from rules.source import yaml_load

# one engine for the module's checks, as a worker has one for its database
ENGINE = DurableRulesEngine()

REPO = Path(__file__).resolve().parents[1]
PROGRAM = Program.model_validate(yaml_load((REPO / "examples/program.yaml").read_text()))


def example(name: str) -> Journey:
    return load_journey(REPO / f"examples/journeys/{name}.yaml").journey


WELCOME = example("welcome")
WINBACK = example("winback")
BIRTHDAY = example("birthday")


def cond(data: Any) -> Any:
    """A condition model from YAML-like data, as a branch reads it."""
    branch = BranchNode.model_validate(
        {"type": "branch", "cases": [{"when": data, "next": "x"}], "default": "x"}
    )
    return branch.cases[0].when


def split(variants: list[tuple[str, float]], holdout: float | None = None) -> SplitNode:
    return SplitNode.model_validate(
        {
            "type": "split",
            "variants": [{"name": n, "weight": w, "next": "x"} for n, w in variants],
            "holdout": {"weight": holdout} if holdout is not None else None,
        }
    )


# --------------------------------------------------------------------------- next node


def test_welcome_path() -> None:
    assert next_node(WELCOME, "hello") == "wait_2d"
    assert next_node(WELCOME, "wait_2d") == "bought"
    assert next_node(WELCOME, "bought", facts={"purchases_30d": 1}) == "thank_you"
    assert next_node(WELCOME, "bought", facts={"purchases_30d": 0}) == "nudge"
    assert next_node(WELCOME, "bought", facts={}) == "nudge"  # a missing fact is no purchase
    assert next_node(WELCOME, "bought") == "nudge"
    assert next_node(WELCOME, "nudge") == "done"
    assert next_node(WELCOME, "done") is None


def test_wait_for_outcomes() -> None:
    assert next_node(WINBACK, "wait_purchase", "event") == "done"
    assert next_node(WINBACK, "wait_purchase", "timeout") == "reminder_time"
    with pytest.raises(ValueError, match="outcome must be 'event' or 'timeout'"):
        next_node(WINBACK, "wait_purchase", "maybe")


def test_split_outcomes() -> None:
    assert next_node(WINBACK, "offer_test", "discount") == "discount_email"
    assert next_node(WINBACK, "offer_test", "points") == "points_email"
    assert next_node(WINBACK, "offer_test", HOLDOUT) is None  # the holdout ends
    with pytest.raises(ValueError, match=r"variant name \(discount, points, holdout\)"):
        next_node(WINBACK, "offer_test", "other")


def test_update_and_delay_go_on() -> None:
    assert next_node(BIRTHDAY, "on_the_day") == "greeting"
    assert next_node(BIRTHDAY, "record_gift") == "done"


def test_unknown_node() -> None:
    with pytest.raises(KeyError, match="journey 'welcome' has no node 'nope'"):
        next_node(WELCOME, "nope")


def test_first_matching_case_wins() -> None:
    node = BranchNode.model_validate(
        {
            "type": "branch",
            "cases": [
                {"when": "tier == platinum", "next": "vip"},
                {"when": "tier_rank >= 1", "next": "member"},
                {"when": "tags contains vip", "next": "vip"},
            ],
            "default": "other",
        }
    )
    assert choose_case(node, {"tier": "platinum", "tier_rank": 3}) == "vip"
    assert choose_case(node, {"tier": "gold", "tier_rank": 2}) == "member"
    assert choose_case(node, {"tier_rank": 0, "tags": {"vip"}}) == "vip"
    assert choose_case(node, {"tier_rank": 0, "tags": set()}) == "other"


# --------------------------------------------------------------------------- split assignment


def test_assignment_is_stable() -> None:
    node = WINBACK.nodes["offer_test"]
    assert isinstance(node, SplitNode)
    first = [assign_variant("winback", f"c{i}", node, "offer_test") for i in range(500)]
    again = [
        assign_variant("winback", f"c{i}", node.model_copy(deep=True), "offer_test")
        for i in range(500)
    ]
    assert first == again
    assert set(first) == {"discount", "points", HOLDOUT}


def test_weights_over_twenty_thousand_customers() -> None:
    node = WINBACK.nodes["offer_test"]
    assert isinstance(node, SplitNode)
    n = 20_000
    counts = Counter(assign_variant("winback", f"cust-{i}", node, "offer_test") for i in range(n))
    # 4 standard deviations: sqrt(0.45 * 0.55 / 20000) = 0.0035, sqrt(0.1 * 0.9 / 20000) = 0.0021
    assert abs(counts["discount"] / n - 0.45) < 0.014
    assert abs(counts["points"] / n - 0.45) < 0.014
    assert abs(counts[HOLDOUT] / n - 0.10) < 0.0085


def test_weights_are_relative() -> None:
    node = split([("a", 1), ("b", 3)])
    n = 20_000
    counts = Counter(assign_variant("j", str(i), node, "s") for i in range(n))
    assert set(counts) == {"a", "b"}  # no holdout: everyone gets a variant
    assert abs(counts["a"] / n - 0.25) < 0.013


def test_splits_are_independent_of_each_other() -> None:
    node = split([("a", 1), ("b", 1)])
    n = 20_000
    same = sum(
        assign_variant("j", str(i), node, "first") == assign_variant("j", str(i), node, "second")
        for i in range(n)
    )
    assert abs(same / n - 0.5) < 0.015  # independent halves agree half the time
    other_journey = sum(
        assign_variant("j", str(i), node, "first") == assign_variant("k", str(i), node, "first")
        for i in range(n)
    )
    assert abs(other_journey / n - 0.5) < 0.015


def test_a_small_holdout_and_a_single_variant() -> None:
    node = split([("only", 99)], holdout=1)
    n = 20_000
    held = sum(assign_variant("j", str(i), node, "s") == HOLDOUT for i in range(n))
    assert abs(held / n - 0.01) < 0.003


def test_growing_the_holdout_moves_customers_only_into_it() -> None:
    small = split([("a", 50), ("b", 40)], holdout=10)
    large = split([("a", 50), ("b", 30)], holdout=20)
    for i in range(5000):
        before = assign_variant("j", str(i), small, "s")
        after = assign_variant("j", str(i), large, "s")
        assert before == after or after == HOLDOUT


# --------------------------------------------------------------------------- conditions


MISSING = object()
NAN, INF = math.nan, math.inf

CASES: list[tuple[str, Any, bool]] = [
    ("spend_30d == 5", 5, True),
    ("spend_30d == 5", 5.0, True),
    ("spend_30d == 5", "5", False),  # text is not a number
    ("spend_30d == 1", True, False),  # a bool is not a number
    ("spend_30d != 5", MISSING, True),  # != is the negation of ==
    ("spend_30d != 5", "5", True),
    ("spend_30d != 5", 5, False),
    ("spend_30d < 5", 4.5, True),
    ("spend_30d < 5", MISSING, False),
    ("spend_30d < 5", NAN, False),
    ("spend_30d > 5", INF, False),  # infinities are no value
    ("spend_30d >= 5", 5, True),
    ("spend_30d <= 5", "4", False),
    ("spend_30d in [1, 2, 3]", 2.0, True),
    ("spend_30d in [1, 2, 3]", 4, False),
    ("spend_30d not_in [1, 2, 3]", MISSING, True),
    ("spend_30d not_in [1, 2, 3]", 2, False),
    ("spend_30d exists", 0, True),
    ("spend_30d exists", MISSING, False),
    ("spend_30d exists", None, False),
    ("spend_30d exists", NAN, False),
    ("has_owner == true", True, True),
    ("has_owner == true", 1, False),
    ("has_owner != true", MISSING, True),
    ("tier == gold", "gold", True),
    ("tier == gold", "Gold", False),
    ("tier in [gold, platinum]", "platinum", True),
    ("attributes.x < b", "a", True),  # text orders by code point
    ("attributes.x < b", "B", True),
    ("attributes.x > false", True, True),
    ("attributes.x < 5", "1", False),
    ("tags contains vip", {"vip", "new"}, True),
    ("tags contains vip", ["vip"], True),
    ("tags contains vip", ("vip",), True),
    ("tags contains vip", frozenset({"vip"}), True),
    ("tags contains vip", "vip", False),  # a string is not a list
    ("tags contains vip", MISSING, False),
    ("tags exists", set(), True),
]


@pytest.mark.parametrize(("text", "value", "expected"), CASES)
def test_condition_semantics(text: str, value: Any, expected: bool) -> None:
    c = cond(text)
    facts = {} if value is MISSING else {c.fact: value}
    assert evaluate(c, facts) is expected


def test_all_any_not() -> None:
    facts = {"tier": "gold", "points_balance": 500.0, "tags": {"vip"}}
    assert evaluate(cond({"all": ["tier == gold", "points_balance > 100"]}), facts)
    assert not evaluate(cond({"all": ["tier == gold", "points_balance > 1000"]}), facts)
    assert evaluate(cond({"any": ["tier == silver", "tags contains vip"]}), facts)
    assert not evaluate(cond({"any": ["tier == silver", "tags contains new"]}), facts)
    assert evaluate(cond({"not": "tier == silver"}), facts)
    assert evaluate(cond({"not": "spend_30d > 5"}), facts)  # missing: the comparison is false
    assert evaluate(None, facts)


# The engine compiles the same conditions: the evaluator must agree with it everywhere.

NUMBER_FACTS = ("spend_30d", "event.amount")
NUMBERS = (-1, 0, 1, 2.5, 3, 100, 0.1, -0.0, 2**53 + 1, 123456789.125, 1e-05, 1e20)
FACT_NUMBERS = (*NUMBERS, -3, 0.5, 2, 3.0, 100.0, 1000, 0.1 + 0.2, 0.0, 2**53, 1e16)
STRINGS = ("web", "app", "", "shop", "héllo", "WEB", "0", "$and", "a b")
UNTYPED = "attributes.x"
SCALARS = (*NUMBERS, *STRINGS, "1", True, False)
FACT_SCALARS = (*FACT_NUMBERS, *STRINGS, "1", "2.5", True, False, math.nan, math.inf)
TAGS = ("vip", "new", "lapsed")
ORDER = ["<", "<=", ">", ">="]


def _compare(fact: str, op: str, value: Any = None) -> Compare:
    return Compare.model_validate({"fact": fact, "op": op, "value": value})


def _some(pool: tuple[Any, ...]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3)


compares: st.SearchStrategy[Compare] = st.one_of(
    st.builds(
        _compare,
        st.sampled_from(NUMBER_FACTS),
        st.sampled_from(["==", "!=", *ORDER]),
        st.sampled_from(NUMBERS),
    ),
    st.builds(
        _compare, st.sampled_from(NUMBER_FACTS), st.sampled_from(["in", "not_in"]), _some(NUMBERS)
    ),
    st.builds(
        _compare, st.just("event.channel"), st.sampled_from(["==", "!="]), st.sampled_from(STRINGS)
    ),
    st.builds(
        _compare, st.just("event.channel"), st.sampled_from(["in", "not_in"]), _some(STRINGS)
    ),
    st.builds(_compare, st.just("has_owner"), st.sampled_from(["==", "!="]), st.booleans()),
    st.builds(
        _compare,
        st.just(UNTYPED),
        st.sampled_from(["==", "!=", *ORDER]),
        st.sampled_from(SCALARS),
    ),
    st.builds(_compare, st.just(UNTYPED), st.sampled_from(["in", "not_in"]), _some(SCALARS)),
    st.builds(_compare, st.just("tags"), st.just("contains"), st.sampled_from((*TAGS, "other"))),
    st.builds(
        _compare,
        st.sampled_from((*NUMBER_FACTS, "event.channel", "has_owner", "tags", UNTYPED)),
        st.just("exists"),
    ),
)


def conditions(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return compares
    sub = conditions(depth - 1)
    return st.one_of(
        compares,
        st.lists(sub, min_size=1, max_size=3).map(lambda cs: All.model_validate({"all": cs})),
        st.lists(sub, min_size=1, max_size=3).map(lambda cs: AnyOf.model_validate({"any": cs})),
        sub.map(lambda c: Not.model_validate({"not": c})),
    )


def _maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


tag_sets = st.sets(st.sampled_from(TAGS))
facts_dicts: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "spend_30d": _maybe(st.sampled_from(FACT_NUMBERS)),
        "event.amount": _maybe(st.sampled_from((*FACT_NUMBERS, math.nan, -math.inf))),
        "event.channel": _maybe(st.sampled_from(STRINGS)),
        "has_owner": _maybe(st.booleans()),
        UNTYPED: _maybe(st.sampled_from(FACT_SCALARS)),
        "tags": _maybe(st.one_of(tag_sets, tag_sets.map(sorted), tag_sets.map(tuple))),
    },
)
_versions = itertools.count()


@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    conds=st.lists(conditions(3), min_size=30, max_size=30),
    facts_list=st.lists(facts_dicts, min_size=40, max_size=40),
)
def test_evaluator_agrees_with_the_rules_engine(
    conds: list[Any], facts_list: list[dict[str, Any]]
) -> None:
    rules = [
        ("j.yaml", Rule.model_validate({"name": f"c{i}", "when": c, "then": [{"add_tag": "x"}]}))
        for i, c in enumerate(conds)
    ]
    pack = compile_pack(f"journeys{next(_versions)}{uuid.uuid4().hex[:12]}", PROGRAM, rules)
    for facts in facts_list:
        engine = ENGINE.fired(pack, facts)
        ours = {i for i, c in enumerate(conds) if evaluate(c, facts)}
        assert ours == engine, {
            i: (conds[i], i in ours, i in engine) for i in sorted(ours ^ engine)
        } | {"facts": facts}


# --------------------------------------------------------------------------- rendering


def greeting() -> MessageNode:
    node = BIRTHDAY.nodes["greeting"]
    assert isinstance(node, MessageNode)
    return node


@pytest.mark.parametrize(
    ("locale", "variant"),
    [
        ("zh-CN", "zh-CN"),
        ("zh_CN", "zh-CN"),
        ("ZH-cn", "zh-CN"),
        ("zh", "zh-CN"),  # language: the only zh variant
        ("zh-TW", "zh-CN"),
        ("en", "en"),
        ("en-GB", "en"),  # language
        ("fr-FR", None),  # the default content
        ("", None),
        (None, None),
    ],
)
def test_locale_fallback(locale: str | None, variant: str | None) -> None:
    assert choose_locale(greeting().template, locale) == variant


def test_a_language_variant_beats_a_regional_one() -> None:
    node = MessageNode.model_validate(
        {
            "type": "message",
            "channel": "sms",
            "template": {
                "text": "default",
                "variants": {"pt-BR": {"text": "br"}, "pt": {"text": "pt"}},
            },
            "next": "x",
        }
    )
    assert render_message(node, {}, "pt-PT").text == "pt"
    assert render_message(node, {}, "pt-BR").text == "br"
    assert render_message(node, {}, "de").text == "default"


def test_render_in_the_customers_locale() -> None:
    profile = sample_profile(PROGRAM) | {"name": "王芳", "locale": "zh-CN"}
    message = render_message(greeting(), profile, unsubscribe_url="https://u.example/x")
    assert message.locale == "zh-CN" and message.channel == "email"
    assert message.subject == "王芳，生日快乐！"  # noqa: RUF001
    assert message.text is not None and "https://u.example/x" in message.text
    english = render_message(greeting(), profile | {"name": "Ann"}, "en-US")
    assert english.locale == "en" and english.subject == "Happy birthday, Ann!"
    default = render_message(greeting(), profile | {"name": "Ann", "locale": "de"})
    assert default.locale is None and default.subject == "Happy birthday, Ann!"


def test_html_is_escaped_and_text_is_not() -> None:
    node = WELCOME.nodes["hello"]
    assert isinstance(node, MessageNode)
    profile = sample_profile(PROGRAM) | {"name": "<b>Bob</b> & co", "locale": "en"}
    message = render_message(node, profile, unsubscribe_url="https://u.example/?a=1&b=2")
    assert message.html is not None and message.text is not None
    assert "&lt;b&gt;Bob&lt;/b&gt; &amp; co" in message.html
    assert 'href="https://u.example/?a=1&amp;b=2"' in message.html
    assert "<b>Bob</b> & co" in message.text
    assert message.subject == "Welcome to Acme Rewards, <b>Bob</b> & co"


def test_undefined_names_are_errors_not_blanks() -> None:
    profile = sample_profile(PROGRAM)
    del profile["name"]
    with pytest.raises(UndefinedError, match="'name'"):
        render_message(greeting(), profile, "en")


def test_templates_cannot_reach_python_internals() -> None:
    node = MessageNode.model_validate(
        {
            "type": "message",
            "channel": "sms",
            "template": {"text": "{{ customer.__class__.__subclasses__() }}"},
            "next": "x",
        }
    )
    with pytest.raises(SecurityError):
        render_message(node, {}, None)


def test_journey_name_is_in_the_context() -> None:
    node = MessageNode.model_validate(
        {"type": "message", "channel": "outbox", "template": {"text": "{{ journey }}"}, "next": "x"}
    )
    assert render_message(node, {}, journey="welcome").text == "welcome"
