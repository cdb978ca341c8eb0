"""The KPI digest: every figure, exactly, from a seeded database on SQLite and PostgreSQL
(window bounds, the previous window, holdouts, ledger kinds); and the HTML report (figures,
changes, well-formed inline SVG, escaped text)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, insert

from automations.digest import (
    COMPARED,
    JourneyConversion,
    KpiDigest,
    TierMove,
    change,
    render_digest_html,
)
from store.kpi_digest import digest_figures
from store.models import CustomerRow, EnrollmentRow, EventRow, PointsLedgerRow, TierHistoryRow

AS_OF = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SINCE = AS_OF - 7 * DAY  # the window is (SINCE, AS_OF]; the previous one (SINCE - 7d, SINCE]


class Seed:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.n = 0

    def customer(self, cid: str, stage: str, tier: str | None, created: datetime) -> None:
        self.conn.execute(
            insert(CustomerRow).values(
                customer_id=cid,
                lifecycle_stage=stage,
                tier=tier,
                created_at=created,
                updated_at=created,
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


def seed(conn: Connection) -> None:
    s = Seed(conn)
    old = AS_OF - 400 * DAY
    s.customer("M1", "member", "gold", old)
    s.customer("M2", "member", "silver", AS_OF - 3 * DAY)  # new member
    s.customer("M3", "member", "silver", AS_OF - 10 * DAY)  # new member, previous window
    s.customer("M4", "member", None, SINCE)  # new member, previous window (bound)
    s.customer("M5", "member", None, AS_OF + DAY)  # created after as_of: not new
    s.customer("L1", "lead", None, AS_OF - DAY)  # created in the window, not a member
    s.customer("C1", "customer", "bronze", old)

    # purchases: window M1 x2 (one exactly at as_of) and L1; previous M2 (exactly at the
    # window's start: previous), M3 x2, C1; outside both: older than 14 days, after as_of
    s.event("M1", "purchase", AS_OF, amount=100.0)
    s.event("M1", "purchase", AS_OF - 2 * DAY, amount=50.5)
    s.event("L1", "purchase", AS_OF - DAY, amount=10)
    s.event("M2", "purchase", SINCE, amount=20)
    s.event("M3", "purchase", AS_OF - 9 * DAY, amount=30)
    s.event("M3", "purchase", AS_OF - 8 * DAY, amount=45.25)
    s.event("C1", "purchase", AS_OF - 13 * DAY, amount=15)
    s.event("M1", "purchase", AS_OF - 30 * DAY, amount=1000)
    s.event("M3", "purchase", AS_OF + timedelta(hours=1), amount=1000)
    # other events: M2 active in the window; M1 in the previous window; M4 before both
    s.event("M2", "login", AS_OF - DAY)
    s.event("M1", "login", AS_OF - 12 * DAY)
    s.event("M4", "login", AS_OF - 20 * DAY)
    s.event("C1", "login", AS_OF - DAY)  # not a member: not an active member

    # ledger: window earn 100 + 50.5, debit 30, expire 12.25 (adjust ignored);
    # previous earn 40, debit 10, expire 3 (exactly at the window's start); outside: 999
    s.ledger("M1", "earn", "100", AS_OF)
    s.ledger("M2", "earn", "50.50", AS_OF - DAY)
    s.ledger("M1", "redeem", "-30", AS_OF - 2 * DAY)
    s.ledger("M3", "expire", "-12.25", AS_OF - 3 * DAY)
    s.ledger("M1", "adjust", "5", AS_OF - DAY)
    s.ledger("M3", "earn", "40", AS_OF - 10 * DAY)
    s.ledger("M3", "redeem", "-10", AS_OF - 9 * DAY)
    s.ledger("M3", "expire", "-3", SINCE)
    s.ledger("M1", "earn", "999", AS_OF - 20 * DAY)
    s.ledger("M1", "earn", "999", AS_OF + DAY)

    # tier history: in the window silver→gold twice, first tier silver, gold→silver at as_of
    s.tier("M1", "silver", "gold", AS_OF - DAY)
    s.tier("C1", "silver", "gold", AS_OF - 2 * DAY)
    s.tier("M2", None, "silver", AS_OF - 3 * DAY)
    s.tier("M3", "gold", "silver", AS_OF)
    s.tier("M1", None, "silver", AS_OF - 40 * DAY)
    s.tier("M3", None, "gold", SINCE)

    # journeys: welcome in the window 1 converted of 3 (+1 holdout), previous 1 converted;
    # winback 1 of 2; promo only in the previous window (1 exited); one before both
    s.enrollment("welcome", "M1", "converted", AS_OF - DAY)
    s.enrollment("welcome", "M2", "active", AS_OF - 2 * DAY, variant="a")
    s.enrollment("welcome", "M3", "exited", AS_OF)
    s.enrollment("welcome", "M4", "held_out", AS_OF - DAY, variant="holdout")
    s.enrollment("welcome", "C1", "converted", SINCE)
    s.enrollment("welcome", "L1", "converted", AS_OF - 30 * DAY)
    s.enrollment("winback", "M1", "converted", AS_OF - 4 * DAY, variant="b")
    s.enrollment("winback", "C1", "completed", AS_OF - 5 * DAY)
    s.enrollment("promo", "M2", "exited", AS_OF - 10 * DAY)
    s.enrollment("promo", "M3", "held_out", AS_OF - 10 * DAY, variant="holdout")


def test_every_figure_of_the_window_and_the_one_before(engine: Engine) -> None:
    with engine.begin() as conn:
        seed(conn)
    with engine.connect() as conn:
        d = digest_figures(conn, AS_OF, 7, "2025-03-31")

    assert (d.as_of, d.window_days, d.run_date, d.since) == (AS_OF, 7, "2025-03-31", SINCE)
    assert d.members_total == 5
    assert d.active_members == 2  # M1 (purchases), M2 (login)
    assert d.new_members == 1  # M2
    assert (d.buyers, d.repeat_buyers, d.repurchase_rate) == (2, 1, 0.5)
    assert d.revenue == 160.5
    assert (d.points_issued, d.points_redeemed, d.points_expired) == (150.5, 30.0, 12.25)
    assert d.tier_distribution == {"silver": 2, "bronze": 1, "gold": 1}
    assert list(d.tier_distribution) == ["silver", "bronze", "gold"]
    assert d.tier_movement == [
        TierMove(from_tier="silver", to_tier="gold", count=2),
        TierMove(from_tier=None, to_tier="silver", count=1),
        TierMove(from_tier="gold", to_tier="silver", count=1),
    ]
    assert d.journey_conversions == [
        JourneyConversion(
            journey="welcome", enrolled=3, converted=1, conversion_rate=1 / 3, held_out=1
        ),
        JourneyConversion(
            journey="winback", enrolled=2, converted=1, conversion_rate=0.5, held_out=0
        ),
    ]
    assert d.previous == {
        "active_members": 3,  # M1 (login), M2 (purchase at the bound), M3
        "new_members": 2,  # M3, M4 (created at the bound)
        "buyers": 3,
        "repeat_buyers": 1,
        "repurchase_rate": 1 / 3,
        "revenue": 110.25,
        "points_issued": 40.0,
        "points_redeemed": 10.0,
        "points_expired": 3.0,
        "journey_enrolled": 2,  # welcome C1, promo M2 (the holdout is left out)
        "journey_converted": 1,
    }
    assert set(d.previous) == set(COMPARED) == set(d.current())
    assert d.current()["journey_enrolled"] == 5
    assert d.current()["journey_converted"] == 2
    # it round-trips as JSON (the automation writes it so)
    assert KpiDigest.model_validate_json(d.model_dump_json()) == d


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
