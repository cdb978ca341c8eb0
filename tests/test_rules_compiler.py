"""The compiler to durable_rules and the engine: compiled rules fire exactly when they should.

durable_rules keeps every registered ruleset for the life of the process and ruleset names
must be unique, so every pack built here gets its own version string (`new_version()`).
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rules.compiler
from rules.compiler import (
    ALWAYS,
    CompiledPack,
    Keys,
    compile_condition,
    compile_pack,
    condition_facts,
    content_version,
)
from rules.engine import DurableRulesEngine
from rules.models import All, AnyOf, Compare, Not, Program, Rule
from rules.pack import PackSource, build_pack
from rules.source import SourceError, yaml_load

# one engine for the module's checks, as a worker has one for its database
ENGINE = DurableRulesEngine()

REPO = Path(__file__).resolve().parents[1]
PROGRAM_TEXT = (REPO / "examples" / "program.yaml").read_text()
PROGRAM = Program.model_validate(yaml_load(PROGRAM_TEXT))

_versions = itertools.count()


def new_version() -> str:
    return f"t{next(_versions)}{uuid.uuid4().hex[:12]}"


def cond(data: Any) -> Any:
    """A condition model from YAML-like data ("fact op value", {all: [...]}, ...)."""
    return Rule.model_validate({"name": "x", "when": data, "then": [{"add_tag": "x"}]}).when


def rule(
    name: str,
    when: Any = None,
    *,
    on: str | list[str] | None = None,
    priority: int = 0,
    enabled: bool = True,
) -> Rule:
    return Rule.model_validate(
        {
            "name": name,
            "when": when,
            "on": on,
            "priority": priority,
            "enabled": enabled,
            "then": [{"add_tag": "x"}],
        }
    )


def make_pack(rules_: Sequence[Rule | tuple[str, Rule]]) -> CompiledPack:
    entries = [r if isinstance(r, tuple) else ("a.yaml", r) for r in rules_]
    return compile_pack(new_version(), PROGRAM, entries)


def fired(pack: CompiledPack, facts: Mapping[str, Any]) -> set[int]:
    return ENGINE.fired(pack, dict(facts))


# --------------------------------------------------------------------------- reference


def ref_kind(value: Any) -> str | None:
    """The type a comparison sees: bool is not a number; NaN and infinities are no value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number" if math.isfinite(value) else None
    if isinstance(value, str):
        return "string"
    if isinstance(value, set | frozenset | list | tuple):
        return "list"
    return None


def ref_compare(c: Compare, facts: Mapping[str, Any]) -> bool:
    value = facts.get(c.fact)
    kind = ref_kind(value)
    if c.op == "exists":
        return kind is not None
    if c.op == "!=":
        return not ref_compare(Compare(fact=c.fact, op="==", value=c.value), facts)
    if c.op == "not_in":
        return not ref_compare(Compare(fact=c.fact, op="in", value=c.value), facts)
    if c.op == "contains":
        return isinstance(value, set | frozenset | list | tuple) and c.value in value
    if c.op == "in":
        assert isinstance(c.value, list)
        return any(ref_compare(Compare(fact=c.fact, op="==", value=v), facts) for v in c.value)
    # a comparison with a value of one type is false unless the fact has that type
    # (ints and floats are both numbers; a bool is not a number)
    if kind is None or kind != ref_kind(c.value):
        return False
    if c.op == "==":
        return bool(value == c.value)
    assert kind == "number", c
    ops = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return bool(ops[c.op](value, c.value))


def ref_condition(c: Any, facts: Mapping[str, Any]) -> bool:
    """The documented semantics, in plain Python."""
    if isinstance(c, All):
        return all(ref_condition(x, facts) for x in c.all)
    if isinstance(c, AnyOf):
        return any(ref_condition(x, facts) for x in c.any)
    if isinstance(c, Not):
        return not ref_condition(c.not_, facts)
    assert isinstance(c, Compare)
    return ref_compare(c, facts)


def ref_rule(r: Rule, facts: Mapping[str, Any]) -> bool:
    if not r.enabled:
        return False
    types = r.event_types()
    if types and facts.get("event.type") not in types:
        return False
    return r.when is None or ref_condition(r.when, facts)


def ref_fired(rules_: Sequence[Rule], facts: Mapping[str, Any]) -> set[int]:
    return {i for i, r in enumerate(rules_) if ref_rule(r, facts)}


def describe(c: Any) -> str:
    if isinstance(c, All):
        return "all(" + ", ".join(describe(x) for x in c.all) + ")"
    if isinstance(c, AnyOf):
        return "any(" + ", ".join(describe(x) for x in c.any) + ")"
    if isinstance(c, Not):
        return "not(" + describe(c.not_) + ")"
    if c is None:
        return "-"
    return f"{c.fact} {c.op} {c.value!r}" if c.op != "exists" else f"{c.fact} exists"


# --------------------------------------------------------------------------- generators

NUMBER_FACTS = ("spend_30d", "event.amount")
NUMBERS = (-1, 0, 1, 2.5, 3, 100, 0.1, -0.0, 2**53 + 1, 123456789.125, 1e-05, 1e20)
FACT_NUMBERS = (*NUMBERS, -3, 0.5, 2, 3.0, 7.25, 100.0, 1000, 0.1 + 0.2, 0.0, 2**53, 1e16, -1e17)
# numbers that are no value: a comparison never sees them, `exists` is false
NON_FINITE = (math.inf, -math.inf, math.nan)
STRINGS = ("web", "app", "", "shop", "héllo wörld", 'quote"d', "a\\b", "new\nline", "0", "$and")
FACT_STRINGS = (*STRINGS, "other", "WEB")
# an untyped attribute holds any scalar; rules compare it with numbers, text or booleans
UNTYPED = "attributes.x"
SCALARS = (*NUMBERS, *STRINGS, "1", "2.5", True, False)
FACT_SCALARS = (*FACT_NUMBERS, *FACT_STRINGS, "1", "2.5", "100", True, False, *NON_FINITE)
TAGS = ("vip", "new", "lapsed")
EVENT_TYPES = ("purchase", "refund", "sign_in")
ALL_FACTS = (*NUMBER_FACTS, "event.channel", "has_owner", "tags", UNTYPED)


def _compare(fact: str, op: str, value: Any = None) -> Compare:
    return Compare.model_validate({"fact": fact, "op": op, "value": value})


def _values(pool: Sequence[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3)


compares: st.SearchStrategy[Compare] = st.one_of(
    st.builds(
        _compare,
        st.sampled_from(NUMBER_FACTS),
        st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
        st.sampled_from(NUMBERS),
    ),
    st.builds(
        _compare, st.sampled_from(NUMBER_FACTS), st.sampled_from(["in", "not_in"]), _values(NUMBERS)
    ),
    st.builds(
        _compare, st.just("event.channel"), st.sampled_from(["==", "!="]), st.sampled_from(STRINGS)
    ),
    st.builds(
        _compare, st.just("event.channel"), st.sampled_from(["in", "not_in"]), _values(STRINGS)
    ),
    st.builds(_compare, st.just("has_owner"), st.sampled_from(["==", "!="]), st.booleans()),
    st.builds(_compare, st.just(UNTYPED), st.sampled_from(["==", "!="]), st.sampled_from(SCALARS)),
    st.builds(
        _compare,
        st.just(UNTYPED),
        st.sampled_from(["<", "<=", ">", ">="]),
        st.sampled_from(NUMBERS),
    ),
    st.builds(_compare, st.just(UNTYPED), st.sampled_from(["in", "not_in"]), _values(SCALARS)),
    st.builds(_compare, st.just("tags"), st.just("contains"), st.sampled_from((*TAGS, "other"))),
    st.builds(_compare, st.sampled_from(ALL_FACTS), st.just("exists")),
)


def conditions(depth: int) -> st.SearchStrategy[Any]:
    """Conditions nested up to `depth` levels of all / any / not."""
    if depth == 0:
        return compares
    sub = conditions(depth - 1)
    return st.one_of(
        compares,
        st.lists(sub, min_size=1, max_size=3).map(lambda cs: All.model_validate({"all": cs})),
        st.lists(sub, min_size=1, max_size=3).map(lambda cs: AnyOf.model_validate({"any": cs})),
        sub.map(lambda c: Not.model_validate({"not": c})),
    )


def _optional(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


tag_sets = st.sets(st.sampled_from(TAGS))
facts_dicts: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "event.type": _optional(st.sampled_from(EVENT_TYPES)),
        "spend_30d": _optional(st.sampled_from(FACT_NUMBERS)),
        "event.amount": _optional(st.sampled_from((*FACT_NUMBERS, *NON_FINITE))),
        "event.channel": _optional(st.sampled_from(FACT_STRINGS)),
        "has_owner": _optional(st.booleans()),
        UNTYPED: _optional(st.sampled_from(FACT_SCALARS)),
        "tags": _optional(
            st.one_of(tag_sets, tag_sets.map(sorted), tag_sets.map(lambda s: tuple(sorted(s))))
        ),
    },
)

random_rules: st.SearchStrategy[Rule] = st.builds(
    lambda when, on, enabled: rule("r", when, on=on, enabled=enabled),
    st.one_of(st.none(), conditions(3)),
    st.sampled_from([None, None, None, "purchase", ["purchase", "refund"]]),
    st.sampled_from([True, True, True, True, False]),
)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(
    rules_=st.lists(random_rules, min_size=40, max_size=40),
    facts_list=st.lists(facts_dicts, min_size=8, max_size=8),
)
def test_engine_agrees_with_reference(rules_: list[Rule], facts_list: list[dict[str, Any]]) -> None:
    named = [r.model_copy(update={"name": f"r{i}"}) for i, r in enumerate(rules_)]
    pack = make_pack(named)
    for facts in facts_list:
        got = fired(pack, facts)
        want = ref_fired(named, facts)
        if got != want:
            wrong = sorted(got ^ want)
            detail = [
                f"r{i}: on={named[i].on} when={describe(named[i].when)} "
                f"engine={i in got} reference={i in want}"
                for i in wrong
            ]
            raise AssertionError(f"facts {facts}:\n" + "\n".join(detail))


# --------------------------------------------------------------------------- every operator

MISSING = object()
NAN, INF = math.nan, math.inf

# (condition, fact value or MISSING, expected)
OPERATOR_CASES: list[tuple[str, Any, bool]] = [
    # numbers
    ("spend_30d == 5", 5, True),
    ("spend_30d == 5", 5.0, True),
    ("spend_30d == 5", 4, False),
    ("spend_30d == 2.5", 2.5, True),
    ("spend_30d == 0", 0, True),
    ("spend_30d == 0", MISSING, False),
    ("spend_30d != 5", 5, False),
    ("spend_30d != 5", 4, True),
    ("spend_30d != 5", MISSING, True),
    ("spend_30d < 5", 4.99, True),
    ("spend_30d < 5", 5, False),
    ("spend_30d < 5", -100, True),
    ("spend_30d < 5", MISSING, False),
    ("spend_30d <= 5", 5, True),
    ("spend_30d <= 5", 5.01, False),
    ("spend_30d <= 5", MISSING, False),
    ("spend_30d > 5", 5.01, True),
    ("spend_30d > 5", 5, False),
    ("spend_30d > -1", 0, True),
    ("spend_30d > 5", MISSING, False),
    ("spend_30d >= 5", 5, True),
    ("spend_30d >= 5", 4, False),
    ("spend_30d >= 5", MISSING, False),
    ("spend_30d in [1, 2.5, 5]", 2.5, True),
    ("spend_30d in [1, 2.5, 5]", 5.0, True),
    ("spend_30d in [1, 2.5, 5]", 3, False),
    ("spend_30d in [1, 2.5, 5]", MISSING, False),
    ("spend_30d not_in [1, 5]", 5, False),
    ("spend_30d not_in [1, 5]", 3, True),
    ("spend_30d not_in [1, 5]", MISSING, True),
    ("spend_30d exists", 0, True),
    ("spend_30d exists", MISSING, False),
    ("spend_30d >= 123456789.25", 123456789.25, True),
    ("spend_30d < 0.001", 0.0005, True),
    # strings
    ("event.channel == web", "web", True),
    ("event.channel == web", "WEB", False),
    ("event.channel == web", "web ", False),
    ("event.channel == web", "", False),
    ("event.channel == web", MISSING, False),
    ("event.channel == ''", "", True),
    ("event.channel == ''", MISSING, False),
    ('event.channel == "a b"', "a b", True),
    ("event.channel == 'héllo'", "héllo", True),
    ("event.channel == 'héllo'", "hello", False),
    ("event.channel == '$x'", "$x", True),
    ("event.channel == 'a\"b'", 'a"b', True),
    ("event.channel == '5'", "5", True),
    ("event.channel != web", "web", False),
    ("event.channel != web", "app", True),
    ("event.channel != web", MISSING, True),
    ("event.channel in [web, app]", "app", True),
    ("event.channel in [web, app]", "shop", False),
    ("event.channel in [web, app]", MISSING, False),
    ("event.channel not_in [web, app]", "app", False),
    ("event.channel not_in [web, app]", "shop", True),
    ("event.channel not_in [web, app]", MISSING, True),
    ("event.channel exists", "", True),
    ("event.channel exists", MISSING, False),
    # booleans
    ("has_owner == true", True, True),
    ("has_owner == true", False, False),
    ("has_owner == true", MISSING, False),
    ("has_owner == false", False, True),
    ("has_owner == false", True, False),
    ("has_owner == false", MISSING, False),
    ("has_owner != true", False, True),
    ("has_owner != true", True, False),
    ("has_owner != true", MISSING, True),
    ("has_owner != false", True, True),
    ("has_owner exists", False, True),
    ("has_owner exists", MISSING, False),
    # lists
    ("tags contains vip", {"vip", "new"}, True),
    ("tags contains vip", ["vip"], True),
    ("tags contains vip", ("new", "vip"), True),
    ("tags contains vip", {"new"}, False),
    ("tags contains vip", set(), False),
    ("tags contains vip", "vip", False),  # text is not a list of tags
    ("tags contains vip", MISSING, False),
    ("tags exists", set(), True),
    ("tags exists", MISSING, False),
    # not
    ("{not: spend_30d < 5}", 5, True),
    ("{not: spend_30d < 5}", 4, False),
    ("{not: spend_30d < 5}", MISSING, True),
    ("{not: spend_30d >= 5}", MISSING, True),
    ("{not: spend_30d == 5}", MISSING, True),
    ("{not: spend_30d != 5}", MISSING, False),
    ("{not: spend_30d != 5}", 5, True),
    ('{not: "spend_30d in [1, 5]"}', MISSING, True),
    ('{not: "spend_30d not_in [1, 5]"}', 5, True),
    ('{not: "spend_30d not_in [1, 5]"}', MISSING, False),
    ("{not: spend_30d exists}", MISSING, True),
    ("{not: spend_30d exists}", 1, False),
    ("{not: tags contains vip}", {"vip"}, False),
    ("{not: tags contains vip}", {"new"}, True),
    ("{not: tags contains vip}", MISSING, True),
    ("{not: {not: spend_30d < 5}}", 4, True),
    ("{not: {not: spend_30d < 5}}", MISSING, False),
    ("{not: has_owner == true}", MISSING, True),
    ("{not: has_owner == true}", False, True),
    ('{not: "event.channel in [web]"}', "web", False),
    ('{not: "event.channel in [web]"}', "app", True),
    # numbers that are no value (NaN, infinities) are missing
    ("event.amount exists", NAN, False),
    ("event.amount exists", INF, False),
    ("event.amount > 0", INF, False),
    ("event.amount < 0", -INF, False),
    ("event.amount != 5", NAN, True),
    ("{not: event.amount > 0}", INF, True),
    # numbers JSON writes with an exponent
    ("event.amount > 0", 1e-05, True),
    ("event.amount < 0.0001", 1e-05, True),
    ("event.amount > 1000000", 1e16, True),
    ("event.amount < -1000000", -1e17, True),
    # an untyped attribute: a comparison is false unless the fact has the value's type
    ("attributes.x == 5", 5, True),
    ("attributes.x == 5", 5.0, True),
    ("attributes.x == 5", "5", False),
    ("attributes.x == 1", True, False),  # a boolean is not a number
    ("attributes.x == 0", False, False),
    ("attributes.x == 0", "", False),
    ("attributes.x == true", 1, False),
    ("attributes.x == true", True, True),
    ("attributes.x == '5'", "5", True),
    ("attributes.x == '5'", 5, False),
    ("attributes.x != 5", "5", True),
    ("attributes.x != 5", 5, False),
    ("attributes.x != true", 1, True),
    ("attributes.x < 5", 4, True),
    ("attributes.x < 5", "4", False),
    ("attributes.x < 5", "", False),
    ("attributes.x >= 0", "", False),
    ("attributes.x >= 0", False, False),
    ("{not: attributes.x < 5}", "4", True),
    ("{not: attributes.x < 5}", 4, False),
    ("attributes.x in [1, a, true]", 1, True),
    ("attributes.x in [1, a, true]", "a", True),
    ("attributes.x in [1, a, true]", True, True),
    ("attributes.x in [1, a, true]", "1", False),
    ("attributes.x in [1, a, true]", 1.5, False),
    ("attributes.x not_in [1, a]", "1", True),
    ("attributes.x not_in [1, a]", 1, False),
    ("attributes.x exists", "", True),
    ("attributes.x exists", False, True),
    ("attributes.x exists", NAN, False),
]


def _when(text: str) -> Any:
    return yaml_load(text) if text.startswith("{") else text


@pytest.fixture(scope="module")
def operator_pack() -> tuple[CompiledPack, dict[str, int]]:
    """One pack holding every condition of OPERATOR_CASES; condition text -> rule index."""
    texts = sorted({text for text, _, _ in OPERATOR_CASES})
    pack = make_pack([rule(f"r{i}", _when(t)) for i, t in enumerate(texts)])
    return pack, {t: i for i, t in enumerate(texts)}


@pytest.mark.parametrize(("text", "value", "expected"), OPERATOR_CASES)
def test_every_operator_on_each_type(
    operator_pack: tuple[CompiledPack, dict[str, int]], text: str, value: Any, expected: bool
) -> None:
    pack, index = operator_pack
    compiled = pack.rules[index[text]]
    fact = condition_facts(compiled.rule.when)[0]
    facts = {} if value is MISSING else {fact: value}
    assert ref_condition(compiled.rule.when, facts) is expected  # the reference agrees
    assert (compiled.index in fired(pack, facts)) is expected


def test_missing_fact_as_none_is_missing(
    operator_pack: tuple[CompiledPack, dict[str, int]],
) -> None:
    # a fact present with the value None is the same as no fact
    pack, _ = operator_pack
    all_missing = fired(pack, {})
    assert all_missing
    assert fired(pack, dict.fromkeys(ALL_FACTS)) == all_missing


# --------------------------------------------------------------------------- explicit cases


def test_an_event_matching_two_rules_fires_both() -> None:
    pack = make_pack(
        [
            rule("big", "event.amount >= 1000", on="purchase"),
            rule("any-purchase", on="purchase"),
            rule("vip", {"fact": "tags", "op": "contains", "value": "vip"}),
            rule("refund", on="refund"),
        ]
    )
    facts = {"event.type": "purchase", "event.amount": 1500, "tags": {"vip"}}
    assert fired(pack, facts) == {0, 1, 2}
    # facts, not events: asking again gives the same answer (nothing consumed or left over)
    assert fired(pack, facts) == {0, 1, 2}
    assert fired(pack, {**facts, "event.amount": 10}) == {1, 2}


def test_no_rule_matching_is_an_empty_set() -> None:
    pack = make_pack([rule("a", "spend_30d > 10"), rule("b", on="purchase")])
    assert fired(pack, {"spend_30d": 1, "event.type": "sign_in"}) == set()
    assert fired(pack, {}) == set()


def test_rules_without_when_and_on_fire_for_every_event() -> None:
    pack = make_pack([rule("always"), rule("purchases", on="purchase")])
    assert pack.rules[0].expression == {ALWAYS: 1}
    for facts in ({}, {"event.type": "purchase"}, {"event.type": "x", "spend_30d": 3}):
        assert 0 in fired(pack, facts)
    assert fired(pack, {"event.type": "purchase"}) == {0, 1}


def test_on_matches_the_event_type() -> None:
    pack = make_pack(
        [
            rule("one", on="purchase"),
            rule("two", on=["refund", "sign_in"]),
            rule("each", "tier_rank >= 0"),
        ]
    )
    assert fired(pack, {"event.type": "purchase", "tier_rank": 0}) == {0, 2}
    assert fired(pack, {"event.type": "sign_in"}) == {1}
    assert fired(pack, {"event.type": "refund"}) == {1}
    assert fired(pack, {"event.type": "other"}) == set()
    assert fired(pack, {}) == set()  # no event type: no `on` rule


def test_disabled_rules_never_fire() -> None:
    pack = make_pack(
        [
            rule("off-always", enabled=False),
            rule("on", "spend_30d > 1"),
            rule("off-match", "spend_30d > 1", enabled=False),
            rule("last"),
        ]
    )
    assert [(r.index, r.rule.name) for r in pack.rules] == [(1, "on"), (3, "last")]
    assert fired(pack, {"spend_30d": 5}) == {1, 3}
    assert fired(pack, {}) == {3}


def test_pack_with_no_enabled_rules_fires_nothing() -> None:
    for rules_ in ([], [rule("off", enabled=False)]):
        pack = make_pack(rules_)
        assert pack.rules == []
        assert list(pack.rulesets.values()) == [[]]
        assert fired(pack, {"event.type": "purchase"}) == set()


def test_booleans_are_encoded_as_numbers() -> None:
    pack = make_pack(
        [
            rule("owned", "has_owner == true"),
            rule("pooled", "has_owner == false"),
            rule("consent", "consent.email == true"),
        ]
    )
    owner = pack.keys.value[("has_owner", "boolean")]
    consent = pack.keys.value[("consent.email", "boolean")]
    assert pack.rules[0].expression == {owner: 1}
    assert pack.rules[1].expression == {owner: 0}
    msg = pack.message({"has_owner": True, "consent.email": False})
    assert msg[owner] == 1
    assert msg[consent] == 0
    assert type(msg[owner]) is int
    # a number 1 is not the boolean true: it never reaches the boolean key
    assert owner not in pack.message({"has_owner": 1})
    assert fired(pack, {"has_owner": 1, "consent.email": 1}) == set()
    assert fired(pack, {"has_owner": True, "consent.email": True}) == {0, 2}
    assert fired(pack, {"has_owner": False, "consent.email": False}) == {1}
    assert fired(pack, {}) == set()


def test_five_thousand_customers_through_one_pack() -> None:
    pack = make_pack(
        [
            rule("big", "spend_30d >= 2500"),
            rule("vip", {"fact": "tags", "op": "contains", "value": "vip"}),
            rule("purchase", on="purchase"),
        ]
    )
    engine = ENGINE
    start = time.perf_counter()
    for i in range(5000):
        facts = {
            "customer": f"c{i}",
            "spend_30d": i,
            "tags": {"vip"} if i % 7 == 0 else set(),
            "event.type": "purchase" if i % 2 else "sign_in",
        }
        want = {n for n, ok in ((0, i >= 2500), (1, i % 7 == 0), (2, i % 2 == 1)) if ok}
        assert engine.fired(pack, facts) == want, i
    assert time.perf_counter() - start < 20


def test_no_facts_are_left_in_the_engine() -> None:
    pack = make_pack([rule("a", "spend_30d > 1"), rule("b", "tags contains vip")])
    engine = ENGINE
    for i in range(50):
        engine.fired(pack, {"spend_30d": i % 3, "tags": {"vip"} if i % 2 else set()})
    for name in pack.rulesets:
        assert engine._host.get_facts(name, DurableRulesEngine._SID) == []


def test_a_second_version_loads_beside_the_first() -> None:
    first = make_pack([rule("threshold", "spend_30d > 10"), rule("tag", "tags exists")])
    second = make_pack([rule("threshold", "spend_30d > 100")])
    assert first.version != second.version
    assert set(first.rulesets).isdisjoint(second.rulesets)
    for _ in range(3):
        assert fired(first, {"spend_30d": 50}) == {0}
        assert fired(second, {"spend_30d": 50}) == set()
        assert fired(second, {"spend_30d": 500}) == {0}
        assert fired(first, {"spend_30d": 500, "tags": set()}) == {0, 1}


def test_loading_is_idempotent() -> None:
    pack = make_pack([rule("a", "spend_30d > 1")])
    engine = ENGINE
    engine.load(pack)
    engine.load(pack)
    same = CompiledPack(pack.version, pack.program, pack.rules, pack.keys, pack.rulesets)
    engine.load(same)
    assert engine.fired(same, {"spend_30d": 2}) == {0}


def test_two_engine_objects_evaluate_the_same_pack() -> None:
    # (with the committed engine.py of 00b23c5 the second engine reported nothing: it skipped
    # rulesets the first had registered, whose callbacks fed the first engine's hit list)
    pack = make_pack([rule("a", "spend_30d > 1"), rule("b", "spend_30d > 5")])
    other = DurableRulesEngine()
    for _ in range(2):
        assert ENGINE.fired(pack, {"spend_30d": 2}) == {0}
        assert other.fired(pack, {"spend_30d": 2}) == {0}
        assert other.fired(pack, {"spend_30d": 9}) == {0, 1}
        assert ENGINE.fired(pack, {"spend_30d": 0}) == set()


def test_fired_from_several_threads() -> None:
    pack = make_pack([rule("big", "spend_30d >= 50"), rule("odd", "event.amount == 1")])

    def check(i: int) -> bool:
        facts = {"spend_30d": i % 100, "event.amount": i % 2}
        want = {n for n, ok in ((0, i % 100 >= 50), (1, i % 2 == 1)) if ok}
        return fired(pack, facts) == want

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, range(800)))


def test_conflict_order() -> None:
    pack = make_pack(
        [
            ("10-a.yaml", rule("a-low", priority=1)),
            ("10-a.yaml", rule("a-high", priority=50)),
            ("20-b.yaml", rule("b-high", priority=50)),
            ("20-b.yaml", rule("b-off", priority=99, enabled=False)),
            ("20-b.yaml", rule("b-negative", priority=-5)),
            ("30-c.yaml", rule("c-low", priority=1)),
            ("30-c.yaml", rule("c-top", priority=100)),
        ]
    )
    every = fired(pack, {})
    assert every == {0, 1, 2, 4, 5, 6}
    order = [r.rule.name for r in pack.ordered(every)]
    assert order == ["c-top", "a-high", "b-high", "a-low", "c-low", "b-negative"]
    assert [r.rule.name for r in pack.ordered({5, 0})] == ["a-low", "c-low"]
    assert pack.ordered(set()) == []
    assert [r.rule.name for r in pack.ordered({3, 6})] == ["c-top"]  # disabled: not a rule


def test_conflict_order_of_the_examples() -> None:
    src = PackSource(
        "program.yaml",
        PROGRAM_TEXT,
        [(p.name, p.read_text()) for p in sorted((REPO / "examples" / "rules").glob("*.yaml"))],
    )
    built = build_pack(src)
    # a fresh version string: the examples' content hash may be registered by other tests
    pack = compile_pack(new_version(), built.program, [(r.file, r.rule) for r in built.rules])
    facts = {
        "event.type": "purchase",
        "event.amount": 1500,
        "tier_rank": 0,
        "spend_365d": 2500,
        "spend_90d": 2500,
        "lifecycle_stage": "lead",
        "tags": {"lapsed-90d"},
        "birthday_month": True,
    }
    names = [r.rule.name for r in pack.ordered(fired(pack, facts))]
    assert names == [
        "earn-on-purchase",
        "upgrade-on-spend",
        "first-purchase-makes-a-customer",
        "big-spender",
        "back-from-lapse",
        "birthday-month",
    ]


def test_more_rules_than_one_ruleset_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules.compiler, "MAX_RULES_PER_RULESET", 3)
    rules_ = [rule(f"r{i}", f"spend_30d >= {i}") for i in range(8)]
    rules_.insert(4, rule("off", "spend_30d >= 0", enabled=False))
    pack = make_pack(rules_)
    assert [len(v) for v in pack.rulesets.values()] == [3, 3, 2]
    assert list(pack.rulesets) == [f"crmflow_{pack.version}_{n}" for n in range(3)]
    assert [r.index for rs in pack.rulesets.values() for r in rs] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert fired(pack, {"spend_30d": 100}) == {0, 1, 2, 3, 5, 6, 7, 8}
    assert fired(pack, {"spend_30d": 4}) == {0, 1, 2, 3, 5}
    assert fired(pack, {"spend_30d": -1}) == set()
    # exactly a multiple: no empty ruleset at the end
    pack = make_pack([rule(f"r{i}") for i in range(6)])
    assert [len(v) for v in pack.rulesets.values()] == [3, 3]
    assert fired(pack, {}) == set(range(6))


@pytest.mark.parametrize("value", [1e-05, 1e16, -1e17, 2e-10, 1e20, 5e-324, -1e-05])
def test_fact_with_exponent_float(value: float) -> None:
    # JSON writes these with an exponent and no decimal point, which durable_rules cannot read
    # ('Could not assert fact, error code: 204'); the message nudges them by one ulp
    pack = make_pack([rule("any-amount", "event.amount exists"), rule("pos", "event.amount > 0")])
    assert fired(pack, {"event.amount": value}) == ({0, 1} if value > 0 else {0})
    assert fired(pack, {"event.amount": value}) == ({0, 1} if value > 0 else {0})


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_fact_is_missing(value: float) -> None:
    # never put in a message (durable_rules cannot read Infinity): the fact is missing
    pack = make_pack(
        [
            rule("any-amount", "event.amount exists"),
            rule("pos", "event.amount > 0"),
            rule("not-pos", {"not": "event.amount > 0"}),
            rule("ne", "event.amount != 1"),
        ]
    )
    msg = pack.message({"event.amount": value})
    assert pack.keys.value[("event.amount", "number")] not in msg
    assert msg[pack.keys.presence["event.amount"]] == 0
    assert fired(pack, {"event.amount": value}) == {2, 3}
    assert fired(pack, {"event.amount": value}) == fired(pack, {})


@pytest.mark.parametrize(
    ("value", "below", "above"),
    [("0.00001", 0.000001, 0.0001), ("1.0e+20", 1e19, 1e21), ("1e-7", 1e-8, 1e-6)],
)
def test_rule_value_with_an_exponent_loads_and_works(
    value: str, below: float, above: float
) -> None:
    text = f"rules:\n  - name: odd\n    when: event.amount > {value}\n    then: [{{add_tag: x}}]\n"
    built = build_pack(PackSource("program.yaml", PROGRAM_TEXT, [("a.yaml", text)]))
    pack = make_pack([r.rule for r in built.rules])  # registers with durable_rules
    assert fired(pack, {"event.amount": above}) == {0}
    assert fired(pack, {"event.amount": below}) == set()
    assert fired(pack, {"event.amount": float(value)}) == set()  # not greater than itself


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "[1, .inf]"])
def test_rule_value_that_is_not_finite_is_refused(value: str) -> None:
    op = "in" if value.startswith("[") else ">"
    text = (
        f"rules:\n  - name: odd\n    when: event.amount {op} {value}\n    then: [{{add_tag: x}}]\n"
    )
    with pytest.raises(SourceError) as info:
        build_pack(PackSource("program.yaml", PROGRAM_TEXT, [("a.yaml", text)]))
    [err] = info.value.errors
    assert (err.file, err.line) == ("a.yaml", 3)
    assert "event.amount is compared with" in err.message
    assert "expected a finite number" in err.message


def test_non_finite_rule_value_never_matches() -> None:
    # refused by the pack check; compiled on its own it is never true (and never reaches the
    # engine, which could not read it)
    keys = Keys()
    assert compile_condition(_compare("spend_30d", "<", math.inf), keys) == {ALWAYS: 0}
    assert compile_condition(_compare("spend_30d", "==", math.nan), keys) == {ALWAYS: 0}
    assert keys.value == {}


@pytest.mark.parametrize("text", ["", "5", "0", "4", "abc", " 5", "5.0", "1e3"])
def test_untyped_attribute_text_never_matches_a_number(text: str) -> None:
    # durable_rules coerces text in number comparisons (erratically for ""): the typed keys
    # keep text away from them, so a text is never equal to, nor less than, a number
    pack = make_pack(
        [
            rule("eq5", "attributes.x == 5"),
            rule("lt5", "attributes.x < 5"),
            rule("eq0", "attributes.x == 0"),
            rule("ne5", "attributes.x != 5"),
            rule("ge0", "attributes.x >= 0"),
            rule("text", "attributes.x == '5'"),
        ]
    )
    results = [fired(pack, {"attributes.x": text}) for _ in range(3)]
    assert results[0] == results[1] == results[2]
    assert results[0] == ({3, 5} if text == "5" else {3})
    for number, want in ((5, {0, 4}), (0, {1, 2, 3, 4}), (4, {1, 3, 4}), (-1, {1, 3})):
        assert fired(pack, {"attributes.x": number}) == want, number
    # == and != are exact opposites, whatever the value
    for value in (text, 5, 5.0, 0, True, False, None):
        got = fired(pack, {"attributes.x": value})
        assert (0 in got) != (3 in got), value


# --------------------------------------------------------------------------- compiled form


def test_negation_is_pushed_down_with_presence_flags() -> None:
    keys = Keys()
    assert compile_condition(cond("spend_30d < 5"), keys) == {"$lt": {"f0": 5}}
    # `not` and `!=` need "or the fact is not a number": a presence flag per fact and type
    assert compile_condition(cond({"not": "spend_30d < 5"}), keys) == {
        "$or": [{"$gte": {"f0": 5}}, {"p0": 0}]
    }
    assert compile_condition(cond("spend_30d != 5"), keys) == {
        "$or": [{"$neq": {"f0": 5}}, {"p0": 0}]
    }
    assert compile_condition(cond({"not": "spend_30d != 5"}), keys) == {"f0": 5}
    assert compile_condition(cond("tags contains vip"), keys) == {"c0": 1}
    assert compile_condition(cond({"not": "tags contains vip"}), keys) == {"c0": 0}
    # `exists` has its own flag per fact, whatever the type
    assert compile_condition(cond("tags exists"), keys) == {"e0": 1}
    assert compile_condition(cond({"not": "tags exists"}), keys) == {"e0": 0}
    # De Morgan
    assert compile_condition(cond({"not": {"all": ["spend_30d < 5", "tags exists"]}}), keys) == {
        "$or": [{"$or": [{"$gte": {"f0": 5}}, {"p0": 0}]}, {"e0": 0}]
    }
    assert compile_condition(cond({"not": {"any": ["spend_30d > 1", "tags exists"]}}), keys) == {
        "$and": [{"$or": [{"$lte": {"f0": 1}}, {"p0": 0}]}, {"e0": 0}]
    }
    # `in` is any of `==`; `not_in` the negation of that
    assert compile_condition(cond("event.channel in [web, app]"), keys) == {
        "$or": [{"f1": "web"}, {"f1": "app"}]
    }
    assert compile_condition(cond("event.channel not_in [web]"), keys) == {
        "$or": [{"$neq": {"f1": "web"}}, {"p1": 0}]
    }
    assert compile_condition(cond("event.channel not_in [web, app]"), keys) == {
        "$and": [
            {"$or": [{"$neq": {"f1": "web"}}, {"p1": 0}]},
            {"$or": [{"$neq": {"f1": "app"}}, {"p1": 0}]},
        ]
    }
    assert compile_condition(cond("spend_30d exists"), keys) == {"e1": 1}
    # one fact compared with values of three types: three value keys, never mixed
    assert compile_condition(cond("attributes.x == 5"), keys) == {"f2": 5}
    assert compile_condition(cond("attributes.x == five"), keys) == {"f3": "five"}
    assert compile_condition(cond("attributes.x != true"), keys) == {
        "$or": [{"$neq": {"f4": 1}}, {"p2": 0}]
    }
    assert compile_condition(cond("attributes.x in [1, five, 2.0]"), keys) == {
        "$or": [{"f2": 1}, {"f3": "five"}, {"f2": 2}]
    }
    assert keys.value == {
        ("spend_30d", "number"): "f0",
        ("event.channel", "string"): "f1",
        ("attributes.x", "number"): "f2",
        ("attributes.x", "string"): "f3",
        ("attributes.x", "boolean"): "f4",
    }
    assert keys.typed_presence == {
        ("spend_30d", "number"): "p0",
        ("event.channel", "string"): "p1",
        ("attributes.x", "boolean"): "p2",
    }
    assert keys.presence == {"tags": "e0", "spend_30d": "e1"}
    assert keys.member == {("tags", "vip"): "c0"}


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (True, 1),
        (False, 0),
        (5, 5),
        (5.0, 5),  # a whole float is written as an int
        (-0.0, 0),
        (2.5, 2.5),
        (1e16, 10**16),
        ("1e-05", "1e-05"),  # text is text
    ],
)
def test_rule_values_are_encoded(value: Any, encoded: Any) -> None:
    kind = {bool: "boolean", str: "string"}.get(type(value), "number")
    keys = Keys()
    compiled = compile_condition(_compare("attributes.x", "==", value), keys)
    assert compiled == {keys.value[("attributes.x", kind)]: encoded}
    [v] = compiled.values()
    assert type(v) is type(encoded)


@pytest.mark.parametrize("value", [1e-05, 2e-10, 1e20, -1e20, 5e-324])
def test_exponent_rule_value_is_nudged_to_a_decimal_point(value: float) -> None:
    keys = Keys()
    [v] = compile_condition(_compare("spend_30d", "==", value), keys).values()
    assert isinstance(v, float)
    assert "." in repr(v)
    assert v != value
    assert abs(v - value) <= 4 * math.ulp(value)


def test_keys_are_shared_across_rules() -> None:
    pack = make_pack(
        [
            rule("a", "spend_30d > 1", on="purchase"),
            rule("b", {"any": ["spend_30d < 0", "tags contains vip"]}),
            rule("c", {"not": "tags contains vip"}),
            rule("d", {"not": "spend_30d >= 10"}),
            rule("e", "spend_30d exists"),
        ]
    )
    assert pack.keys.value == {("event.type", "string"): "f0", ("spend_30d", "number"): "f1"}
    assert pack.keys.typed_presence == {("spend_30d", "number"): "p0"}
    assert pack.keys.presence == {"spend_30d": "e0"}
    assert pack.keys.member == {("tags", "vip"): "c0"}
    assert pack.rules[0].facts == ["event.type", "spend_30d"]
    assert pack.rules[1].facts == ["spend_30d", "tags"]
    assert pack.rules[2].facts == ["tags"]


def test_message() -> None:
    pack = make_pack(
        [
            rule("a", {"all": ["spend_30d > 1", "has_owner == true", "event.channel == web"]}),
            rule("b", {"not": "spend_30d exists"}),
            rule("c", "tags contains vip"),
            rule("d", "tags contains new"),
            rule("e", "attributes.x != 5"),
            rule("f", "attributes.x == five"),
        ]
    )
    k = pack.keys
    msg = pack.message(
        {
            "spend_30d": 3.0,
            "has_owner": False,
            "event.channel": None,
            "tags": ["vip"],
            "attributes.x": "5",
            "x": 1,
        }
    )
    assert msg == {
        ALWAYS: 1,
        k.value[("spend_30d", "number")]: 3,
        k.value[("has_owner", "boolean")]: 0,
        k.value[("attributes.x", "string")]: "5",  # text: not in the number key
        k.typed_presence[("attributes.x", "number")]: 0,
        k.presence["spend_30d"]: 1,
        k.member[("tags", "vip")]: 1,
        k.member[("tags", "new")]: 0,
    }
    assert type(msg[k.value[("spend_30d", "number")]]) is int  # a whole float as an int
    msg = pack.message({"attributes.x": 1e-05, "spend_30d": math.inf})
    assert msg[k.value[("attributes.x", "number")]] == math.nextafter(1e-05, math.inf)
    assert msg[k.typed_presence[("attributes.x", "number")]] == 1
    assert k.value[("attributes.x", "string")] not in msg
    assert k.value[("spend_30d", "number")] not in msg  # not finite: missing
    assert msg[k.presence["spend_30d"]] == 0
    empty = pack.message({})
    assert empty == {
        ALWAYS: 1,
        k.typed_presence[("attributes.x", "number")]: 0,
        k.presence["spend_30d"]: 0,
        k.member[("tags", "vip")]: 0,
        k.member[("tags", "new")]: 0,
    }


def test_content_version() -> None:
    v = content_version("p", [("a.yaml", "x"), ("b.yaml", "y")])
    assert v == content_version("p", [("b.yaml", "y"), ("a.yaml", "x")])
    assert len(v) == 16
    assert v != content_version("p", [("a.yaml", "x"), ("b.yaml", "z")])
    assert v != content_version("q", [("a.yaml", "x"), ("b.yaml", "y")])
    assert v != content_version("p", [("a.yaml", "xb.yaml"), ("", "y")])
