"""The customer model held to the published results, through the store.

CDNOW_sample (tests/data/CDNOW_sample.txt, source in tests/data/CDNOW_SOURCE.md) is replayed
as purchase events with `crmflow events import`, the path every user's data takes; the
model is fitted with `crmflow model fit --until 1997-09-30 --unit weeks`, and its parameters
must be the papers':

- BG/NBD, Fader, Hardie & Lee (2005), "Counting your customers the easy way", section 4:
  r = 0.243, α = 4.414, a = 0.793, b = 2.426, log-likelihood −9,582.4, on the 2,357
  customers' 39-week calibration period (1997-01-01 to 1997-09-30, weeks as the unit).
- Gamma-Gamma, Fader & Hardie (2013), "The Gamma-Gamma model of monetary value" (the data
  of Fader, Hardie & Lee 2005, "RFM and CLV"): p = 6.25, q = 3.74, γ = 15.44, fitted on the
  946 customers with repeat purchases in the calibration period, each with their average
  spend per repeat transaction (the first purchase left out; purchases on one day are one
  transaction whose spend is the day's total).

Runs on SQLite and on PostgreSQL (the `engine` fixture's two databases).
"""

# ruff: noqa: RUF002, RUF003
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner, Result

from automations.customer_model import BgNbdParams, expected_purchases
from crmflow.cli.app import app as cli_app
from crmflow.services.customer_model import customer_scores
from store.models import CustomerScoreRow, EventRow

DATA = Path(__file__).parent / "data" / "CDNOW_sample.txt"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_app, list(args))


def cdnow_events(path: Path) -> list[str]:
    """One purchase event per line of the file: the sample's customer id (column 2), the
    day (column 3, YYYYMMDD, at noon UTC) and the dollar value (column 5). Column 1 is the
    customer's id in the full CDNOW file, column 4 the number of CDs."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        _master, sample_id, day, _cds, dollars = line.split()
        d = date(int(day[:4]), int(day[4:6]), int(day[6:]))
        out.append(
            json.dumps(
                {
                    "event_id": f"cdnow-{n}",
                    "customer_id": f"CDNOW-{sample_id}",
                    "type": "purchase",
                    "occurred_at": f"{d.isoformat()}T12:00:00Z",
                    "properties": {"amount": float(dollars), "currency": "USD"},
                }
            )
        )
    return out


def test_cdnow_fit_matches_the_papers(engine: Engine, cli_env: Path) -> None:
    events = cli_env / "cdnow.jsonl"
    events.write_text("\n".join(cdnow_events(DATA)) + "\n")
    imported = run("events", "import", str(events), "--json")
    assert imported.exit_code == 0, imported.output
    report = json.loads(imported.output)
    assert report["stored"] == 6919 and report["rejected"] == 0

    fitted = run("model", "fit", "--until", "1997-09-30", "--unit", "weeks", "--json")
    assert fitted.exit_code == 0, fitted.output
    model = json.loads(fitted.output)["model"]
    assert model["status"] == "ok" and model["active"]
    assert model["customers"] == 2357
    assert model["repeat_buyers"] == 946
    assert model["calibration_end"] == "1997-09-30" and model["unit"] == "weeks"

    bg = model["purchase_model"]
    assert bg["converged"]
    assert bg["r"] == pytest.approx(0.243, abs=0.005)
    assert bg["alpha"] == pytest.approx(4.414, abs=0.005)
    assert bg["a"] == pytest.approx(0.793, abs=0.005)
    assert bg["b"] == pytest.approx(2.426, abs=0.005)
    assert bg["log_likelihood"] == pytest.approx(-9582.4, abs=0.5)

    gg = model["spend_model"]
    assert gg["converged"] and gg["customers"] == 946
    assert gg["p"] == pytest.approx(6.25, abs=0.005)
    assert gg["q"] == pytest.approx(3.74, abs=0.005)
    assert gg["gamma"] == pytest.approx(15.44, abs=0.005)

    # The paper's worked example of its conditional expectation (Fader, Hardie & Lee 2005,
    # eq. 10, E[Y(t) | x, t_x, T], applied to the CDNOW fit in their empirical analysis): a
    # customer who made x = 2 repeat purchases in the 38.86 weeks since their first (T),
    # the last one at t_x = 30.43, is expected to make 1.226 purchases in the next 39 weeks
    # (the length of the paper's holdout period). Computed here from the fitted parameters.
    params = BgNbdParams(r=bg["r"], alpha=bg["alpha"], a=bg["a"], b=bg["b"])
    conditional = expected_purchases(params, 39.0, [2], [30.43], [38.86])[0]
    assert conditional == pytest.approx(1.226, abs=0.0005)

    # the calibration table: 1,411 customers made no repeat purchase (2,357 − 946), and the
    # model's expectation per bin adds up to every customer
    table = model["calibration"]
    assert [r["repeat_purchases"] for r in table] == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert table[0]["actual"] == 1411
    assert sum(r["actual"] for r in table) == 2357
    assert sum(r["expected"] for r in table) == pytest.approx(2357, abs=0.01)
    assert abs(table[0]["expected"] - 1411) < 10

    # every customer was scored, as of now, on their whole history
    scoring = json.loads(fitted.output)["scoring"]
    assert scoring["customers"] == 2357 and scoring["model_id"] == model["id"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CustomerScoreRow)).scalar() == 2357
        assert conn.execute(select(func.count()).select_from(EventRow)).scalar() == 6919
    one = customer_scores(engine, "CDNOW-0001")
    assert one is not None and one.model_id == model["id"]
    # customer 0001 bought on 1997-01-01, 01-18, 08-02 and 12-12: three repeat purchase days
    assert one.frequency == 3 and one.recency_days == (date(1997, 12, 12) - date(1997, 1, 1)).days
    # nearly thirty years later, CDNOW's customers are very probably gone
    assert 0 <= one.p_alive < 0.05
    assert one.expected_purchases_30d <= one.expected_purchases_90d <= one.expected_purchases_365d
    assert one.expected_avg_spend is not None and one.clv_365d is not None

    shown = run("model", "show", "--json", "--chart", str(cli_env / "calibration.svg"))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["active"]["id"] == model["id"]
    svg = (cli_env / "calibration.svg").read_text()
    assert svg.startswith("<svg") and "1,411" in svg and "expected by the model" in svg
    text = run("model", "show")
    assert "r=0.2426" in text.output and "p=6.2496" in " ".join(text.output.split())
