"""The KPI digest: every figure, exactly, against a small hand-computed programme on SQLite
and PostgreSQL (window bounds, the previous window, the automations' events that are no
activity, a refund, join dates against import times, goal conversions whatever the state,
holdouts, ledger kinds, the liability); the project KPI review and the overview reading the
same definitions; and the HTML report (figures, changes, well-formed inline SVG, escaped
text)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from sqlalchemy import Connection, Engine, insert

from automations.digest import (
    COMPARED,
    JourneyConversion,
    KpiDigest,
    TierMove,
    change,
    render_digest_html,
)
from journeys.models import Journey
from store import kpi
from store.kpi_digest import digest_figures
from store.models import (
    CustomerRow,
    EnrollmentRow,
    EventRow,
    JourneyVersionRow,
    PointsLedgerRow,
    PointsLotRow,
    TierHistoryRow,
)
from store.project_kpis import METRICS, measure
from tests.conftest import REPO

AS_OF = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SINCE = AS_OF - 7 * DAY  # the window is (SINCE, AS_OF]; the previous one (SINCE - 7d, SINCE]


class Seed:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.n = 0

    def customer(
        self, cid: str, stage: str, tier: str | None, created: datetime, **attributes: Any
    ) -> None:
        self.conn.execute(
            insert(CustomerRow).values(
                customer_id=cid,
                lifecycle_stage=stage,
                tier=tier,
                attributes=attributes,
                created_at=created,
                updated_at=created,
            )
        )

    def lot(self, cid: str, remaining: str, expires: datetime | None) -> None:
        self.n += 1
        self.conn.execute(
            insert(PointsLotRow).values(
                customer_id=cid,
                earned=Decimal(remaining) or Decimal(1),
                remaining=Decimal(remaining),
                earned_at=AS_OF - 50 * DAY,
                expires_at=expires,
                lot_key=f"lot-{self.n}",
            )
        )

    def version(self, name: str, definition: dict[str, Any]) -> None:
        self.conn.execute(
            insert(JourneyVersionRow).values(
                journey=name, version="v1", definition=definition, source="", deployed_at=AS_OF
            )
        )

    def event(self, cid: str, typ: str, at: datetime, **props: Any) -> None:
        self.n += 1
        self.conn.execute(
            insert(EventRow).values(
                event_id=f"ev-{self.n}", customer_id=cid, type=typ, occurred_at=at, properties=props
            )
        )

    def ledger(self, cid: str, kind: str, amount: str, at: datetime) -> None:
        self.conn.execute(
            insert(PointsLedgerRow).values(
                customer_id=cid, kind=kind, amount=Decimal(amount), at=at
            )
        )

    def tier(self, cid: str, old: str | None, new: str, at: datetime) -> None:
        self.conn.execute(
            insert(TierHistoryRow).values(
                customer_id=cid, from_tier=old, to_tier=new, changed_at=at
            )
        )

    def enrollment(
        self, journey: str, cid: str, status: str, entered: datetime, variant: str | None = None
    ) -> None:
        self.n += 1
        self.conn.execute(
            insert(EnrollmentRow).values(
                workflow_id=f"journey:{journey}:{cid}:{self.n}",
                journey=journey,
                version="v1",
                customer_id=cid,
                status=status,
                variant=variant,
                entered_at=entered,
            )
        )


def journey(name: str, goal: dict[str, Any] | None) -> dict[str, Any]:
    """A deployable journey definition: the example win-back's, renamed, with `goal`."""
    doc = yaml.safe_load((REPO / "examples" / "journeys" / "winback.yaml").read_text())
    doc = {**doc, "journey": name}
    doc.pop("goal")
    if goal is not None:
        doc["goal"] = goal
    Journey.model_validate(doc)  # deployable as it is
    return doc


def seed(conn: Connection) -> None:
    """A small programme whose every figure is worked out by hand in the test below."""
    s = Seed(conn)
    old = AS_OF - 400 * DAY
    # join dates: the attribute when it is a date, else the day the profile was created
    s.customer("M1", "member", "gold", old, member_since="2024-01-01")
    s.customer("M2", "member", "silver", AS_OF - DAY, member_since="2023-05-05")  # imported
    # in the window, joined long ago: not new
    s.customer("M3", "member", "silver", old, member_since="2025-03-28")  # new
    s.customer("M4", "member", None, AS_OF - 2 * DAY)  # no attribute: created 03-29, new
    s.customer("M5", "member", None, old, member_since="2025-03-20")  # new, previous window
    s.customer("M6", "member", None, old, member_since="2025-03-24")  # the start's day:
    # previous window
    s.customer("M7", "member", None, old, member_since="last spring")  # not a date: created
    s.customer("M8", "member", None, AS_OF + DAY)  # created after as_of: not new
    s.customer("L1", "lead", None, AS_OF - DAY)  # created in the window, not a member
    s.customer("C1", "customer", "bronze", old)

    # the window: M1 buys twice (once exactly at as_of) and has a refund; L1 buys (a buyer,
    # not a member); M2 signs in; C1 signs in (not a member: not an active member); M7 gets
    # only the automations' events, which are no activity
    s.event("M1", "purchase", AS_OF, amount=100.0)
    s.event("M1", "purchase", AS_OF - 2 * DAY, amount=50.5)
    s.event("M1", "refund", AS_OF - DAY, amount=30)
    s.event("L1", "purchase", AS_OF - DAY, amount=10)
    s.event("M2", "login", AS_OF - DAY)
    s.event("C1", "login", AS_OF - DAY)
    for kind in ("churn_scan", "lead_sla_check", "points_expiring", "birthday", "tier_changed"):
        s.event("M7", kind, AS_OF - DAY)
    # the previous window: M3 buys three times (once exactly at the window's start), C1
    # once and has a refund; M1 signs in; M7's churn check again
    s.event("M3", "purchase", SINCE, amount=20)
    s.event("M3", "purchase", AS_OF - 9 * DAY, amount=30)
    s.event("M3", "purchase", AS_OF - 8 * DAY, amount=45.25)
    s.event("C1", "purchase", AS_OF - 13 * DAY, amount=15)
    s.event("C1", "refund", AS_OF - 10 * DAY, amount=5)
    s.event("M1", "login", AS_OF - 12 * DAY)
    s.event("M7", "churn_scan", AS_OF - 12 * DAY)
    # outside both
    s.event("M1", "purchase", AS_OF - 30 * DAY, amount=1000)
    s.event("M3", "purchase", AS_OF + timedelta(hours=1), amount=1000)
    s.event("M4", "login", AS_OF - 20 * DAY)

    # ledger: window earn 100, pending 50.5, redeem 30 less a reversal of 10, expire 12.25,
    # clawback 8 (adjust ignored); previous earn 40, redeem 10, expire 3 (exactly at the
    # window's start); outside: 999
    s.ledger("M1", "earn", "100", AS_OF)
    s.ledger("M2", "pending", "50.50", AS_OF - DAY)
    s.ledger("M1", "redeem", "-30", AS_OF - 2 * DAY)
    s.ledger("M1", "redeem_reversal", "10", AS_OF - DAY)
    s.ledger("M3", "expire", "-12.25", AS_OF - 3 * DAY)
    s.ledger("M1", "clawback", "-8", AS_OF - DAY)
    s.ledger("M1", "adjust", "5", AS_OF - DAY)
    s.ledger("M3", "earn", "40", AS_OF - 10 * DAY)
    s.ledger("M3", "redeem", "-10", AS_OF - 9 * DAY)
    s.ledger("M3", "expire", "-3", SINCE)
    s.ledger("M1", "earn", "999", AS_OF - 20 * DAY)
    s.ledger("M1", "earn", "999", AS_OF + DAY)
    # lots: owed at as_of 70 + 50.5; M3's lot is past its date (no expiry run yet): not owed
    s.lot("M1", "70", AS_OF + 30 * DAY)
    s.lot("M2", "50.50", None)
    s.lot("M3", "12", AS_OF - DAY)
    s.lot("M1", "0", None)

    # tier history: in the window silver→gold twice, first tier silver, gold→silver at as_of
    s.tier("M1", "silver", "gold", AS_OF - DAY)
    s.tier("C1", "silver", "gold", AS_OF - 2 * DAY)
    s.tier("M2", None, "silver", AS_OF - 3 * DAY)
    s.tier("M3", "gold", "silver", AS_OF)
    s.tier("M1", None, "silver", AS_OF - 40 * DAY)
    s.tier("M3", None, "gold", SINCE)

    # journeys: winback's goal is a purchase with an amount within 30 days of entry;
    # welcome has no goal (nothing converts); promo was never deployed (no goal known)
    s.version(
        "winback",
        journey("winback", {"event": "purchase", "when": "event.amount > 0", "within_days": 30}),
    )
    s.version("welcome", journey("welcome", None))
    # the window: M1 bought after entering (still active: converted all the same); C1 did
    # not buy after entering (completed); M2's status says converted but no goal event
    # followed; M3 entered at as_of and buys an hour later (after as_of: not yet); L1 is in
    # the holdout and bought (counted apart)
    s.enrollment("winback", "M1", "active", AS_OF - 4 * DAY, variant="discount")
    s.enrollment("winback", "C1", "completed", AS_OF - 5 * DAY, variant="points")
    s.enrollment("winback", "M2", "converted", AS_OF - DAY, variant="discount")
    s.enrollment("winback", "M3", "active", AS_OF, variant="points")
    s.enrollment("winback", "L1", "held_out", AS_OF - 3 * DAY, variant="holdout")
    s.enrollment("welcome", "M4", "converted", AS_OF - 2 * DAY)
    # the previous window: M3 bought the day after entering, then left (exited): converted;
    # promo's enrollment has no goal to reach; one before both windows
    s.enrollment("winback", "M3", "exited", AS_OF - 10 * DAY, variant="discount")
    s.enrollment("promo", "M2", "converted", AS_OF - 10 * DAY)
    s.enrollment("winback", "C1", "converted", AS_OF - 20 * DAY, variant="discount")


def test_every_figure_of_the_window_and_the_one_before(engine: Engine) -> None:
    with engine.begin() as conn:
        seed(conn)
    with engine.connect() as conn:
        d = digest_figures(conn, AS_OF, 7, "2025-03-31")

    assert (d.as_of, d.window_days, d.run_date, d.since) == (AS_OF, 7, "2025-03-31", SINCE)
    assert d.members_total == 8
    assert d.active_members == 2  # M1 (purchases, refund), M2 (login); not M7 (automations)
    assert d.new_members == 2  # M3 (member_since 03-28), M4 (created 03-29)
    assert (d.buyers, d.repeat_buyers, d.repurchase_rate) == (2, 1, 0.5)  # M1 twice, L1
    assert d.revenue == 130.5  # 100 + 50.5 + 10 - 30
    assert (d.points_issued, d.points_redeemed, d.points_expired) == (150.5, 20.0, 12.25)
    assert (d.points_clawed_back, d.points_liability) == (8.0, 120.5)
    assert d.tier_distribution == {"silver": 2, "bronze": 1, "gold": 1}
    assert list(d.tier_distribution) == ["silver", "bronze", "gold"]
    assert d.tier_movement == [
        TierMove(from_tier="silver", to_tier="gold", count=2),
        TierMove(from_tier=None, to_tier="silver", count=1),
        TierMove(from_tier="gold", to_tier="silver", count=1),
    ]
    assert d.journey_conversions == [
        JourneyConversion(
            journey="welcome", enrolled=1, converted=0, conversion_rate=0.0, held_out=0
        ),
        JourneyConversion(
            journey="winback", enrolled=4, converted=1, conversion_rate=0.25, held_out=1
        ),
    ]
    assert d.previous == {
        "active_members": 2,  # M1 (login), M3 (purchases); not M7, not C1
        "new_members": 2,  # M5 (03-20), M6 (03-24, the window's start day)
        "buyers": 2,  # M3 (three purchases), C1
        "repeat_buyers": 1,
        "repurchase_rate": 0.5,
        "revenue": 105.25,  # 20 + 30 + 45.25 + 15 - 5
        "points_issued": 40.0,
        "points_redeemed": 10.0,
        "points_expired": 3.0,
        "points_clawed_back": 0.0,
        "journey_enrolled": 2,  # winback M3, promo M2
        "journey_converted": 1,  # M3 (exited, but bought within the goal window)
    }
    assert set(d.previous) == set(COMPARED) == set(d.current())
    assert d.current()["journey_enrolled"] == 5
    assert d.current()["journey_converted"] == 1
    # it round-trips as JSON (the automation writes it so)
    assert KpiDigest.model_validate_json(d.model_dump_json()) == d


def test_the_review_and_the_digest_count_the_same(engine: Engine) -> None:
    """The project KPI review reads the same definitions over the same window."""
    with engine.begin() as conn:
        seed(conn)
    with engine.connect() as conn:
        d = digest_figures(conn, AS_OF, 7, "2025-03-31")
        review = measure(conn, METRICS, SINCE, AS_OF)
    assert review == {
        "repurchase_rate": d.repurchase_rate,
        "active_members": d.active_members,
        "new_members": d.new_members,
        "journey_conversion": 0.2,  # winback 1 of 4, welcome 0 of 1
        "points_issued": d.points_issued,
        "points_redeemed": d.points_redeemed,
        "redemption_rate": round(20 / 150.5, 6),
        "average_order_value": 53.5,  # (100 + 50.5 + 10) / 3
        "churn_rate": 1.0,  # M3 and C1 bought before, neither in the window
    }  # no e-mail sent: the open rate is not measured


def test_the_overview_counts_journey_conversions_as_the_stats_do(engine: Engine) -> None:
    with engine.begin() as conn:
        seed(conn)
    with engine.connect() as conn:
        every = kpi.journey_conversions(conn)
    # winback over every enrollment, with no end: M1 (bought after entering), M3 at as_of
    # (bought an hour later), M3 before (exited after buying), C1 20 days ago (bought a week
    # after entering) converted; C1 5 days ago and M2 did not
    w = every["winback"]
    assert (w.enrolled, w.converted, w.held_out, w.held_out_converted) == (6, 4, 1, 1)
    assert (every["welcome"].enrolled, every["welcome"].converted) == (1, 0)
    assert (every["promo"].enrolled, every["promo"].converted) == (1, 0)


def test_an_empty_database_gives_zeros(engine: Engine) -> None:
    with engine.connect() as conn:
        d = digest_figures(conn, AS_OF, 30, "2025-03-31")
    assert d.model_dump(exclude={"as_of", "window_days", "run_date", "previous"}) == {
        "members_total": 0,
        "active_members": 0,
        "new_members": 0,
        "buyers": 0,
        "repeat_buyers": 0,
        "repurchase_rate": 0.0,
        "revenue": 0.0,
        "points_issued": 0.0,
        "points_redeemed": 0.0,
        "points_expired": 0.0,
        "points_clawed_back": 0.0,
        "points_liability": 0.0,
        "tier_distribution": {},
        "tier_movement": [],
        "journey_conversions": [],
    }
    assert d.previous == dict.fromkeys(COMPARED, 0)
    page = render_digest_html(d, "Empty")
    assert "no data in this window" in page
    _svgs(page)


def test_as_of_must_be_aware(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(ValueError, match="timezone-aware"):
        digest_figures(conn, datetime(2025, 3, 31), 7, "2025-03-31")


# --------------------------------------------------------------------------- the report

EVIL = "<script>alert('x')</script>"


def _svgs(page: str) -> list[ET.Element]:
    """Every inline SVG of the page, parsed as XML (so well-formed)."""
    found = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    assert found
    return [ET.fromstring(svg) for svg in found]


def _change_css(page: str, key: str) -> str | None:
    card = re.search(rf'<div class="card" data-figure="{key}">(.*?)</div></div>', page)
    assert card is not None, key
    css = re.search(r'<div class="change ([^"]*)">', card.group(1) + "</div>")
    return css.group(1) if css else None


def _digest() -> KpiDigest:
    return KpiDigest(
        as_of=AS_OF,
        window_days=7,
        run_date="2025-03-31",
        members_total=1234,
        active_members=456,
        new_members=78,
        buyers=90,
        repeat_buyers=30,
        repurchase_rate=1 / 3,
        revenue=98765.4,
        points_issued=5000,
        points_redeemed=1250.5,
        points_expired=300,
        tier_distribution={"gold": 10, EVIL: 3},
        tier_movement=[TierMove(from_tier=None, to_tier=EVIL, count=2)],
        journey_conversions=[
            JourneyConversion(
                journey="a&b <i>", enrolled=40, converted=10, conversion_rate=0.25, held_out=4
            )
        ],
        previous={
            "active_members": 400,
            "new_members": 78,
            "buyers": 100,
            "repeat_buyers": 20,
            "repurchase_rate": 0.2,
            "revenue": 100000.0,
            "points_issued": 4000,
            "points_redeemed": 1000,
            "points_expired": 200,
            "journey_enrolled": 0,
            "journey_converted": 0,
        },
    )


def test_the_report_shows_figures_changes_and_charts() -> None:
    page = render_digest_html(_digest(), "KPI digest <weekly> & more")
    assert page.startswith("<!doctype html>")
    assert "<title>KPI digest &lt;weekly&gt; &amp; more</title>" in page
    assert "2025-03-31" in page
    # headline figures, formatted
    for text in ("1,234", "456", "78", "98,765.40", "33.3%", "5,000", "1,250.50", "25.0%"):
        assert text in page, text
    # changes against the previous window
    assert "▲ +56 (+14%) vs 400" in page  # active members
    assert "= same as previous window (78)" in page  # new members
    assert "▼ -10 (-10%) vs 100" in page  # buyers
    assert "▲ +13.3 pp vs 20.0%" in page  # repurchase rate
    assert "▲ +10 vs 0" in page  # journey conversions from none
    # more points expired is bad news, fewer buyers too
    assert _change_css(page, "points_expired") == "up bad"
    assert _change_css(page, "buyers") == "down bad"
    assert _change_css(page, "active_members") == "up good"
    assert _change_css(page, "new_members") == "same"
    assert _change_css(page, "members_total") is None  # members now: nothing to compare
    # three charts, well-formed SVG, bars for tiers, points (with the previous) and journeys
    svgs = _svgs(page)
    assert len(svgs) == 3
    ns = "{http://www.w3.org/2000/svg}"
    bars = [len(svg.findall(f"{ns}rect[@class='bar']")) for svg in svgs]
    assert bars == [2, 3, 1]
    assert len(svgs[1].findall(f"{ns}rect[@class='previous']")) == 3
    widths = [float(r.get("width", "0")) for r in svgs[0].findall(f"{ns}rect[@class='bar']")]
    assert widths[0] > widths[1] > 0  # gold (10) longer than the other tier (3)
    texts = "".join(svgs[0].itertext())
    assert EVIL in texts  # the tier name, read back from the escaped SVG
    # no external assets, no script
    assert "<script" not in page
    assert "src=" not in page and "href=" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "a&amp;b &lt;i&gt;" in page and "<i>" not in page


def test_change_wording() -> None:
    assert change("buyers", 5, None) is None
    c = change("points_expired", 10, 20)
    assert c is not None and c.css == "down good" and c.text == "▼ -10 (-50%) vs 20"
    c = change("revenue", 10.5, 0)
    assert c is not None and c.text == "▲ +10.50 vs 0.00"
    c = change("revenue", 98765.4, 100000)
    assert c is not None and c.text == "▼ -1,234.60 (-1.2%) vs 100,000.00"
