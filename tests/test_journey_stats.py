"""Journey reports: stats per version and node, conversions of every arm counted from goal
events (one definition) with the uplift over the holdout, who is where; the CLI
(`journeys stats`, `journeys enrollments`) and the SVG funnel. Exact figures from seeded
tables on SQLite and PostgreSQL, and one run of real enrollments on the time-skipping
server."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Connection, Engine, insert, select
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from crmflow.cli import app, journey_reports
from crmflow.contracts.journeys import JOURNEY_EVENT_SIGNAL, JourneyEvent
from crmflow.services import journey_charts
from journeys.interpret import assign_variant
from store.journey_stats import (
    JourneyStats,
    NodeStats,
    UnknownJourney,
    VersionStats,
    enrollments,
    journey_stats,
)
from store.journeys import deploy_journey
from store.models import CustomerRow, EnrollmentRow, EventRow, JourneyStepRow
from tests.test_journey_workflow import customers, journey, start, worker

runner = CliRunner()

PROMO = """
journey: promo
entry: rule
goal: {{event: purchase, within_days: {days}{when}}}
channels: [email]
start: split
nodes:
  split:
    type: split
    variants:
      - {{name: a, weight: 1, next: mail}}
      - {{name: b, weight: 1, next: mail}}
    holdout: {{weight: 1}}
  mail:
    type: message
    channel: email
    template: {{subject: "Offer", text: "t"}}
    next: pause
  pause: {{type: delay, duration: 2d, next: done}}
  done: {{type: exit}}
"""
V1_DEF = journey(PROMO.format(days=7, when="")).definition()
V2_DEF = journey(PROMO.format(days=3, when=", when: event.amount >= 100")).definition()
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
T1 = datetime(2025, 2, 1, 10, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- seeding


class Seed:
    def __init__(self, conn: Connection, journey: str = "promo") -> None:
        self.conn = conn
        self.journey = journey
        self.n = 0

    def enrollment(
        self,
        cid: str,
        version: str,
        status: str,
        node: str | None,
        variant: str | None,
        entered: datetime,
        steps: Sequence[tuple[str, ...]] = (),
    ) -> str:
        """An enrollment with its steps: (node, kind) or (node, kind, reason)."""
        wid = f"journey:{self.journey}:{cid}:1"
        if (
            self.conn.execute(
                select(CustomerRow.customer_id).where(CustomerRow.customer_id == cid)
            ).first()
            is None
        ):
            self.conn.execute(insert(CustomerRow).values(customer_id=cid))
        done = status not in ("active",)
        self.conn.execute(
            insert(EnrollmentRow).values(
                workflow_id=wid,
                journey=self.journey,
                version=version,
                customer_id=cid,
                entry_no=1,
                status=status,
                node=node,
                node_since=entered + timedelta(hours=1),
                variant=variant,
                entered_at=entered,
                finished_at=entered + timedelta(hours=1) if done else None,
                outcome="why" if done else None,
            )
        )
        for i, step in enumerate(steps):
            node_id, kind = step[0], step[1]
            self.conn.execute(
                insert(JourneyStepRow).values(
                    step_key=f"{wid}:{i}",
                    workflow_id=wid,
                    journey=self.journey,
                    version=version,
                    customer_id=cid,
                    node=node_id,
                    kind=kind,
                    reason=step[2] if len(step) > 2 else None,
                    variant=variant,
                    at=entered + timedelta(minutes=i),
                )
            )
        return wid

    def event(self, cid: str, typ: str, at: datetime, **props: Any) -> None:
        self.n += 1
        self.conn.execute(
            insert(EventRow).values(
                event_id=f"ev-{self.journey}-{self.n}",
                customer_id=cid,
                type=typ,
                occurred_at=at,
                properties=props,
            )
        )


CAP = "frequency cap: 3 messages in 7 days"
SPLIT = [("split", "entered"), ("split", "entered")]  # the start's entry and the split's own


def seed_promo(engine: Engine) -> tuple[str, str]:
    """Two versions of `promo` with known figures (see the asserts); returns their ids."""
    with engine.begin() as conn:
        v1, _ = deploy_journey(conn, "promo", V1_DEF, "v1 source", "promo.yaml")
        v2, _ = deploy_journey(conn, "promo", V2_DEF, "v2 source", "promo.yaml")
        s = Seed(conn)
        sent = [("mail", "entered"), ("mail", "sent")]
        # version 1, variant a: 3 converted (at pause), one still waiting at pause
        for cid in ("A1", "A2", "A3"):
            s.enrollment(
                cid, v1, "converted", "pause", "a", T0, [*SPLIT, *sent, ("pause", "converted")]
            )
        s.event("A1", "purchase", T0 + timedelta(days=1))
        s.event("A2", "purchase", T0 + timedelta(days=2))
        # A3's status says converted but no goal event is stored: conversions are counted
        # from the events, the same way for every arm, so A3 does not count
        s.enrollment(
            "A4", v1, "active", "pause", "a", T0,
            [*SPLIT, ("mail", "entered"), ("mail", "suppressed", "no consent for email")],
        )  # fmt: skip
        s.event("A4", "purchase", T0 + timedelta(days=1))  # still active: counts all the same
        # variant b: one converted, one exited after a frequency cap
        s.enrollment(
            "B1", v1, "converted", "pause", "b", T0, [*SPLIT, *sent, ("pause", "converted")]
        )
        s.event("B1", "purchase", T0 + timedelta(hours=30))
        s.enrollment(
            "B2", v1, "exited", "pause", "b", T0,
            [*SPLIT, ("mail", "entered"), ("mail", "suppressed", CAP), ("pause", "exited")],
        )  # fmt: skip
        # holdout: 4, of whom H1 and H4 bought within 7 days of entering
        for cid in ("H1", "H2", "H3", "H4"):
            s.enrollment(
                cid, v1, "held_out", "split", "holdout", T0, [*SPLIT, ("split", "held_out")]
            )
        s.event("H1", "purchase", T0 + timedelta(days=1))
        s.event("H2", "purchase", T0 + timedelta(days=8))  # too late
        s.event("H2", "visit", T0 + timedelta(days=1))  # not the goal
        s.event("H3", "purchase", T0 - timedelta(hours=1))  # before entering
        s.event("H4", "purchase", T0 + timedelta(days=2))
        s.event("H4", "purchase", T0 + timedelta(days=6, hours=23))  # counted once
        # version 2 (goal: purchase with amount >= 100 within 3 days)
        s.enrollment("C1", v2, "completed", "done", "a", T1, [*SPLIT, *sent, ("done", "completed")])
        s.enrollment(
            "C2", v2, "completed", "done", "a", T1,
            [*SPLIT, ("mail", "entered"), ("mail", "failed", "550 mailbox unavailable"),
             ("done", "completed")],
        )  # fmt: skip
        for cid in ("G1", "G2", "G3"):
            s.enrollment(
                cid, v2, "held_out", "split", "holdout", T1, [*SPLIT, ("split", "held_out")]
            )
        s.event("G1", "purchase", T1 + timedelta(days=1), amount=150)
        s.event("G2", "purchase", T1 + timedelta(days=1), amount=50)  # condition fails
        s.event("G3", "purchase", T1 + timedelta(days=4), amount=200)  # too late
        # another journey's rows never count
        other = Seed(conn, "other")
        other.enrollment("A1", v1, "active", "mail", "a", T0, [*SPLIT, ("mail", "entered")])
    return v1, v2


def journey_stats_of(engine: Engine, name: str = "promo") -> JourneyStats:
    with engine.connect() as conn:
        return journey_stats(conn, name)


def node(vs: VersionStats, nid: str) -> NodeStats:
    return next(n for n in vs.nodes if n.node == nid)


def conv(rows: Any, variant: str | None) -> Any:
    return next(r for r in rows if r.variant == variant)


# --------------------------------------------------------------------------- store


def test_stats_per_version_and_node(engine: Engine) -> None:
    v1, v2 = seed_promo(engine)
    with engine.connect() as conn:
        st = journey_stats(conn, "promo")
    assert (st.journey, st.status, st.active_version) == ("promo", "active", v2)
    assert [v.version for v in st.versions] == [v1, v2]
    first, second = st.versions
    assert not first.active and second.active
    assert [n.node for n in first.nodes] == ["split", "mail", "pause", "done"]  # graph order
    assert first.enrollments == 10
    assert first.outcomes == {"active": 1, "converted": 4, "exited": 1, "held_out": 4}

    split, mail, pause, done = first.nodes
    assert (split.type, split.entered, split.held_out, split.waiting) == ("split", 10, 4, 0)
    assert (mail.entered, mail.sent, mail.suppressed, mail.failed) == (6, 4, 2, 0)
    assert mail.suppressed_reasons == {CAP: 1, "no consent for email": 1}
    # a delay logs no entries: not recorded, rather than a misleading 0
    assert (pause.entered, pause.waiting, pause.converted, pause.exited) == (None, 1, 4, 1)
    assert (done.entered, done.completed) == (None, 0)

    assert second.outcomes == {"completed": 2, "held_out": 3}
    assert node(second, "mail").failed == 1
    assert node(second, "mail").failed_reasons == {"550 mailbox unavailable": 1}
    assert node(second, "done").completed == 2
    assert second.goal is not None and (second.goal.within_days, second.goal.when) == (3, True)

    assert st.enrollments == 15
    assert st.outcomes == {"active": 1, "completed": 2, "converted": 4, "exited": 1, "held_out": 7}


def test_conversions_and_uplift_against_the_holdout(engine: Engine) -> None:
    seed_promo(engine)
    with engine.connect() as conn:
        st = journey_stats(conn, "promo")
    first, second = st.versions
    assert [c.variant for c in first.conversions] == ["a", "b", "holdout"]
    a, b, hold = first.conversions
    # every arm by goal events in the window: A1, A2, A4 (active) — not A3 (no event)
    assert (a.enrollments, a.conversions, a.rate) == (4, 3, 0.75)
    assert (b.enrollments, b.conversions, b.rate) == (2, 1, 0.5)
    # the holdout: H1 and H4 (not late, early or other events)
    assert (hold.enrollments, hold.conversions, hold.rate) == (4, 2, 0.5)
    assert hold.counted_by == "goal_events" and a.counted_by == "goal_events"
    assert a.uplift_absolute == pytest.approx(0.25)
    assert a.uplift_relative == pytest.approx(0.5)
    assert (b.uplift_absolute, b.uplift_relative) == (0.0, 0.0)
    assert hold.uplift_absolute is None
    # four customers an arm: intervals and a p-value, but small samples and no verdict
    assert a.small_sample and hold.small_sample and a.comparison_small_sample
    assert a.verdict is None and a.test == "fisher" and a.p_value == pytest.approx(1.0)
    assert a.low is not None and a.high is not None and a.low < 0.75 < a.high
    assert a.uplift_low is not None and a.uplift_high is not None
    assert a.uplift_low < 0 < a.uplift_high

    # version 2's goal has a condition on the event and a 3-day window: only G1
    a2, hold2 = second.conversions
    assert (a2.conversions, hold2.enrollments, hold2.conversions) == (0, 3, 1)
    assert a2.uplift_absolute == pytest.approx(-1 / 3)
    assert a2.uplift_relative == pytest.approx(-1.0)

    total = {c.variant: c for c in st.conversions}
    assert (total["a"].enrollments, total["a"].conversions) == (6, 3)
    assert (total["holdout"].enrollments, total["holdout"].conversions) == (7, 3)
    assert total["a"].uplift_absolute == pytest.approx(0.5 - 3 / 7)


def test_no_split_no_goal_and_no_holdout_events(engine: Engine) -> None:
    with engine.begin() as conn:
        s = Seed(conn, "plain")
        s.enrollment(
            "P1", "v0", "completed", None, None, T0, [("hello", "entered"), ("hello", "sent")]
        )
    with engine.connect() as conn:
        st = journey_stats(conn, "plain")
    (vs,) = st.versions
    assert vs.goal is None and [n.node for n in vs.nodes] == ["hello"]  # never deployed
    (row,) = vs.conversions
    assert (row.variant, row.enrollments, row.conversions, row.rate) == (None, 1, 0, 0.0)
    assert row.uplift_absolute is None


def test_unknown_journey(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(UnknownJourney, match="nope"):
        journey_stats(conn, "nope")
    with engine.connect() as conn, pytest.raises(UnknownJourney):
        enrollments(conn, "nope")


def test_enrollments_who_is_where(engine: Engine) -> None:
    v1, _ = seed_promo(engine)
    with engine.connect() as conn:
        rows = enrollments(conn, "promo")
        active = enrollments(conn, "promo", status="active")
        two = enrollments(conn, "promo", limit=2)
        with pytest.raises(ValueError, match="status must be one of"):
            enrollments(conn, "promo", status="sleeping")
    assert len(rows) == 15
    assert [r.customer_id for r in two] == ["C1", "C2"]  # latest move first
    (a4,) = active
    assert (a4.customer_id, a4.node, a4.status, a4.variant, a4.version) == (
        "A4",
        "pause",
        "active",
        "a",
        v1,
    )
    assert a4.since == T0 + timedelta(hours=1) and a4.entered_at == T0


# --------------------------------------------------------------------------- chart


def test_funnel_svg_is_well_formed_and_escaped() -> None:
    st = JourneyStats(
        journey="x&<y>",
        generated_at=T0,
        versions=[
            VersionStats(
                version="v1",
                nodes=[
                    NodeStats(node="first", type="message", entered=10, sent=7, suppressed=3),
                    NodeStats(node="pause", type="delay", entered=None, waiting=2),
                    NodeStats(node="second", type="message", entered=5, sent=5, exited=1),
                ],
            )
        ],
    )
    svg = journey_charts.funnel_svg(st)
    root = ET.fromstring(svg)  # parses: every text is escaped
    assert root.tag.endswith("svg")
    assert "x&amp;&lt;y&gt;" in svg
    groups = [g.get("data-node") for g in root.iter("{http://www.w3.org/2000/svg}g")]
    assert groups == ["first", "pause", "second"]
    widths = {
        r.findtext("{http://www.w3.org/2000/svg}title"): float(r.get("width", 0))
        for r in root.iter("{http://www.w3.org/2000/svg}rect")
        if r.find("{http://www.w3.org/2000/svg}title") is not None
    }
    assert widths["entered 10"] == 2 * widths["entered 5"]
    assert widths["sent 7"] + widths["suppressed 3"] == pytest.approx(widths["entered 10"])


def test_chart_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journey_reports, "_png_renderer", lambda: None)
    assert journey_reports.chart_problem(Path("f.svg")) is None
    assert journey_reports.chart_problem(Path("f.html")) is None
    assert "only SVG" in str(journey_reports.chart_problem(Path("f.png")))
    assert ".svg or .html" in str(journey_reports.chart_problem(Path("f.pdf")))


# --------------------------------------------------------------------------- real enrollments

LIVE = """
journey: stats-live
entry: rule
goal: {event: purchase, within_days: 10}
channels: [email]
start: split
nodes:
  split:
    type: split
    variants: [{name: a, weight: 1, next: hello}]
    holdout: {weight: 1}
  hello:
    type: message
    channel: email
    template: {subject: "Hi", text: "t"}
    next: pause
  pause: {type: delay, duration: 5d, next: done}
  done: {type: exit}
"""


async def test_stats_of_real_enrollments(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    j = journey(LIVE)
    split = j.node("split")
    ids: dict[str, list[str]] = {"a": [], "holdout": []}
    for n in range(400):
        ids[assign_variant(j.journey, f"S{n}", split, "split")].append(f"S{n}")
    (a1, a2), held = ids["a"][:2], ids["holdout"][0]
    customers(
        engine,
        tmp_path,
        {"customer_id": a1},
        {"customer_id": a2, "consent": {"email": False}},
        {"customer_id": held},
    )
    definition = j.definition()
    with engine.begin() as conn:  # deployed under the version id the helper starts with
        version, _ = deploy_journey(
            conn, j.journey, definition, json.dumps(definition, sort_keys=True), None
        )
    async with worker(ts_env, engine) as queue:
        h1 = await start(ts_env, queue, j, a1)
        h2 = await start(ts_env, queue, j, a2)
        hh = await start(ts_env, queue, j, held)
        # (waiting on a result lets the server skip time: only after the signal below,
        # or h1 could sleep through its 5-day delay first)
        await ts_env.sleep(timedelta(days=1))
        bought = await ts_env.get_current_time()
        await h1.signal(
            JOURNEY_EVENT_SIGNAL, JourneyEvent(event_id="p1", type="purchase", occurred_at=bought)
        )
        assert (await h1.result()).outcome == "converted"
        assert (await hh.result()).outcome == "held_out"
        assert (await h2.result()).outcome == "completed"
    with engine.begin() as conn:
        entered = dict(
            conn.execute(select(EnrollmentRow.customer_id, EnrollmentRow.entered_at)).all()
        )
        s = Seed(conn, j.journey)
        s.event(a1, "purchase", bought)  # the event the workflow was signalled, as stored
        s.event(held, "purchase", entered[held] + timedelta(days=2))
    with engine.connect() as conn:
        st = journey_stats(conn, j.journey)
    (vs,) = st.versions
    assert vs.version == version and vs.active
    assert vs.outcomes == {"completed": 1, "converted": 1, "held_out": 1}
    assert node(vs, "split").entered == 3 and node(vs, "split").held_out == 1
    hello = node(vs, "hello")
    assert (hello.entered, hello.sent, hello.suppressed) == (2, 1, 1)
    assert hello.suppressed_reasons == {"no consent for email": 1}
    assert node(vs, "pause").converted == 1 and node(vs, "done").completed == 1
    assert all(n.waiting == 0 for n in vs.nodes)
    a, hold = vs.conversions
    assert (a.variant, a.enrollments, a.conversions, a.rate) == ("a", 2, 1, 0.5)
    assert (hold.variant, hold.enrollments, hold.conversions, hold.rate) == ("holdout", 1, 1, 1.0)
    assert a.uplift_absolute == pytest.approx(-0.5) and a.uplift_relative == pytest.approx(-0.5)
    assert a.verdict is None and a.comparison_small_sample  # one customer proves nothing
    # a2 completed the journey (5 days), then bought on day 8 of the 10-day goal window:
    # a conversion, exactly as the holdout's purchase is
    with engine.begin() as conn:
        s.conn = conn  # the same seed: event ids go on from where they were
        s.event(a2, "purchase", entered[a2] + timedelta(days=8))
    with engine.connect() as conn:
        (vs,) = journey_stats(conn, j.journey).versions
    a, hold = vs.conversions
    assert (a.conversions, a.rate, hold.rate, a.uplift_absolute) == (2, 1.0, 1.0, 0.0)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def env(cli_env: Path) -> Path:
    return cli_env


def test_cli_stats_json_and_table(env: Path, engine: Engine) -> None:
    _, v2 = seed_promo(engine)
    result = runner.invoke(app, ["journeys", "stats", "promo", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["journey"] == "promo" and data["active_version"] == v2
    first = data["versions"][0]
    mail = next(n for n in first["nodes"] if n["node"] == "mail")
    assert (mail["sent"], mail["suppressed"]) == (4, 2)
    hold = next(c for c in first["conversions"] if c["variant"] == "holdout")
    assert (hold["conversions"], hold["rate"]) == (2, 0.5)
    result = runner.invoke(app, ["journeys", "stats", "promo"])
    assert result.exit_code == 0, result.output
    for text in ("mail", "no consent for email", "holdout", "+25.0", "+50.0%", "1.000 F"):
        assert text in result.output  # 1.000 F: Fisher's exact test, 4 customers an arm
    assert "small" in result.output and "better" not in result.output
    # on a wide terminal each figure sits on one line
    wide = Console(width=200, record=True, file=io.StringIO())
    for part in journey_reports.stats_renderables(journey_stats_of(engine)):
        wide.print(part)
    text = wide.export_text()
    assert "75.0 [30.1, 95.4]" in text  # 3 of 4 with its Wilson interval
    assert "+25.0 [-32.0, +65.5]" in text  # the uplift over 2 of 4 with Newcombe's
    assert "small sample" in text


def test_cli_stats_chart(env: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_promo(engine)
    out = env / "funnel.svg"
    result = runner.invoke(app, ["journeys", "stats", "promo", "--json", "--chart", str(out)])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # stdout holds the JSON alone
    svg = out.read_text()
    assert "<svg" in svg and 'data-node="mail"' in svg
    ET.fromstring(svg)
    monkeypatch.setattr(journey_reports, "_png_renderer", lambda: None)
    png = env / "funnel.png"
    result = runner.invoke(app, ["journeys", "stats", "promo", "--chart", str(png)])
    assert result.exit_code == 1
    assert "only SVG and HTML charts" in " ".join(result.output.split())  # rich wraps
    assert not png.exists()


def test_cli_unknown_journey(env: Path, engine: Engine) -> None:
    for args in (["stats", "nope"], ["enrollments", "nope"]):
        result = runner.invoke(app, ["journeys", *args])
        assert result.exit_code == 1
        assert "no journey named 'nope'" in result.output


def test_cli_enrollments(env: Path, engine: Engine) -> None:
    seed_promo(engine)
    result = runner.invoke(app, ["journeys", "enrollments", "promo"])
    assert result.exit_code == 0, result.output
    assert "15 of 15" in result.output
    for cid in ("A1", "H4", "G3"):
        assert cid in result.output
    result = runner.invoke(
        app, ["journeys", "enrollments", "promo", "--status", "active", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"] == 1
    assert [(e["customer_id"], e["node"]) for e in data["enrollments"]] == [("A4", "pause")]
    result = runner.invoke(app, ["journeys", "enrollments", "promo", "--limit", "3", "--json"])
    assert len(json.loads(result.stdout)["enrollments"]) == 3
    result = runner.invoke(app, ["journeys", "enrollments", "promo", "--status", "sleeping"])
    assert result.exit_code == 1 and "--status must be one of" in result.output
