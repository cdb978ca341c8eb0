"""The customer model's scores as facts the rules read: a deployed rule on `p_alive` fires
for a lapsed buyer the model scored, and not for a customer it never scored (the fact is
missing, as other facts are when there is nothing to compute them from). A scoring after
the rules last saw a customer reaches them: it bumps the customer's state version, so a
rule state kept in memory between imports is reloaded. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select

from crmflow.services.customer_model import ModelFitInput, customer_scores, fit_model
from crmflow.services.customers import customer_360
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.models import TagRow
from tests.rules_helpers import deploy_dir, event, import_rows, rules_dir

RULES = """
rules:
  - name: likely-gone
    on: [sign_in, churn_scan]
    when: p_alive < 0.2
    then:
      - add_tag: likely-gone
  - name: worth-keeping
    on: sign_in
    when: clv_365d >= 0
    then:
      - add_tag: scored
"""


def history(now: datetime) -> list[dict[str, object]]:
    """Sixty ordinary buyers over two years, a regular who stopped a year and a half ago
    (`LAPSED`) and one who buys every week (`LOYAL`)."""
    rng = np.random.default_rng(7)
    rows: list[dict[str, object]] = []
    start = now - timedelta(days=730)
    for c in range(60):
        first = rng.uniform(0, 600)
        for k in range(int(rng.integers(1, 8))):
            at = start + timedelta(days=first + k * float(rng.uniform(10, 60)))
            if at < now:
                amount = round(float(rng.gamma(4.0, 12.0)), 2)
                rows.append(event(f"o{c}-{k}", f"C{c:03d}", at=at.isoformat(), amount=amount))
    for k in range(20):
        at = start + timedelta(days=7 * k)
        rows.append(event(f"lapsed-{k}", "LAPSED", at=at.isoformat(), amount=30.0 + k))
    for k in range(100):
        at = now - timedelta(days=7 * k + 1)
        rows.append(event(f"loyal-{k}", "LOYAL", at=at.isoformat(), amount=40.0 + k % 7))
    return rows


def tags(engine: Engine, customer: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(TagRow.tag).where(TagRow.customer_id == customer)).scalars())


def test_rules_read_the_model_scores(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, rules_dir(tmp_path, RULES))
    now = datetime.now(UTC).replace(microsecond=0)
    import_rows(engine, tmp_path / "history.jsonl", history(now))
    # the rules see LAPSED before any model: p_alive is missing, nothing fires
    signed = (now - timedelta(minutes=5)).isoformat()
    import_rows(
        engine,
        tmp_path / "before.jsonl",
        [event("s0", "LAPSED", "sign_in", at=signed), event("s1", "NEW", "sign_in", at=signed)],
    )
    assert tags(engine, "LAPSED") == set()

    outcome = fit_model(engine, ModelFitInput(unit="days"))
    assert outcome.model.status == "ok" and outcome.scoring is not None
    lapsed, loyal = customer_scores(engine, "LAPSED"), customer_scores(engine, "LOYAL")
    assert lapsed is not None and loyal is not None
    assert lapsed.p_alive < 0.2 < 0.9 < loyal.p_alive
    assert loyal.expected_purchases_30d > lapsed.expected_purchases_30d
    assert outcome.model.spend_model is not None and outcome.model.spend_model.converged
    assert loyal.clv_365d is not None and loyal.clv_365d > 0
    assert customer_scores(engine, "NEW") is None  # no purchase: no score
    # the API's 360 view carries them
    rt = Runtime(Settings(), engine)
    try:
        view = customer_360(rt, "LOYAL", mask=True)
    finally:
        rt.close()
    assert view.model is not None and view.model.p_alive == loyal.p_alive

    later = (now - timedelta(minutes=1)).isoformat()
    import_rows(
        engine,
        tmp_path / "after.jsonl",
        [
            event("s2", "LAPSED", "sign_in", at=later),
            event("s3", "LOYAL", "sign_in", at=later),
            event("s4", "NEW", "sign_in", at=later),
        ],
    )
    assert tags(engine, "LAPSED") == {"likely-gone", "scored"}
    assert tags(engine, "LOYAL") == {"scored"}
    assert tags(engine, "NEW") == set()  # p_alive and clv_365d are missing: no rule matches


def test_a_rule_naming_a_model_fact_validates(tmp_path: Path) -> None:
    from rules.pack import load_pack

    pack, _ = load_pack(rules_dir(tmp_path, RULES))
    assert {r.rule.name for r in pack.rules} == {"likely-gone", "worth-keeping"}
    assert "p_alive" in pack.rules[0].facts
    bad = RULES.replace("p_alive < 0.2", "p_alive == gone")
    with pytest.raises(Exception, match="p_alive"):
        load_pack(rules_dir(tmp_path / "bad", bad))
