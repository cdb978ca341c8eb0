"""rules/facts.py: the facts a rule sees, computed from a profile state and an event."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rules.facts import (
    FIXED_FACTS,
    MODEL_FACTS,
    EventFacts,
    Lot,
    ProfileState,
    build_facts,
    fact_kind,
    known_facts,
    record_event,
)
from rules.models import Program
from rules.source import yaml_load

REPO = Path(__file__).resolve().parents[1]
PROGRAM = Program.model_validate(yaml_load((REPO / "examples" / "program.yaml").read_text()))

AT = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
CREATED = AT - timedelta(days=100)


def state(**kw: Any) -> ProfileState:
    kw.setdefault("customer_id", "c1")
    kw.setdefault("created_at", CREATED)
    return ProfileState(**kw)


def event(type: str = "sign_in", at: datetime = AT, **properties: Any) -> EventFacts:
    return EventFacts(event_id="e1", type=type, occurred_at=at, properties=properties)


def facts_of(s: ProfileState, e: EventFacts | None = None) -> dict[str, Any]:
    return build_facts(s, e or event(), PROGRAM)


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("event.type", "string"),
        ("tier", "string"),
        ("tier_rank", "number"),
        ("tags", "list"),
        ("has_owner", "boolean"),
        ("birthday_month", "boolean"),
        ("spend_30d", "number"),
        ("purchases_365d", "number"),
        ("event.amount", "number"),
        ("event.currency", "string"),
        ("event.channel", "string"),
        ("event.colour", None),
        ("consent.email", "boolean"),
        ("consent.sms", "boolean"),
        ("attributes.city", "string"),
        ("attributes.anything", "any"),
        ("spend_7d", None),
        ("nonsense", None),
        ("other.thing", None),
        ("event", None),
        ("consent", None),
    ],
)
def test_fact_kind(name: str, kind: str | None) -> None:
    assert fact_kind(name, PROGRAM) == kind


def test_known_facts_lists_fixed_declared_and_families() -> None:
    names = known_facts(PROGRAM)
    assert set(FIXED_FACTS) <= set(names)
    for prop in PROGRAM.event_properties:
        assert f"event.{prop}" in names
    assert "consent.<channel>" in names
    assert "attributes.<name>" in names


# --------------------------------------------------------------------------- basics


DECLARED = PROGRAM.model_copy(
    update={
        "event_properties": {
            **PROGRAM.event_properties,
            "count": "number",
            "gift": "boolean",
            "items": "string",
            "meta": "string",
            "n": "number",
        }
    }
)


def test_event_type_and_declared_scalar_properties() -> None:
    e = event(
        "purchase", amount=12.5, currency="CNY", count=3, gift=True, items=[1], meta={}, n=None
    )
    f = build_facts(state(), e, DECLARED)
    assert f["event.type"] == "purchase"
    assert f["event.amount"] == 12.5
    assert f["event.currency"] == "CNY"
    assert f["event.count"] == 3
    assert f["event.gift"] is True
    for skipped in ("event.items", "event.meta", "event.n"):  # not scalars of their type
        assert skipped not in f


def test_undeclared_event_properties_are_no_facts() -> None:
    # only the properties the programme declares are facts (rules cannot name others)
    e = event("purchase", amount=12.5, count=3, gift=True, colour="red")
    f = facts_of(state(), e)
    assert f["event.amount"] == 12.5
    for undeclared in ("event.count", "event.gift", "event.colour"):
        assert undeclared not in f
    assert {k for k in f if k.startswith("event.")} <= {
        "event.type",
        *(f"event.{p}" for p in PROGRAM.event_properties),
    }


@pytest.mark.parametrize("raw", ["12", "", "abc", True, False, None, [12], {"v": 12}])
def test_declared_number_property_of_another_type_is_no_fact(raw: Any) -> None:
    # a declared number arriving as text (or a boolean) never reaches a number comparison
    f = facts_of(state(), event("purchase", amount=raw))
    assert "event.amount" not in f


@pytest.mark.parametrize(
    ("prop", "good", "bad"),
    [
        ("amount", 12, ["12", True]),
        ("amount", 0.5, [None]),
        ("currency", "CNY", [1, True, None, ["CNY"]]),
        ("gift", False, [0, "false", None]),
        ("gift", True, [1, "true"]),
    ],
)
def test_declared_properties_keep_only_their_type(prop: str, good: Any, bad: list[Any]) -> None:
    program = PROGRAM.model_copy(
        update={"event_properties": {**PROGRAM.event_properties, "gift": "boolean"}}
    )
    f = build_facts(state(), event("purchase", **{prop: good}), program)
    assert f[f"event.{prop}"] == good
    assert type(f[f"event.{prop}"]) is type(good)
    for value in bad:
        f = build_facts(state(), event("purchase", **{prop: value}), program)
        assert f"event.{prop}" not in f, value


def test_tier_and_rank() -> None:
    f = facts_of(state(tier="gold"))
    assert f["tier"] == "gold"
    assert f["tier_rank"] == 2


def test_tier_rank_falls_back_to_welcome_tier() -> None:
    f = facts_of(state())
    assert "tier" not in f  # no tier yet: the fact is missing
    assert f["tier_rank"] == 0
    program = PROGRAM.model_copy(update={"welcome_tier": "silver"})
    f = build_facts(state(), event(), program)
    assert "tier" not in f
    assert f["tier_rank"] == 1


def test_tier_rank_of_unknown_tier_is_zero() -> None:
    # a tier removed from the programme: the name stays, the rank falls to 0
    f = facts_of(state(tier="diamond"))
    assert f["tier"] == "diamond"
    assert f["tier_rank"] == 0


def test_stage_owner_has_owner() -> None:
    f = facts_of(state(lifecycle_stage="prospect", owner="sales.amy"))
    assert f["lifecycle_stage"] == "prospect"
    assert f["owner"] == "sales.amy"
    assert f["has_owner"] is True
    f = facts_of(state())
    assert f["lifecycle_stage"] == "lead"
    assert "owner" not in f
    assert f["has_owner"] is False
    f = facts_of(state(owner=""))
    assert "owner" not in f
    assert f["has_owner"] is False


# --------------------------------------------------------------------------- points, tags


def test_points_balance_ignores_expired_lots() -> None:
    lots = [
        Lot("a", Decimal("100"), AT - timedelta(days=10), None),
        Lot("b", Decimal("50.5"), AT - timedelta(days=10), AT + timedelta(seconds=1)),
        Lot("c", Decimal("7"), AT - timedelta(days=400), AT - timedelta(days=1)),
        Lot("d", Decimal("3"), AT - timedelta(days=365), AT),  # expires at the event: gone
    ]
    f = facts_of(state(lots=lots))
    assert f["points_balance"] == 150.5
    assert isinstance(f["points_balance"], float)
    assert facts_of(state())["points_balance"] == 0.0


def test_tags_with_expiry() -> None:
    tags: dict[str, datetime | None] = {
        "vip": None,
        "new-member": AT + timedelta(days=1),
        "old": AT - timedelta(days=1),
        "edge": AT,  # expires at the event: gone
    }
    f = facts_of(state(tags=tags))
    assert f["tags"] == {"vip", "new-member"}
    assert facts_of(state())["tags"] == set()


# --------------------------------------------------------------------------- purchases


def test_spend_and_purchase_windows_with_boundaries() -> None:
    purchases = [
        (AT - timedelta(days=400), 1.0),  # outside every window
        (AT - timedelta(days=365), 2.0),  # exactly 365 days: outside (window is open)
        (AT - timedelta(days=364, hours=23), 4.0),
        (AT - timedelta(days=90), 8.0),  # exactly 90 days: outside the 90-day window
        (AT - timedelta(days=89), 16.0),
        (AT - timedelta(days=30), 32.0),  # exactly 30 days: outside the 30-day window
        (AT - timedelta(days=29, hours=23), 64.0),
        (AT, 128.0),  # at the event's time: counts
        (AT + timedelta(hours=1), 256.0),  # after the event: never counts
    ]
    f = facts_of(state(purchases=purchases))
    assert f["spend_30d"] == 64 + 128
    assert f["purchases_30d"] == 2
    assert f["spend_90d"] == 16 + 32 + 64 + 128
    assert f["purchases_90d"] == 4
    assert f["spend_365d"] == 4 + 8 + 16 + 32 + 64 + 128
    assert f["purchases_365d"] == 6
    assert f["days_since_last_purchase"] == 0


def test_spend_is_rounded_to_cents() -> None:
    purchases = [(AT - timedelta(days=1), 0.1), (AT - timedelta(days=2), 0.2)]
    f = facts_of(state(purchases=purchases))
    assert f["spend_30d"] == 0.3


def test_no_purchases() -> None:
    f = facts_of(state())
    for d in (30, 90, 365):
        assert f[f"spend_{d}d"] == 0
        assert f[f"purchases_{d}d"] == 0
    for missing in ("days_since_last_purchase", "avg_days_between_purchases", "purchase_gap_ratio"):
        assert missing not in f


def test_days_since_last_purchase() -> None:
    purchases = [(AT - timedelta(days=50), 10.0), (AT - timedelta(days=12, hours=12), 10.0)]
    f = facts_of(state(purchases=purchases))
    assert f["days_since_last_purchase"] == 12.5
    # a purchase older than a year still gives the days since it
    f = facts_of(state(purchases=[(AT - timedelta(days=500), 1.0)]))
    assert f["days_since_last_purchase"] == 500
    assert f["spend_365d"] == 0


def test_avg_gap_and_gap_ratio() -> None:
    purchases = [
        (AT - timedelta(days=700), 1.0),  # more than a year ago: not in the usual gap
        (AT - timedelta(days=150), 1.0),
        (AT - timedelta(days=120), 1.0),
        (AT - timedelta(days=90), 1.0),
    ]
    f = facts_of(state(purchases=purchases))
    assert f["avg_days_between_purchases"] == 30
    assert f["days_since_last_purchase"] == 90
    assert f["purchase_gap_ratio"] == 3


def test_gap_ratio_rounding() -> None:
    purchases = [(AT - timedelta(days=10), 1.0), (AT - timedelta(days=7), 1.0)]
    f = facts_of(state(purchases=purchases))
    assert f["avg_days_between_purchases"] == 3
    assert f["purchase_gap_ratio"] == round(7 / 3, 4)


def test_one_recent_purchase_has_no_usual_gap() -> None:
    purchases = [(AT - timedelta(days=400), 1.0), (AT - timedelta(days=20), 1.0)]
    f = facts_of(state(purchases=purchases))
    assert f["days_since_last_purchase"] == 20
    assert "avg_days_between_purchases" not in f
    assert "purchase_gap_ratio" not in f


def test_same_time_purchases_zero_gap_has_no_ratio() -> None:
    t = AT - timedelta(days=5)
    f = facts_of(state(purchases=[(t, 1.0), (t, 2.0)]))
    assert f["avg_days_between_purchases"] == 0
    assert "purchase_gap_ratio" not in f  # no division by zero


def test_points_earned_365d() -> None:
    earnings = [
        (AT - timedelta(days=365), 1.0),  # exactly a year: outside
        (AT - timedelta(days=364), 10.0),
        (AT, 100.0),
        (AT + timedelta(seconds=1), 1000.0),  # future: outside
    ]
    assert facts_of(state(earnings=earnings))["points_earned_365d"] == 110


# --------------------------------------------------------------------------- time since


def test_follow_up_hours_and_days() -> None:
    s = state(last_follow_up_at=AT - timedelta(hours=49, minutes=30))
    f = facts_of(s)
    assert f["hours_since_last_follow_up"] == 49.5
    assert f["days_since_last_follow_up"] == round(49.5 / 24, 4)


def test_follow_up_falls_back_to_created_at() -> None:
    s = state(created_at=AT - timedelta(hours=3))
    f = facts_of(s)
    assert f["hours_since_last_follow_up"] == 3
    assert f["days_since_last_follow_up"] == round(3 / 24, 4)
    assert f["days_since_created"] == round(3 / 24, 4)


def test_days_since_created() -> None:
    assert facts_of(state())["days_since_created"] == 100


# --------------------------------------------------------------------------- birthday


def test_birthday_month_in_customer_timezone() -> None:
    at = datetime(2026, 5, 31, 20, 0, tzinfo=UTC)  # June 1st, 04:00 in Shanghai
    e = event(at=at)
    june = {"birthday": "1990-06-15"}
    assert facts_of(state(attributes=june, timezone="Asia/Shanghai"), e)["birthday_month"] is True
    assert facts_of(state(attributes=june, timezone="UTC"), e)["birthday_month"] is False
    may = {"birthday": "1990-05-02"}
    assert facts_of(state(attributes=may, timezone="Asia/Shanghai"), e)["birthday_month"] is False
    assert facts_of(state(attributes=may, timezone="UTC"), e)["birthday_month"] is True
    # west of UTC: 2026-06-01T03:00Z is still May 31st in New York
    e2 = event(at=datetime(2026, 6, 1, 3, 0, tzinfo=UTC))
    assert facts_of(state(attributes=may, timezone="America/New_York"), e2)["birthday_month"]


def test_birthday_with_time_part_and_bad_timezone() -> None:
    s = state(attributes={"birthday": "1990-06-15T08:00:00+08:00"}, timezone="Not/AZone")
    assert facts_of(s)["birthday_month"] is True  # unknown zone: the event's own (UTC) time
    s = state(attributes={"birthday": "1990-06-15"}, timezone="")
    assert facts_of(s)["birthday_month"] is True


@pytest.mark.parametrize("raw", [None, 19900615, "not a date", "1990-13-01", ""])
def test_birthday_missing_or_unreadable(raw: Any) -> None:
    attributes = {} if raw is None else {"birthday": raw}
    assert "birthday_month" not in facts_of(state(attributes=attributes))


# --------------------------------------------------------------------------- consent, attributes


def test_consent_and_attributes() -> None:
    s = state(
        consent={"email": True, "sms": False, "wechat": 1},
        attributes={
            "city": "Shanghai",
            "vip": True,
            "visits": 4,
            "score": 1.5,
            "children": ["a"],
            "address": {"street": "x"},
            "nothing": None,
        },
    )
    f = facts_of(s)
    assert f["consent.email"] is True
    assert f["consent.sms"] is False
    assert f["consent.wechat"] is True
    assert f["attributes.city"] == "Shanghai"
    assert f["attributes.vip"] is True
    assert f["attributes.visits"] == 4
    assert f["attributes.score"] == 1.5
    for skipped in ("attributes.children", "attributes.address", "attributes.nothing"):
        assert skipped not in f


@pytest.mark.parametrize(
    ("value", "kept"),
    [("Shanghai", True), ("", True), (3, False), (True, False), (None, False), (["x"], False)],
)
def test_typed_attribute_keeps_only_its_type(value: Any, kept: bool) -> None:
    # attributes.city is declared a string: another type is no fact
    f = facts_of(state(attributes={"city": value}))
    assert ("attributes.city" in f) is kept
    if kept:
        assert f["attributes.city"] == value


def test_typed_number_and_boolean_attributes() -> None:
    program = PROGRAM.model_copy(
        update={"attributes": {**PROGRAM.attributes, "visits": "number", "vip": "boolean"}}
    )
    f = build_facts(state(attributes={"visits": 4, "vip": True}), event(), program)
    assert (f["attributes.visits"], f["attributes.vip"]) == (4, True)
    f = build_facts(state(attributes={"visits": "4", "vip": 1}), event(), program)
    assert "attributes.visits" not in f
    assert "attributes.vip" not in f
    f = build_facts(state(attributes={"visits": False, "vip": "true"}), event(), program)
    assert "attributes.visits" not in f  # a boolean is not a number
    assert "attributes.vip" not in f


@pytest.mark.parametrize("value", ["5", "", 5, 5.5, True, False])
def test_untyped_attribute_keeps_any_scalar(value: Any) -> None:
    # an untyped attribute is any scalar; the compiler keys its values by type, so a text
    # never meets a number comparison (see test_rules_compiler)
    f = facts_of(state(attributes={"anything": value}))
    assert f["attributes.anything"] == value
    assert type(f["attributes.anything"]) is type(value)


def test_every_fixed_fact_is_computed_for_a_full_profile() -> None:
    s = state(
        tier="silver",
        owner="sales.amy",
        attributes={"birthday": "1990-06-01"},
        purchases=[(AT - timedelta(days=20), 5.0), (AT - timedelta(days=10), 5.0)],
        # a customer the customer-base model has scored
        model_facts=dict.fromkeys(MODEL_FACTS, 0.5),
    )
    f = facts_of(s, event("purchase", amount=3))
    assert set(FIXED_FACTS) <= set(f)
    for name, value in f.items():
        kind = fact_kind(name, PROGRAM)
        expected = {
            "number": (int, float),
            "string": (str,),
            "boolean": (bool,),
            "list": (set,),
            "any": (str, int, float, bool),
        }
        assert kind is not None, name
        assert isinstance(value, expected[kind]), (name, value)
        if kind == "number":
            assert not isinstance(value, bool), name


def test_build_facts_does_not_change_the_state() -> None:
    s = state(
        tier="gold",
        tags={"vip": None},
        lots=[Lot("a", Decimal(5), AT, None)],
        purchases=[(AT - timedelta(days=3), 9.0)],
    )
    before = copy.deepcopy(s)
    facts_of(s, event("purchase", amount=100))
    assert s == before


# --------------------------------------------------------------------------- record_event


def test_record_event_adds_a_purchase_that_counts_towards_its_own_facts() -> None:
    s = state(purchases=[(AT - timedelta(days=40), 10.0)])
    e = event("purchase", amount=25)
    record_event(s, e, PROGRAM)
    assert s.purchases == [(AT - timedelta(days=40), 10.0), (AT, 25.0)]
    assert isinstance(s.purchases[-1][1], float)
    f = facts_of(s, e)
    assert f["spend_30d"] == 25
    assert f["spend_90d"] == 35
    assert f["purchases_90d"] == 2
    assert f["days_since_last_purchase"] == 0


def test_record_event_keeps_purchases_sorted() -> None:
    s = state(purchases=[(AT, 1.0)])
    record_event(s, event("purchase", at=AT - timedelta(days=2), amount=2), PROGRAM)
    assert [a for _, a in s.purchases] == [2.0, 1.0]


@pytest.mark.parametrize("props", [{}, {"amount": True}, {"amount": "12"}, {"amount": None}])
def test_record_event_ignores_purchase_without_numeric_amount(props: dict[str, Any]) -> None:
    s = state()
    record_event(s, event("purchase", **props), PROGRAM)
    assert s.purchases == []


def test_record_event_uses_the_programme_purchase_event_and_spend_property() -> None:
    program = PROGRAM.model_copy(update={"purchase_event": "order", "spend_property": "total"})
    s = state()
    record_event(s, event("purchase", amount=5), program)
    assert s.purchases == []
    record_event(s, event("order", total=7, amount=5), program)
    assert s.purchases == [(AT, 7.0)]


def test_record_event_follow_up() -> None:
    s = state()
    record_event(s, event("sales_follow_up", at=AT - timedelta(hours=5)), PROGRAM)
    assert s.last_follow_up_at == AT - timedelta(hours=5)
    record_event(s, event("sales_follow_up", at=AT - timedelta(hours=9)), PROGRAM)
    assert s.last_follow_up_at == AT - timedelta(hours=5)  # an older follow-up changes nothing
    record_event(s, event("sales_follow_up", at=AT), PROGRAM)
    assert s.last_follow_up_at == AT
    f = facts_of(s)
    assert f["hours_since_last_follow_up"] == 0


def test_record_event_ignores_other_events() -> None:
    s = state()
    before = copy.deepcopy(s)
    record_event(s, event("sign_in", amount=100), PROGRAM)
    assert s == before
