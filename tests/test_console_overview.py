"""The console's overview over HTTP (a real server, SQLite and PostgreSQL): each panel's
figures counted from a seeded store (members by tier, the liability and what expires in 30
days, customer events per day without automation events, journeys' entries and conversions,
automation runs that failed or retry), each panel shown only to a role that may read its
area, the projects panel saying Temporal is not reachable instead of failing; and the SVG
charts, which parse as XML with one bar per value and say their figures as text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, insert

from crmflow.console.charts import bar_chart, column_chart
from crmflow.services import overview as service
from crmflow.services.runtime import Runtime
from store.models import (
    AutomationRunRow,
    CustomerRow,
    EnrollmentRow,
    EventRow,
    JourneyRow,
    JourneyVersionRow,
    PointsLotRow,
)
from tests.api_helpers import make_settings
from tests.conftest import REPO, free_port
from tests.console_helpers import ConsoleServer

SVG = "{http://www.w3.org/2000/svg}"


# --------------------------------------------------------------------------- seeding


def run_row(schedule: str, run_date: str, attempt: int, status: str, **kw: Any) -> dict[str, Any]:
    at = kw.get("started_at") or datetime.now(UTC) - timedelta(hours=1)
    return {
        "schedule": schedule,
        "automation": kw.get("automation", "tag_expiry"),
        "run_date": run_date,
        "as_of": at,
        "status": status,
        "attempt": attempt,
        "counts": kw.get("counts", {}),
        "workflow_id": f"wf-{schedule}-{run_date}-{attempt}",
        "started_at": at,
        "updated_at": at,
        "finished_at": None if status == "running" else at + timedelta(seconds=42),
        "error": kw.get("error"),
        "step": kw.get("step"),
    }


GOAL_JOURNEY = {
    **yaml.safe_load((REPO / "examples" / "journeys" / "winback.yaml").read_text()),
    "journey": "welcome",
    "goal": {"event": "purchase", "within_days": 7},
}


def seed(engine: Engine, now: datetime) -> None:
    """Figures chosen so each panel has one right answer (see test_overview_counts)."""
    ago = lambda days: now - timedelta(days=days)  # noqa: E731
    with engine.begin() as conn:
        conn.execute(
            insert(CustomerRow),
            [
                {"customer_id": "c1", "lifecycle_stage": "member", "tier": "Gold"},
                {"customer_id": "c2", "lifecycle_stage": "member", "tier": "Gold"},
                {"customer_id": "c3", "lifecycle_stage": "member", "tier": "Silver"},
                {"customer_id": "c4", "lifecycle_stage": "lead", "tier": None},
            ],
        )
        lot = {"earned_at": ago(100), "earned": Decimal(200)}
        conn.execute(
            insert(PointsLotRow),
            [
                {**lot, "customer_id": "c1", "remaining": Decimal(100), "expires_at": ago(-10)},
                {**lot, "customer_id": "c2", "remaining": Decimal("50.5"), "expires_at": ago(-60)},
                {**lot, "customer_id": "c3", "remaining": Decimal(30), "expires_at": None},
                # past its date (the nightly run has not zeroed it): owed to nobody
                {**lot, "customer_id": "c1", "remaining": Decimal(20), "expires_at": ago(1)},
                {**lot, "customer_id": "c2", "remaining": Decimal(0), "expires_at": ago(-5)},
            ],
        )
        events = [
            ("e1", "c1", "purchase", ago(0)),
            ("e2", "c2", "purchase", ago(0)),
            ("e3", "c3", "purchase", ago(0)),
            ("e4", "c1", "sign_in", ago(5)),
            ("e5", "c2", "sign_in", ago(5)),
            ("e6", "c1", "churn_scan", ago(0)),  # an automation's event: not activity
            ("e7", "c1", "purchase", ago(40)),  # before the window
        ]
        conn.execute(
            insert(EventRow),
            [
                {"event_id": i, "customer_id": c, "type": t, "occurred_at": at, "properties": {}}
                for i, c, t, at in events
            ],
        )
        conn.execute(
            insert(JourneyRow), [{"name": "welcome", "status": "active", "active_version": "v1"}]
        )
        conn.execute(
            insert(JourneyVersionRow),
            [{"journey": "welcome", "version": "v1", "definition": GOAL_JOURNEY, "source": ""}],
        )
        # a conversion is the goal event (a purchase within 7 days of entry), whatever the
        # state: c1 and c2 bought after entering, c4 did not
        statuses = ["active"] * 4 + ["converted"] * 2 + ["held_out"] * 2
        who = ["c4"] * 4 + ["c1", "c2"] + ["c4"] * 2
        conn.execute(
            insert(EnrollmentRow),
            [
                {
                    "workflow_id": f"j-welcome-{i}",
                    "journey": "welcome",
                    "version": "v1",
                    "customer_id": who[i],
                    "entry_no": i + 1,
                    "status": s,
                    "variant": "holdout" if s == "held_out" else None,
                    "entered_at": ago(3),
                }
                for i, s in enumerate(statuses)
            ],
        )
        conn.execute(
            insert(AutomationRunRow),
            [
                # failed, then run again and completed: needs nobody now
                run_row("s-a", "2026-12-01", 1, "failed", error="boom"),
                run_row("s-a", "2026-12-01", 2, "completed", counts={"tags_removed": 3}),
                # failed and not run again
                run_row("s-a", "2026-12-02", 1, "failed", error="disk full"),
                # failed, and a second attempt is running: retrying
                run_row("s-b", "2026-12-02", 1, "failed", error="no worker"),
                run_row("s-b", "2026-12-02", 2, "running", step="expire"),
                # a first attempt running: nothing wrong yet
                run_row("s-b", "2026-12-03", 1, "running"),
                # a failure long ago is not news
                run_row("s-c", "2026-09-01", 1, "failed", started_at=ago(90), error="old"),
            ],
        )


# --------------------------------------------------------------------------- the read model


def test_overview_counts(engine: Engine, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    seed(engine, now)
    rt = Runtime(make_settings(tmp_path), engine)
    o = service.overview(rt, service.PANELS, now=now)
    assert o.members is not None and o.points is not None and o.events is not None
    assert [(t.tier, t.members) for t in o.members.tiers] == [("Gold", 2), ("Silver", 1)]
    assert (o.points.liability, o.points.expiring, o.points.expiring_members) == (180.5, 100, 1)
    assert len(o.events.days) == 30 and o.events.days[-1].day == now.date()
    by_day = {d.day: d.events for d in o.events.days if d.events}
    assert by_day == {now.date(): 3, (now - timedelta(days=5)).date(): 2}
    assert o.events.total == 5
    assert o.journeys is not None
    (j,) = o.journeys.journeys
    assert (j.journey, j.entries, j.converted, j.held_out, j.active) == ("welcome", 8, 2, 2, 4)
    assert j.conversion_rate == pytest.approx(2 / 6)
    assert o.automations is not None
    assert (o.automations.failed, o.automations.retrying) == (1, 1)
    assert {(r.schedule, r.run_date, r.attempt) for r in o.automations.runs} == {
        ("s-a", "2026-12-02", 1),
        ("s-b", "2026-12-02", 2),
    }
    only = service.overview(rt, ["points"], now=now)
    assert only.points is not None and only.members is None and only.journeys is None


# --------------------------------------------------------------------------- the page


def test_each_role_sees_the_panels_of_its_areas(console_server: ConsoleServer) -> None:
    seed(console_server.runtime.engine, datetime.now(UTC))
    with console_server.signed_in("admin") as http:
        r = http.get("/console/")
        assert r.status_code == 200
        page = r.text
        for heading in (
            "Members by tier",
            "Points",
            "Customer events per day",
            "Journeys",
            "Projects by health",
            "Automation runs needing attention",
        ):
            assert heading in page
        assert "180.5" not in page  # thousands and no decimals: 180.5 shows as 180 (rounded)
        assert ">180<" in page or ">181<" in page
        assert ">100<" in page  # expiring in the next 30 days
        assert 'href="/console/journeys/welcome"' in page and "33.3%" in page
        assert "disk full" in page and "retrying" in page and "/console/automations/s-c" not in page
        assert 'hx-get="/console/overview/projects"' in page
        assert page.count("<svg") == 2  # members by tier, events per day
        for link in ("customers", "journeys", "projects", "automations"):
            assert f'href="/console/{link}"' in page
    with console_server.signed_in("marketer") as http:
        page = http.get("/console/").text
        assert "Members by tier" in page and "Journeys" in page
        assert "Automation runs needing attention" not in page
        assert "Projects by health" not in page
    with console_server.signed_in("operator") as http:
        page = http.get("/console/").text
        assert "Automation runs needing attention" in page and "disk full" in page
        assert "Members by tier" in page
        assert 'href="/console/journeys/welcome"' not in page and "Projects by health" not in page
    with console_server.signed_in("project_manager") as http:
        page = http.get("/console/").text
        assert "Projects by health" in page
        assert "Members by tier" not in page and "Automation runs" not in page
    with console_server.signed_in("ingest") as http:
        r = http.get("/console/")
        assert r.status_code == 200 and "no dashboards" in r.text
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/").text
        assert "Members by tier" in page and "Projects by health" in page
        assert "Automation runs needing attention" in page


def test_an_empty_store_says_so(console_server: ConsoleServer) -> None:
    with console_server.signed_in("admin") as http:
        page = http.get("/console/").text
        assert "No member has a tier yet" in page
        assert "No journey is deployed yet" in page
        assert "all clear" in page


def test_the_projects_panel_says_temporal_is_not_reachable(
    console_server: ConsoleServer,
) -> None:
    console_server.runtime.settings.temporal_address = f"127.0.0.1:{free_port()}"
    with console_server.signed_in("project_manager") as http:
        r = http.get("/console/overview/projects")
        assert r.status_code == 200
        assert "Temporal is not reachable" in r.text and "cannot reach Temporal" in r.text
        assert 'href="/console/projects"' in r.text and "<html" not in r.text
    with console_server.signed_in("marketer") as http:
        assert http.get("/console/overview/projects").status_code == 403
    with console_server.signed_in("ingest") as http:
        assert http.get("/console/overview/projects").status_code == 403


def test_signed_out_goes_to_sign_in(console_server: ConsoleServer) -> None:
    import httpx

    with httpx.Client(base_url=console_server.base) as http:
        r = http.get("/console/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


# --------------------------------------------------------------------------- charts


def _bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}title") is not None and root.find(f"{SVG}desc") is not None
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == "bar"]


def test_the_column_chart_parses_and_has_a_bar_per_day() -> None:
    first = date(2026, 11, 4)
    days = [(first + timedelta(days=i), float(i % 7 * 10)) for i in range(30)]
    svg = str(column_chart(days, title="Events <per> day & night", unit="events"))
    bars = _bars(svg)
    assert len(bars) == 30
    heights = [float(b.get("height", "0")) for b in bars]
    assert heights[0] == 0 and max(heights) == heights[6]  # 60, the highest
    root = ET.fromstring(svg)
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert titles[0] == "Events <per> day & night"
    assert "2026-11-10: 60 events" in titles
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "11-05" in texts and "12-03" in texts and "11-04" not in texts  # labels
    assert {"0", "30", "60"} <= set(texts)  # the axis
    desc = root.find(f"{SVG}desc")
    assert desc is not None and "850 events in all" in (desc.text or "")
    assert len(_bars(str(column_chart([], title="Nothing")))) == 0


def test_the_bar_chart_parses_and_labels_every_bar() -> None:
    items = [("Gold", 1200.0), ("Silver", 30.0), ("A tier <with> a very long name", 5.0)]
    svg = str(bar_chart(items, title="Members by tier", unit="members"))
    bars = _bars(svg)
    assert len(bars) == 3
    widths = [float(b.get("width", "0")) for b in bars]
    assert widths[0] > widths[1] > widths[2] > 0
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Gold" in texts and "1,200" in texts and "30" in texts
    assert "A tier <with> a v…" in texts
    assert "Silver: 30 members" in [t.text for t in root.iter(f"{SVG}title")]
