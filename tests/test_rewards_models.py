"""The rewards file (rules/rewards.py): the models, file:line errors, tiers checked against
the programme, and the example catalogue."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from rules.models import Program
from rules.pack import load_program
from rules.rewards import CouponSpec, Reward, RewardsFile, load_rewards
from rules.source import SourceError, load_yaml, parse_yaml

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """\
program: Test Rewards
welcome_tier: basic
tiers:
  - {name: basic, rank: 0, qualify: {metric: spend, threshold: 0}}
  - {name: silver, rank: 1, qualify: {metric: spend, threshold: 2000}}
  - {name: gold, rank: 2, qualify: {metric: spend, threshold: 8000}}
"""


def program() -> Program:
    return load_program(parse_yaml(PROGRAM, "program.yaml"))


def problems(text: str, prog: Program | None = None) -> list[str]:
    with pytest.raises(SourceError) as info:
        load_rewards(textwrap.dedent(text), prog or program(), "rewards.yaml")
    return [str(e) for e in info.value.errors]


def test_the_example_catalogue_loads_against_the_example_programme() -> None:
    prog = load_program(load_yaml(REPO / "examples" / "program.yaml"))
    found = load_rewards(REPO / "examples" / "rewards.yaml", prog)
    coffee, lounge = found.rewards
    assert (coffee.id, coffee.kind, coffee.cost, coffee.stock) == (
        "coffee-voucher",
        "coupon",
        Decimal(500),
        1000,
    )
    assert coffee.per_member_limit == 2
    assert coffee.valid_to is not None
    assert coffee.valid_to.isoformat() == "2027-01-01T00:00:00+08:00"
    assert coffee.coupon == CouponSpec(value=Decimal(30), valid_days=30, code_prefix="CAFE")
    assert (lounge.kind, lounge.min_tier, lounge.stock, lounge.coupon) == (
        "service",
        "gold",
        None,
        None,
    )


def test_a_good_file_with_every_field() -> None:
    found = load_rewards(
        textwrap.dedent(
            """\
            rewards:
              - id: mug
                name: Mug
                kind: gift
                cost: 120.5
                stock: 0
                per_member_limit: 1
                valid_from: "2026-01-01T00:00:00Z"
                valid_to: "2026-06-01T00:00:00+08:00"
                min_tier: silver
                description: A mug with the logo
            """
        ),
        program(),
    )
    (mug,) = found.rewards
    assert mug.cost == Decimal("120.5") and mug.stock == 0 and mug.min_tier == "silver"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            """\
            rewards:
              - id: mug
                name: Mug
                kind: gift
                cost: 0
            """,
            "rewards.yaml:5: rewards.0.cost: Input should be greater than 0",
        ),
        (
            """\
            rewards:
              - id: mug
                name: Mug
                kind: gift
                cost: 1.005
            """,
            "rewards.yaml:5: rewards.0.cost: Decimal input should have no more than 2 decimal "
            "places",
        ),
        (
            """\
            rewards:
              - {id: mug, name: Mug, kind: gift, cost: 10}
              - id: cup
                name: Cup
                kind: coupon
                cost: 10
            """,
            "rewards.yaml:3: rewards.1: a coupon reward needs `coupon: {value, valid_days, "
            "code_prefix}`",
        ),
        (
            """\
            rewards:
              - id: mug
                name: Mug
                kind: gift
                cost: 10
                coupon: {value: 5, valid_days: 3, code_prefix: MUG}
            """,
            "rewards.yaml:2: rewards.0: only a coupon reward has `coupon` (this one is a gift)",
        ),
        (
            """\
            rewards:
              - id: cup
                name: Cup
                kind: coupon
                cost: 10
                coupon: {value: 5, valid_days: 3, code_prefix: cup-}
            """,
            "rewards.yaml:6: rewards.0.coupon.code_prefix: String should match pattern",
        ),
        (
            """\
            rewards:
              - id: mug
                name: Mug
                kind: gift
                cost: 10
                valid_from: "2026-06-01T00:00:00Z"
                valid_to: "2026-01-01T00:00:00Z"
            """,
            "rewards.yaml:2: rewards.0: valid_from (2026-06-01T00:00:00+00:00) must come before "
            "valid_to (2026-01-01T00:00:00+00:00)",
        ),
        (
            """\
            rewards:
              - id: mug
                name: Mug
                kind: gift
                cost: 10
                valid_to: "2026-01-01T00:00:00"
            """,
            "rewards.yaml:6: rewards.0.valid_to: Input should have timezone info",
        ),
        (
            """\
            rewards:
              - {id: mug, name: Mug, kind: gift, cost: 10}
              - {id: mug, name: Other mug, kind: gift, cost: 12}
            """,
            "rewards.yaml:1: reward ids must be unique: mug repeated",
        ),
        (
            """\
            rewards:
              - {id: Mug, name: Mug, kind: gift, cost: 10}
            """,
            "rewards.yaml:2: rewards.0.id: 'Mug' is not a valid name",
        ),
        (
            """\
            rewards:
              - {id: mug, name: Mug, kind: toy, cost: 10}
            """,
            "rewards.yaml:2: rewards.0.kind: expected 'coupon', 'gift' or 'service'",
        ),
        (
            """\
            rewards:
              - {id: mug, name: Mug, kind: gift, cost: 10, colour: red}
            """,
            "rewards.yaml:2: rewards.0.colour: unknown field",
        ),
        (
            """\
            rewards:
              - {id: mug, name: Mug, kind: gift, cost: 10}
              - id: pass
                name: Lounge
                kind: service
                cost: 8000
                min_tier: diamond
            """,
            "rewards.yaml:7: rewards.1.min_tier: unknown tier 'diamond'; the tiers are basic, "
            "silver, gold",
        ),
        ("- just a list\n", "rewards.yaml:1: a rewards file is a mapping (rewards: [...]), not a"),
        ("rewards: [\n", "rewards.yaml:2: not valid YAML"),
    ],
)
def test_each_problem_names_file_line_and_field(body: str, expected: str) -> None:
    found = problems(body)
    assert any(p.startswith(expected) for p in found), found


def test_min_tier_cannot_be_checked_without_a_programme() -> None:
    text = "rewards:\n  - {id: pass, name: Lounge, kind: service, cost: 8000, min_tier: gold}\n"
    with pytest.raises(SourceError) as info:
        load_rewards(text, None)
    assert [str(e) for e in info.value.errors] == [
        "rewards.yaml:2: rewards.0.min_tier: tier 'gold' cannot be checked: no programme"
    ]
    # without min_tier no programme is needed
    assert load_rewards(text.replace(", min_tier: gold", ""), None).rewards[0].id == "pass"


def test_names_with_nul_and_dates_out_of_range_are_refused() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        Reward(id="mug", name="M\x00g", kind="gift", cost=Decimal(1))
    with pytest.raises(ValidationError, match="between the years"):
        Reward.model_validate(
            {"id": "mug", "name": "Mug", "kind": "gift", "cost": 1, "valid_to": "9999-01-01T00:00Z"}
        )


def test_the_json_schema_describes_the_file() -> None:
    schema = RewardsFile.model_json_schema()
    reward = schema["$defs"]["Reward"]
    assert set(reward["required"]) == {"id", "name", "kind", "cost"}
    assert reward["properties"]["kind"]["enum"] == ["coupon", "gift", "service"]
