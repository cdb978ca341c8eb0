"""Why a rule fired or did not (`rules.explain`): the first false condition with the values
it saw, missing facts, `any` and `not`, rules not listening to the event, and agreement with
the engine over the example pack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journeys.conditions import evaluate
from rules.compiler import CompiledPack
from rules.engine import DurableRulesEngine
from rules.explain import (
    FalseCondition,
    condition_text,
    explain_event,
    explain_rule,
    first_false,
)
from rules.models import Compare, Rule
from rules.pack import PackSource, build_pack, load_pack

REPO = Path(__file__).resolve().parents[1]
PROGRAM = (REPO / "examples/program.yaml").read_text()
ENGINE = DurableRulesEngine()  # one for the module, as a worker has one


def when(yaml_condition: Any) -> Any:
    """A condition as a rule file would hold it (shorthand strings, all/any/not)."""
    rule = Rule.model_validate({"name": "r", "when": yaml_condition, "then": [{"add_tag": "x"}]})
    return rule.when


def pack(rules: str) -> CompiledPack:
    return build_pack(PackSource("program.yaml", PROGRAM, [("r.yaml", rules)]))


# --------------------------------------------------------------------------- first_false


def test_the_first_false_member_of_all_with_the_value_it_saw() -> None:
    cond = when({"all": ["tier_rank < 2", "spend_365d >= 8000", "event.amount > 0"]})
    false = first_false(cond, {"tier_rank": 0, "spend_365d": 1200.0, "event.amount": 0})
    assert false is not None
    assert (false.path, false.condition) == ("when.all[1]", "spend_365d >= 8000")
    assert false.values == {"spend_365d": 1200.0} and false.missing == []
    assert false.text() == "when.all[1]: spend_365d >= 8000 was false: spend_365d = 1200.0"


def test_a_missing_fact_is_said_to_be_missing() -> None:
    false = first_false(when({"all": ["has_owner == false", "birthday_month == true"]}), {})
    assert false is not None
    assert false.path == "when.all[0]" and false.missing == ["has_owner"]
    assert false.text() == "when.all[0]: has_owner == false was false: has_owner is missing"
    nan = first_false(when("spend_365d >= 1"), {"spend_365d": float("nan")})
    assert nan is not None and nan.missing == ["spend_365d"]  # NaN is no value


def test_a_condition_that_holds_has_nothing_false() -> None:
    facts = {"tier_rank": 1, "spend_365d": 9000.0, "tags": frozenset({"vip"})}
    for c in [
        "spend_365d >= 8000",
        {"all": ["tier_rank < 2", "spend_365d >= 8000"]},
        {"any": ["tier_rank > 5", "tags contains vip"]},
        {"not": "tags contains lapsed"},
        "days_since_last_purchase != 3",  # != holds for a missing fact
    ]:
        assert first_false(when(c), facts) is None, c
    assert first_false(None, {}) is None


def test_an_any_says_why_each_alternative_was_false() -> None:
    cond = when(
        {
            "any": [
                {"all": ["tier_rank < 1", "spend_365d >= 2000"]},
                {"all": ["tier_rank < 2", "spend_365d >= 8000"]},
                "event.amount >= 1000",
            ]
        }
    )
    false = first_false(cond, {"tier_rank": 0, "spend_365d": 500.0})
    assert false is not None and false.path == "when"
    assert [(b.path, b.condition) for b in false.branches] == [
        ("when.any[0].all[1]", "spend_365d >= 2000"),
        ("when.any[1].all[1]", "spend_365d >= 8000"),
        ("when.any[2]", "event.amount >= 1000"),
    ]
    assert false.missing == ["event.amount"]  # the `any` itself read it too
    text = false.text()
    assert text.startswith("when: none of its 3 alternatives held: when.any[0].all[1]: ")
    assert "when.any[2]: event.amount >= 1000 was false: event.amount is missing" in text
    assert false.lines()[0] == "when: none of its 3 alternatives held:"
    assert (
        false.lines()[3] == "  when.any[2]: event.amount >= 1000 was false: event.amount is missing"
    )


def test_a_not_that_was_false_shows_what_held_inside_it() -> None:
    cond = when({"all": ["event.type != purchase", {"not": "tags contains lapsed-90d"}]})
    false = first_false(cond, {"event.type": "sign_in", "tags": frozenset({"lapsed-90d", "b"})})
    assert false is not None
    assert false.path == "when.all[1]"
    assert false.condition == "not (tags contains lapsed-90d)"
    assert false.values == {"tags": ["b", "lapsed-90d"]}  # a set, shown sorted
    assert false.text() == (
        'when.all[1]: not (tags contains lapsed-90d) was false: tags = ["b", "lapsed-90d"]'
    )


def test_conditions_are_written_as_in_a_rule_file() -> None:
    assert condition_text(when("lifecycle_stage in [lead, prospect]")) == (
        "lifecycle_stage in [lead, prospect]"
    )
    assert condition_text(when("has_owner == true")) == "has_owner == true"
    assert condition_text(when("tier exists")) == "tier exists"
    assert condition_text(when({"not": {"any": ["a == 1", "b == x"]}})) == "not (a == 1 or b == x)"
    assert condition_text(Compare(fact="spend_90d", op=">=", value=3000)) == "spend_90d >= 3000"


def test_values_of_each_type_are_shown_as_json() -> None:
    false = first_false(when("lifecycle_stage == member"), {"lifecycle_stage": "lead"})
    assert false is not None and false.text().endswith('lifecycle_stage = "lead"')
    false = first_false(when("has_owner == false"), {"has_owner": True})
    assert false is not None and false.text().endswith("has_owner = true")
    model = FalseCondition.model_validate(false.model_dump())  # JSON in, JSON out
    assert model == false


# --------------------------------------------------------------------------- rules


RULES = """\
rules:
  - name: welcome
    priority: 9
    on: sign_up
    then: [{add_tag: new}]
  - name: gold
    priority: 5
    on: [purchase, sign_in]
    when: {all: [tier_rank < 2, spend_365d >= 8000]}
    then: [{add_tag: gold}]
  - name: any-event
    then: [{add_tag: seen}]
  - name: big
    on: purchase
    when: event.amount >= 1000
    then: [{add_tag: big}]
"""


def test_every_rule_is_explained_in_the_order_effects_apply() -> None:
    p = pack(RULES)
    facts = {"event.type": "purchase", "event.amount": 1500.0, "tier_rank": 0}
    out = explain_event(p, facts, ["big", "any-event"])
    assert [(e.rule, e.status) for e in out] == [
        ("welcome", "not_listening"),
        ("gold", "condition_false"),
        ("any-event", "fired"),
        ("big", "fired"),
    ]
    by = {e.rule: e for e in out}
    assert by["welcome"].reason == "listens to sign_up, not purchase"
    assert by["gold"].reason == "when.all[1]: spend_365d >= 8000 was false: spend_365d is missing"
    assert by["gold"].false_condition is not None
    assert by["gold"].false_condition.path == "when.all[1]"
    assert by["big"].reason == "fired: event.amount = 1500.0"
    assert by["any-event"].reason == "fired: no condition"
    assert by["welcome"].file == "r.yaml" and by["welcome"].priority == 9


def test_a_rule_the_engine_did_not_fire_though_its_condition_holds_is_said_so() -> None:
    p = pack(RULES)
    big = next(r for r in p.rules if r.rule.name == "big")
    said = explain_rule(big, {"event.type": "purchase", "event.amount": 5000}, fired=False)
    assert said.status == "not_fired" and "disagree" in said.reason


# --------------------------------------------------------------------------- the engine


EXAMPLES, _ = load_pack(REPO / "examples/rules")
EVENT_TYPES = ["purchase", "sign_in", "sign_up", "churn_scan", "lead_sla_check", "page_view"]


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


facts_strategy = st.fixed_dictionaries(
    {
        "event.type": st.sampled_from(EVENT_TYPES),
        "event.amount": _maybe(st.sampled_from([0, 0.5, 999.99, 1000, 5000.0])),
        "tier_rank": st.integers(0, 3),
        "spend_90d": _maybe(st.sampled_from([0.0, 2999.0, 3000.0])),
        "spend_365d": _maybe(st.sampled_from([0.0, 1999.0, 2000.0, 8000.0, 25000.0])),
        "purchases_365d": _maybe(st.integers(0, 5)),
        "purchase_gap_ratio": _maybe(st.sampled_from([0.5, 3.0, 9.0])),
        "days_since_last_purchase": _maybe(st.sampled_from([1.0, 30.0, 90.0, 400.0])),
        "lifecycle_stage": st.sampled_from(["lead", "prospect", "customer", "member"]),
        "has_owner": st.booleans(),
        "hours_since_last_follow_up": _maybe(st.sampled_from([1.0, 48.0, 100.0])),
        "birthday_month": _maybe(st.booleans()),
        "tags": st.frozensets(st.sampled_from(["lapsed-90d", "birthday-month", "churn-risk"])),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts_strategy)
def test_explanations_agree_with_the_engine(drawn: dict[str, Any]) -> None:
    facts = {k: v for k, v in drawn.items() if v is not None}
    fired = {r.rule.name for r in EXAMPLES.ordered(ENGINE.fired(EXAMPLES, facts))}
    out = explain_event(EXAMPLES, facts, fired)
    assert {e.rule for e in out} == {r.rule.name for r in EXAMPLES.rules}
    for e in out:
        assert e.status != "not_fired", e
        assert (e.status == "fired") == (e.rule in fired)
        if e.status != "condition_false":
            continue
        rule = next(r.rule for r in EXAMPLES.rules if r.rule.name == e.rule)
        assert not evaluate(rule.when, facts)
        false = e.false_condition
        assert false is not None
        for leaf in false.branches or [false]:  # what it names is false, with the facts seen
            assert set(leaf.values) | set(leaf.missing) <= {*facts, *leaf.missing}
            for fact, value in leaf.values.items():
                shown = sorted(value) if isinstance(value, list) else value
                want = facts[fact]
                assert shown == (sorted(want) if isinstance(want, frozenset) else want)


@pytest.mark.parametrize("event_type", ["churn_scan", "refund", "nothing-listens"])
def test_a_rule_that_listens_elsewhere_is_not_walked(event_type: str) -> None:
    out = explain_event(EXAMPLES, {"event.type": event_type}, [])
    earn = next(e for e in out if e.rule == "earn-on-purchase")
    assert earn.status == "not_listening" and earn.false_condition is None
    assert earn.reason == f"listens to purchase, not {event_type}"
