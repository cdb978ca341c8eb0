"""The customer page's Model section: the customer model's scores for a scored customer
(chance still buying, expected purchases, spend, value, the model version), and a plain
notice for a customer without a score. Over HTTP on SQLite and PostgreSQL, and in Chromium
(a screenshot goes to test-artifacts/console/)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, expect

from crmflow.services.customer_model import ModelFitInput, customer_scores, fit_model
from tests.console_helpers import ConsoleServer, shoot
from tests.rules_helpers import event, import_rows


def seed_and_fit(server: ConsoleServer, tmp: Path) -> int:
    """Thirty buyers, a regular (`REG`) and a sign-up who never bought (`NOBUY`); fitted."""
    engine = server.runtime.engine
    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    rows = []
    for c in range(30):
        first = float(rng.uniform(30, 500))
        for k in range(int(rng.integers(1, 6))):
            days = first - k * float(rng.uniform(10, 80))
            if days > 0:
                at = (now - timedelta(days=days)).isoformat()
                amount = round(float(rng.gamma(4, 20)), 2)
                rows.append(event(f"b{c}-{k}", f"B{c:02d}", at=at, amount=amount))
    for k in range(12):
        at = (now - timedelta(days=3 + 14 * k)).isoformat()
        rows.append(event(f"reg-{k}", "REG", at=at, amount=60.0 + k))
    rows.append(event("nobuy", "NOBUY", "sign_in", at=now.isoformat()))
    import_rows(engine, tmp / "events.jsonl", rows)
    outcome = fit_model(engine, ModelFitInput(unit="days"))
    assert outcome.model.status == "ok"
    return outcome.model.id


def test_the_customer_page_shows_the_model_scores(
    console_server: ConsoleServer, tmp_path: Path
) -> None:
    model_id = seed_and_fit(console_server, tmp_path)
    scores = customer_scores(console_server.runtime.engine, "REG")
    assert scores is not None
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/customers/REG")
        assert page.status_code == 200
        text = page.text
        assert 'id="model-title">Model' in text
        assert f"customer model {model_id}, scored" in text
        assert f"{scores.p_alive * 100:.1f}%" in text
        assert "chance still buying" in text and "value next 365 days" in text
        assert f"{scores.expected_purchases_90d:,.2f}" in text
        none = http.get("/console/customers/NOBUY").text
        assert "No model scores: the customer has no purchase yet" in none


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_model_section_in_the_browser(
    console_server: ConsoleServer, browser: Browser, tmp_path: Path
) -> None:
    seed_and_fit(console_server, tmp_path)
    page = console_server.open(browser, "marketer")
    page.goto(console_server.base + "/console/customers/REG")
    section = page.locator("#model")
    expect(section.get_by_role("heading", name="Model")).to_be_visible()
    expect(section.get_by_text("chance still buying")).to_be_visible()
    section.scroll_into_view_if_needed()
    shoot(page, "customer-model")
