"""Journey experiments measured fairly: the maths of `journeys.experiment` against published
worked examples (Newcombe 1998's single-proportion and difference intervals, a textbook
two-proportion z-test, Fisher's tea-tasting table and an exact enumeration), and the one
definition of a conversion — the goal event within the goal window after entering, whatever
state the enrollment is in — counted by the store on SQLite and PostgreSQL for every arm;
then the chart (graph order, variants against the holdout) as SVG and HTML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import timedelta
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmflow.cli import app, journey_reports
from crmflow.services import journey_charts, journey_views
from journeys import experiment
from journeys.experiment import (
    difference_interval,
    fisher_exact,
    needs_exact,
    p_value,
    rate,
    uplift,
    wilson,
    z_test,
)
from store.journey_stats import VariantConversion, journey_stats
from store.journeys import deploy_journey
from tests.test_journey_stats import T0, Seed
from tests.test_journey_workflow import journey

SVG = "{http://www.w3.org/2000/svg}"
runner = CliRunner()


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # Newcombe (1998a), Stat Med 17:857, Table I, method 3 (Wilson score, no correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_against_newcombe_1998a(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got is not None
    assert got == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "low", "high"),
    [  # Newcombe (1998b), Stat Med 17:873, Table II, method 10 (hybrid score)
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (0, 10, 0, 10, -0.2775, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0),
        (10, 10, 0, 10, 0.6075, 1.0),
    ],
)
def test_difference_against_newcombe_1998b(
    k1: int, n1: int, k2: int, n2: int, low: float, high: float
) -> None:
    got = difference_interval(k1, n1, k2, n2)
    assert got is not None
    assert got == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_interval_edges() -> None:
    assert wilson(0, 0) is None and difference_interval(1, 1, 0, 0) is None
    low, high = wilson(1, 1)  # type: ignore[misc]
    assert low == pytest.approx(0.2065, abs=1e-4) and high == 1.0  # one of one: not [1, 1]
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        z_test(-1, 5, 0, 5)


def test_the_console_keeps_its_names() -> None:
    assert journey_views.wilson is experiment.wilson
    assert journey_views.difference_interval is experiment.difference_interval
    assert journey_views.SMALL_SAMPLE == experiment.SMALL_SAMPLE == 30


# --------------------------------------------------------------------------- tests


def test_z_test_textbook_example() -> None:
    # Montgomery & Runger, Applied Statistics and Probability for Engineers, the St John's
    # Wort example: 27 of 100 against 19 of 100; z0 = 1.34, P = 2[1 - Phi(1.34)] = 0.18
    z, p = z_test(27, 100, 19, 100)  # type: ignore[misc]
    assert round(z, 2) == 1.34 and round(p, 2) == 0.18
    assert z == pytest.approx(0.08 / (0.23 * 0.77 * 0.02) ** 0.5)
    assert z_test(19, 100, 27, 100) == (pytest.approx(-z), pytest.approx(p))  # symmetric
    assert z_test(0, 50, 0, 50) == (0.0, 1.0)  # nobody converted: nothing to tell apart
    assert z_test(0, 0, 0, 5) is None
    assert experiment.normal_two_sided(1.959963984540054) == pytest.approx(0.05)


def _fisher_oracle(k1: int, n1: int, k2: int, n2: int) -> Fraction:
    """Two-sided Fisher p by exact enumeration in rationals."""
    k, total = k1 + k2, n1 + n2
    probs = {
        x: Fraction(comb(n1, x) * comb(n2, k - x), comb(total, k))
        for x in range(max(0, k - n2), min(k, n1) + 1)
    }
    return sum((q for q in probs.values() if q <= probs[k1]), Fraction(0))


def test_fisher_exact() -> None:
    # Fisher's lady tasting tea: 3 of 4 cups right, 1 of 4 wrong; two-sided 34/70
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert fisher_exact(4, 4, 0, 4) == pytest.approx(2 / 70)
    for table in [(6, 8, 1, 5), (0, 12, 5, 9), (2, 30, 9, 31), (7, 7, 7, 7), (1, 3, 0, 0)]:
        expected = _fisher_oracle(*table) if table[3] else None
        got = fisher_exact(*table)
        assert got == (pytest.approx(float(expected)) if expected is not None else None)
    assert fisher_exact(6, 8, 1, 5) == pytest.approx(0.10256, abs=1e-5)


def test_which_test_gives_the_p_value() -> None:
    assert needs_exact(3, 4, 1, 4) and p_value(3, 4, 1, 4) == (pytest.approx(34 / 70), "fisher")
    # every expected cell at least 5: the z-test
    assert not needs_exact(27, 100, 19, 100)
    assert p_value(27, 100, 19, 100) == (pytest.approx(z_test(27, 100, 19, 100)[1]), "z")  # type: ignore[index]
    assert needs_exact(2, 100, 1, 100)  # rare conversions: expected 1.5, exact test
    assert p_value(0, 0, 0, 5) is None


def test_small_samples_get_no_verdict() -> None:
    one, none = rate(1, 1), rate(0, 1)
    assert one.small_sample and none.small_sample
    up = uplift(none, one)  # "-100 pp" on one customer each
    assert up is not None and up.absolute == -1.0
    assert up.small_sample and up.verdict is None
    assert up.low is not None and up.low < 0 < (up.high or 0)  # the interval says how little
    assert rate(4, 100).small_sample and not rate(5, 30).small_sample and rate(29, 29).small_sample
    better = uplift(rate(30, 60), rate(10, 60))
    assert better is not None and better.verdict == "better" and better.test == "z"
    assert better.p_value is not None and better.p_value < 0.001
    assert better.relative == pytest.approx(2.0)
    worse = uplift(rate(10, 60), rate(30, 60))
    assert worse is not None and worse.verdict == "worse"
    even = uplift(rate(54, 180), rate(8, 40))
    assert even is not None and even.verdict == "no clear difference"
    assert even.low is not None and even.low < 0 < (even.high or 0)
    assert uplift(rate(0, 0), rate(1, 2)) is None


# --------------------------------------------------------------------------- the store

EXP = """
journey: exp
entry: rule
goal: {{event: purchase, within_days: 7{when}}}
channels: [email]
start: split
nodes:
  split:
    type: split
    variants: [{{name: a, weight: 1, next: zmail}}]
    holdout: {{weight: 1}}
  zmail:
    type: message
    channel: email
    template: {{subject: "Offer", text: "t"}}
    next: apause
  apause: {{type: delay, duration: 2d, next: done}}
  done: {{type: exit}}
"""


def seed_every_state(engine: Engine, name: str = "exp", when: str = "") -> str:
    """Variant a: 9 enrollments in every state; holdout: 4. See the test for who counts."""
    definition = journey(EXP.format(when=when).replace("journey: exp", f"journey: {name}"))
    day = timedelta(days=1)
    with engine.begin() as conn:
        version, _ = deploy_journey(conn, name, definition.definition(), "src", None)
        s = Seed(conn, name)
        a, h = "a", "holdout"
        s.enrollment("ACTIVE", version, "active", "apause", a, T0)
        s.event("ACTIVE", "purchase", T0 + day, amount=150)  # still in the journey: counts
        s.enrollment("CONVERTED", version, "converted", "apause", a, T0)
        s.event("CONVERTED", "purchase", T0 + 2 * day, amount=150)
        s.enrollment("COMPLETED", version, "completed", "done", a, T0)
        s.event("COMPLETED", "purchase", T0 + 6 * day, amount=150)  # finished, then bought
        s.enrollment("LATE", version, "completed", "done", a, T0)
        s.event("LATE", "purchase", T0 + 7 * day + timedelta(minutes=1), amount=150)
        s.enrollment("EXITED", version, "exited", "apause", a, T0)
        s.event("EXITED", "purchase", T0 + 3 * day, amount=150)
        s.enrollment("FAILED", version, "failed", "zmail", a, T0)
        s.enrollment("EARLY", version, "completed", "done", a, T0)
        s.event("EARLY", "purchase", T0 - timedelta(minutes=1), amount=150)  # before entering
        s.enrollment("OTHER", version, "completed", "done", a, T0)
        s.event("OTHER", "visit", T0 + day)  # not the goal
        s.enrollment("SMALL", version, "completed", "done", a, T0)
        s.event("SMALL", "purchase", T0 + day, amount=50)  # fails the condition, if any
        s.enrollment("H_IN", version, "held_out", "split", h, T0)
        s.event("H_IN", "purchase", T0 + 3 * day, amount=150)
        s.enrollment("H_EDGE", version, "held_out", "split", h, T0)
        s.event("H_EDGE", "purchase", T0 + 7 * day, amount=150)  # the window's last moment
        s.event("H_EDGE", "purchase", T0 + 5 * day, amount=120)  # counted once
        s.enrollment("H_LATE", version, "held_out", "split", h, T0)
        s.event("H_LATE", "purchase", T0 + 7 * day + timedelta(minutes=1), amount=150)
        s.enrollment("H_NONE", version, "held_out", "split", h, T0)
        s.event("H_NONE", "purchase", T0 + day, amount=20)
    return version


def test_one_definition_of_conversion_for_every_arm(engine: Engine) -> None:
    seed_every_state(engine)
    with engine.connect() as conn:
        st = journey_stats(conn, "exp")
    (vs,) = st.versions
    a, hold = vs.conversions
    # a: ACTIVE, CONVERTED, COMPLETED (bought after finishing, inside the window), EXITED,
    # SMALL (no condition here) — not LATE, FAILED, EARLY, OTHER
    assert (a.variant, a.enrollments, a.conversions) == ("a", 9, 5)
    # holdout: H_IN, H_EDGE (bounds inclusive), H_NONE (any amount) — not H_LATE
    assert (hold.variant, hold.enrollments, hold.conversions) == ("holdout", 4, 3)
    assert a.counted_by == hold.counted_by == "goal_events"
    assert a.rate == pytest.approx(5 / 9) and hold.rate == pytest.approx(0.75)
    assert (a.low, a.high) == tuple(pytest.approx(x) for x in wilson(5, 9))  # type: ignore[union-attr]
    assert a.uplift_absolute == pytest.approx(5 / 9 - 0.75)
    interval = difference_interval(5, 9, 3, 4)
    assert (a.uplift_low, a.uplift_high) == tuple(pytest.approx(x) for x in interval)  # type: ignore[union-attr]
    assert (a.p_value, a.test) == (pytest.approx(fisher_exact(5, 9, 3, 4)), "fisher")
    assert a.small_sample and a.comparison_small_sample and a.verdict is None
    assert hold.uplift_absolute is None and hold.p_value is None
    # the console shows the same figures, and no uplift for small samples
    views = journey_views.conversion_views(vs.conversions)
    assert [(v.variant, v.conversions, v.small_sample, v.uplift) for v in views] == [
        ("a", 5, True, None),
        ("holdout", 3, True, None),
    ]


def test_a_goal_condition_holds_for_every_arm(engine: Engine) -> None:
    seed_every_state(engine, "exp-when", when=", when: event.amount >= 100")
    with engine.connect() as conn:
        (vs,) = journey_stats(conn, "exp-when").versions
    a, hold = vs.conversions
    assert (a.enrollments, a.conversions) == (9, 4)  # SMALL's 50 fails the condition
    assert (hold.enrollments, hold.conversions) == (4, 2)  # H_NONE's 20 fails it


def test_a_verdict_on_large_arms(engine: Engine) -> None:
    with engine.begin() as conn:
        version, _ = deploy_journey(
            conn, "exp-big", journey(EXP.format(when="").replace("exp", "exp-big")).definition(),
            "src", None,
        )  # fmt: skip
        s = Seed(conn, "exp-big")
        for i in range(60):
            s.enrollment(f"A{i}", version, "completed", "done", "a", T0)
            if i < 30:
                s.event(f"A{i}", "purchase", T0 + timedelta(days=4))  # all after completing
            s.enrollment(f"H{i}", version, "held_out", "split", "holdout", T0)
            if i < 10:
                s.event(f"H{i}", "purchase", T0 + timedelta(days=4))
    with engine.connect() as conn:
        st = journey_stats(conn, "exp-big")
    a, hold = st.versions[0].conversions
    assert (a.conversions, hold.conversions) == (30, 10)
    assert not a.small_sample and not hold.small_sample and a.comparison_small_sample is False
    assert a.test == "z" and a.p_value == pytest.approx(z_test(30, 60, 10, 60)[1])  # type: ignore[index]
    assert a.verdict == "better" and a.uplift_low is not None and a.uplift_low > 0
    (view, _) = journey_views.conversion_views(st.versions[0].conversions)
    assert view.verdict == "better" and view.uplift == pytest.approx(1 / 3) and view.conclusive
    # the whole-journey rows carry the same maths
    total = {c.variant: c for c in st.conversions}
    assert total["a"].verdict == "better" and total["a"].p_value == a.p_value


# --------------------------------------------------------------------------- chart


def test_chart_in_graph_order_with_variants_against_the_holdout(
    engine: Engine, tmp_path: Path
) -> None:
    seed_every_state(engine)
    with engine.connect() as conn:
        st = journey_stats(conn, "exp")
    order = ["split", "zmail", "apause", "done"]  # from start along the edges
    assert [n.node for n in st.versions[0].nodes] == order
    svg = journey_charts.funnel_svg(st)
    root = ET.fromstring(svg)
    groups = list(root.iter(f"{SVG}g"))
    assert [g.get("data-node") for g in groups if g.get("data-node")] == order
    arms = {g.get("data-variant"): g for g in groups if g.get("class") == "arm"}
    assert set(arms) == {"a", "holdout"}
    a_text = " ".join(" ".join(t.itertext()) for t in arms["a"].iter(f"{SVG}text"))
    assert "5/9 · 55.6% (26.7%-81.1%) · small sample" in a_text
    assert "uplift -19.4 pp" in a_text and "Fisher" in a_text and "no verdict" in a_text
    hold_text = " ".join(" ".join(t.itertext()) for t in arms["holdout"].iter(f"{SVG}text"))
    assert "3/4" in hold_text and "the baseline" in hold_text
    assert arms["a"].find(f"{SVG}path") is not None  # the interval's whisker

    html = journey_charts.funnel_html(st)
    assert html.startswith("<!doctype html>") and '<svg xmlns="http://www.w3.org/2000/svg"' in html
    assert '<th scope="row">variant a</th>' in html and "small sample: no verdict" in html
    out = tmp_path / "exp.html"
    journey_reports.write_chart(st, out)
    assert out.read_text() == html


def test_cli_writes_the_html_chart(cli_env: Path, engine: Engine) -> None:
    seed_every_state(engine)
    out = cli_env / "exp.html"
    result = runner.invoke(app, ["journeys", "stats", "exp", "--json", "--chart", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    a = next(c for c in data["versions"][0]["conversions"] if c["variant"] == "a")
    assert (a["enrollments"], a["conversions"], a["test"], a["verdict"]) == (9, 5, "fisher", None)
    text = out.read_text()
    assert "<html" in text and "variants against the holdout" in text
    VariantConversion.model_validate(a)  # the JSON is the model
