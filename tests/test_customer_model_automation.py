"""The scheduled `model_fit` automation and the churn scan's `p_alive` trigger, run as the
other automations are (through Temporal's dev server with a worker, and through the
activities directly), on SQLite and PostgreSQL.

`model_fit` fits the customer model on every purchase up to the run and scores every
customer in the run's transaction; a second attempt of the same run does nothing more. The
churn scan with `trigger: p_alive` sends its event only to members the model scores below
`max_p_alive`, and the example rule pack's churn-risk rule acts on it through its p_alive
branch.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, insert, select

from crmflow.contracts.automations import (
    AutomationInput,
    BeginRequest,
    FinishRequest,
    StepRequest,
)
from crmflow.services.customer_model import customer_scores, show_model
from store.models import CustomerModelRow, CustomerScoreRow, EventRow, TagRow
from tests import test_automations_store as automations
from tests.test_automations_store import AS_OF, ago, customers, events_of, purchase, run

# the automation tests' fixtures: `via` runs through Temporal and through the activities,
# `programme` deploys the example rule pack
via = automations.via
programme = automations.programme


def histories(engine: Engine) -> None:
    """Forty members buying now and then over two years; `gone`, a weekly buyer who stopped
    eight months ago; `steady`, a weekly buyer to this day."""
    rng = np.random.default_rng(11)
    rows: list[dict[str, Any]] = []
    n = 0
    members = [{"customer_id": f"m{c:02d}"} for c in range(40)]
    customers(engine, *members, {"customer_id": "gone"}, {"customer_id": "steady"})
    for c in range(40):
        start = float(rng.uniform(60, 700))
        for k in range(int(rng.integers(1, 7))):
            days = start - k * float(rng.uniform(15, 90))
            if days > 1:
                n += 1
                rows.append(purchase(n, f"m{c:02d}", round(float(rng.gamma(4, 15)), 2), ago(days)))
    for k in range(30):
        n += 1
        rows.append(purchase(n, "gone", 40 + k, ago(240 + 7 * k)))
        n += 1
        rows.append(purchase(n, "steady", 40 + k % 5, ago(2 + 7 * k)))
    with engine.begin() as conn:
        conn.execute(insert(EventRow), rows)


async def test_model_fit_then_churn_scan_on_p_alive(via: str, programme: Engine) -> None:
    engine = programme
    histories(engine)
    summary = await run(engine, "model_fit", {"unit": "weeks"})
    assert summary.counts["customers_fitted"] == 42
    assert summary.counts["customers_scored"] == 42
    report = show_model(engine)
    assert report.active is not None and report.active.fitted_by == "automation"
    # the run's day in UTC (02:00 in Shanghai is 18:00 UTC the day before)
    assert report.active.calibration_end == (AS_OF - timedelta(hours=8)).date()
    gone, steady = customer_scores(engine, "gone"), customer_scores(engine, "steady")
    assert gone is not None and steady is not None
    assert gone.p_alive < 0.05 and steady.p_alive > 0.9

    again = await run(engine, "model_fit", {"unit": "weeks"}, wf="again")
    assert again.counts["customers_fitted"] == 42  # another run: another version
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CustomerModelRow)).scalar() == 2
        assert conn.execute(select(func.count()).select_from(CustomerScoreRow)).scalar() == 42

    summary = await run(
        engine,
        "churn_scan",
        {"trigger": "p_alive", "max_p_alive": 0.3, "min_days_since_purchase": 30},
    )
    checks = events_of(engine, "churn_scan")
    flagged = {e[1] for e in checks}
    assert "gone" in flagged and "steady" not in flagged
    with engine.connect() as conn:
        low = set(
            conn.execute(
                select(CustomerScoreRow.customer_id).where(CustomerScoreRow.p_alive < 0.3)
            ).scalars()
        )
        tagged = set(
            conn.execute(select(TagRow.customer_id).where(TagRow.tag == "churn-risk")).scalars()
        )
    assert flagged <= low
    for _, _cid, props in checks:
        assert props["p_alive"] < 0.3
    # the example pack's churn-risk rule: gone (a regular, long gone) is tagged
    assert "gone" in tagged and "steady" not in tagged
    assert summary.counts["churn_checks"] == len(flagged)


async def test_a_retried_fit_step_fits_once(engine: Engine) -> None:
    """A worker that dies after the fit committed: the retried step finds the run's cursor
    and fits nothing more."""
    histories(engine)
    inp = AutomationInput(
        schedule="test-model-fit", automation="model_fit", timezone="Asia/Shanghai"
    )
    a = automations.acts(engine)
    start = a.begin(BeginRequest(input=inp, as_of=AS_OF, workflow_id="wf-retry"))
    first = await a.step(StepRequest(run_id=start.run_id, step="fit", input=inp))
    again = await a.step(StepRequest(run_id=start.run_id, step="fit", input=inp))
    assert first.counts["customers_fitted"] == 42 and again.counts == {}
    summary = a.finish(FinishRequest(run_id=start.run_id))
    assert summary.counts["customers_scored"] == 42
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CustomerModelRow)).scalar() == 1
