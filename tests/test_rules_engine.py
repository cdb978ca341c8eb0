"""The engine drives durable_rules' C engine directly: it must fire exactly what durable_rules'
own Python host fires for the same facts (the stock assert / action callbacks / retract path).

Random facts over the example rule pack, over a pack whose `$or` branches start one action
per matching branch, and over a pack big enough to be split into two rulesets.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import uuid
from pathlib import Path
from typing import Any

from durable import engine as dr_engine

from rules.compiler import MAX_RULES_PER_RULESET, CompiledPack, compile_pack
from rules.engine import DurableRulesEngine, _action_name, _SynchronousHost
from rules.models import Program, Rule
from rules.pack import load_pack
from rules.source import yaml_load

REPO = Path(__file__).resolve().parents[1]
PROGRAM = Program.model_validate(yaml_load((REPO / "examples" / "program.yaml").read_text()))
TAGS = ["vip", "big-spender", "lapsed-90d", "new-member", "birthday-month", "né-à-paris"]
_ids = itertools.count()


class HostPath:
    """durable_rules used as documented: Host, an action per rule, assert then retract."""

    def __init__(self) -> None:
        self.host = _SynchronousHost()
        self.hits: set[int] = set()
        self.loaded: set[str] = set()

    def _action(self, index: int) -> Any:
        def run(_c: Any) -> None:
            self.hits.add(index)

        return run

    def fired(self, pack: CompiledPack, facts: dict[str, Any]) -> set[int]:
        if pack.version not in self.loaded:
            self.host.set_rulesets(
                {
                    name: {
                        f"r{r.index}": {"all": [{"m": r.expression}], "run": self._action(r.index)}
                        for r in rules
                    }
                    for name, rules in pack.rulesets.items()
                    if rules
                }
            )
            self.loaded.add(pack.version)
        self.hits = set()
        for name, rules in pack.rulesets.items():
            if not rules:
                continue
            fact = {**pack.message(facts), "sid": "host", "id": f"h{next(_ids)}"}
            with contextlib.suppress(dr_engine.MessageNotHandledException):
                self.host.assert_fact(name, fact)
            self.host.retract_fact(name, fact)
        return self.hits


def random_facts(rng: random.Random) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "event.type": rng.choice(["purchase", "purchase", "sign_in", "follow_up", "unsubscribed"]),
        "tier_rank": rng.randint(0, 3),
        "points_balance": round(rng.random() * 5000, 2),
        "tags": set(rng.sample(TAGS, rng.randint(0, 3))),
        "lifecycle_stage": rng.choice(["lead", "prospect", "customer", "member"]),
        "has_owner": rng.random() < 0.5,
        "purchase_gap_ratio": round(rng.random() * 6, 4),
        "hours_since_last_follow_up": round(rng.random() * 120, 3),
        "birthday_month": rng.random() < 0.2,
    }
    for days in (30, 90, 365):
        facts[f"spend_{days}d"] = rng.choice([0, 0.5, 99.99, 1000, rng.random() * 40000])
        facts[f"purchases_{days}d"] = rng.randint(0, 12)
    if rng.random() < 0.9:
        facts["event.amount"] = rng.choice([0, 5, 50.5, 999.99, 1000, 3000.25, 1e-7])
    if rng.random() < 0.7:
        facts["tier"] = rng.choice(["basic", "silver", "gold", "platinum"])
    if facts["has_owner"]:
        facts["owner"] = rng.choice(["sales.amy", "sales.bo"])
    if rng.random() < 0.5:
        facts["days_since_last_purchase"] = round(rng.random() * 300, 4)
    return facts


def same_as_host(pack: CompiledPack, count: int, seed: int) -> int:
    rng = random.Random(seed)
    ours, host = DurableRulesEngine(), HostPath()
    firings = 0
    for i in range(count):
        facts = random_facts(rng)
        want = host.fired(pack, facts)
        assert ours.fired(pack, facts) == want, (i, facts)
        firings += len(want)
    return firings


def test_example_pack_fires_what_the_host_fires() -> None:
    pack, _ = load_pack(REPO / "examples" / "rules")
    assert same_as_host(pack, 3000, seed=1) > 1000  # a meaningful number of matches


def rule(name: str, when: Any, on: str | None = None) -> Rule:
    return Rule.model_validate({"name": name, "when": when, "on": on, "then": [{"add_tag": "x"}]})


def test_or_branches_and_negations_fire_once_per_rule() -> None:
    rules_ = [
        rule("either", {"any": ["spend_30d >= 1000", "event.amount >= 1000", "tags contains vip"]}),
        rule("neither", {"not": {"any": ["tier == gold", "points_balance > 2500"]}}),
        rule("purchase", None, on="purchase"),
        rule("text", "owner != sales.amy"),
        rule("unicode", "tags contains né-à-paris"),
    ]
    pack = compile_pack(f"eq{uuid.uuid4().hex[:12]}", PROGRAM, [("a.yaml", r) for r in rules_])
    assert same_as_host(pack, 3000, seed=2) > 1000


def test_a_pack_split_into_two_rulesets() -> None:
    count = MAX_RULES_PER_RULESET + 30
    rules_ = [
        rule(f"r{n}", {"all": [f"purchases_365d == {n % 13}", f"tier_rank == {n % 4}"]})
        for n in range(count)
    ]
    pack = compile_pack(f"eq{uuid.uuid4().hex[:12]}", PROGRAM, [("a.yaml", r) for r in rules_])
    assert len(pack.rulesets) == 2
    assert same_as_host(pack, 300, seed=3) > 1000


def test_action_names_are_read_without_parsing() -> None:
    assert _action_name('{"r12":{"m":{"sid":"x"}}}') == "r12"
    assert _action_name(' {"r7": {}}') == "r7"  # anything unusual is parsed as JSON
