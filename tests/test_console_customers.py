"""The console's customer pages over HTTP (a real server, SQLite and PostgreSQL): search with
masking by role, the 360 page (tags with the rule or person that set them, points totals,
lots and ledger, journeys and why they wait, audit trail), and each action — tags by hand,
adjust points, redeem, export, erase with its confirmation step — shown only to the roles
that may use it, refused (403) to the others and without a CSRF token, changing nothing."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, insert, select

from crmflow.ingest import import_file
from crmflow.services import rewards
from crmflow.services.runtime import Runtime
from journeys.validate import load_journey
from rules.pack import load_pack
from store.db import utcnow
from store.journeys import deploy_journey
from store.models import (
    ChangeLogRow,
    CustomerRow,
    DeliveryRow,
    EnrollmentRow,
    JourneyStepRow,
    PointsLedgerRow,
    PrivacyLogRow,
    RedemptionRow,
    TagRow,
)
from store.rule_versions import deploy
from tests.console_helpers import ConsoleServer, csrf_of

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
WORKFLOW = "journey:welcome:C0001:1"


def seed(rt: Runtime) -> None:
    """The examples as a new user loads them (rules, journeys, customers, events, rewards),
    and one enrollment with a suppressed message, as the journey worker records them."""
    engine = rt.engine
    pack, source = load_pack(EXAMPLES / "rules")
    with engine.begin() as conn:
        deploy(conn, pack.version, source, len(pack.rules), str(EXAMPLES / "rules"))
    for file in sorted((EXAMPLES / "journeys").glob("*.yaml")):
        j = load_journey(file).journey
        with engine.begin() as conn:
            deploy_journey(conn, j.journey, j.definition(), file.read_text("utf-8"), str(file))
    for kind in ("customers", "events"):
        import_file(engine, EXAMPLES / f"{kind}.jsonl", kind, phone_region="CN")
    rewards.apply(rt, EXAMPLES / "rewards.yaml")
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(EnrollmentRow).values(
                workflow_id=WORKFLOW,
                journey="welcome",
                version="3f9a1c2b7d4e5f60",
                customer_id="C0001",
                status="active",
                node="welcome_email",
                node_since=now - timedelta(hours=2),
                entered_at=now - timedelta(days=1),
            )
        )
        conn.execute(
            insert(JourneyStepRow).values(
                step_key=f"{WORKFLOW}:welcome_email:1",
                workflow_id=WORKFLOW,
                journey="welcome",
                version="3f9a1c2b7d4e5f60",
                customer_id="C0001",
                node="welcome_email",
                kind="suppressed",
                reason="frequency cap: 3 messages in 7 days",
                at=now - timedelta(hours=1),
            )
        )
        conn.execute(
            insert(DeliveryRow).values(
                dedupe_key=f"{WORKFLOW}:welcome_email:1",
                customer_id="C0001",
                channel="email",
                status="suppressed",
                reason="frequency cap: 3 messages in 7 days",
                meta={"journey": "welcome", "node": "welcome_email"},
                created_at=now - timedelta(hours=1),
            )
        )


def _count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_search_lists_customers_and_masks_by_role(console_server: ConsoleServer) -> None:
    seed(console_server.runtime)
    with console_server.signed_in("marketer") as http:
        page = http.get("/console/customers")
        assert page.status_code == 200
        assert 'href="/console/customers/C0001"' in page.text
        assert "li.wei@example.com" in page.text
        by_name = http.get("/console/customers", params={"q": "wang", "field": "name"})
        assert "Wang Fang" in by_name.text and "Li Wei" not in by_name.text
        mail = {"q": "LI.WEI@example.com", "field": "email"}
        by_mail = http.get("/console/customers", params=mail)
        assert "C0001" in by_mail.text and "C0002" not in by_mail.text
        tagged = http.get("/console/customers", params={"tag": "big-spender"})
        assert "C0002" in tagged.text and "C0001<" not in tagged.text
        none = http.get("/console/customers", params={"q": "nobody-here"})
        assert "No customer matches." in none.text
        nul = http.get("/console/customers", params={"q": "a\x00b"})
        assert nul.status_code == 200 and "NUL" in nul.text
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/customers")
        assert page.status_code == 200
        assert "li.wei@example.com" not in page.text and "@example.com" in page.text
        assert "masked for your role" in page.text
    with console_server.signed_in("project_manager") as http:
        assert http.get("/console/customers").status_code == 403


def test_pages_of_customers_follow_the_cursor(console_server: ConsoleServer) -> None:
    seed(console_server.runtime)
    with console_server.signed_in("operator") as http:
        first = http.get("/console/customers")
        assert 'rel="next"' not in first.text  # 28 customers, 50 a page
        later = http.get("/console/customers", params={"after": "C0020"})
        assert "C0021" in later.text and 'href="/console/customers/C0020"' not in later.text
        assert "First page" in later.text


def test_the_360_page_shows_everything_and_controls_by_role(
    console_server: ConsoleServer,
) -> None:
    seed(console_server.runtime)
    with console_server.signed_in("admin") as http:
        page = http.get("/console/customers/C0005")
        assert page.status_code == 200
        text = page.text
        for part in ("Profile", "Consent", "Tier", "Points", "Lots", "Ledger", "Tags"):
            assert f">{part}" in text, part
        assert "rule <strong>big-spender</strong>" in text  # who set the tag
        assert "Journeys" in text and "Audit trail" in text and "Coupons" in text
        for control in ("Adjust points", "Redeem a reward", "Export data", "Erase…", "Add tag"):
            assert control in text, control
        one = http.get("/console/customers/C0001").text
        assert "its last message was suppressed: frequency cap: 3 messages in 7 days" in one
        assert "welcome_email" in one and "Quiet hours 21:00" in one
        missing = http.get("/console/customers/NOPE")
        assert missing.status_code == 404 and "no customer with id" in missing.text
    expected = {
        # role: (adjust, redeem, export, erase, tags)
        "marketer": (False, False, False, False, True),
        "operator": (True, True, True, False, False),
        "viewer": (False, False, False, False, False),
    }
    for role, shows in expected.items():
        with console_server.signed_in(role) as http:
            text = http.get("/console/customers/C0005").text
            seen = tuple(
                c in text
                for c in ("Adjust points", "Redeem a reward", "Export data", "Erase…", "Add tag")
            )
            assert seen == shows, role
            assert ("@example.com" in text) and (("***" in text) == (role == "viewer"))


def test_tags_by_hand_from_the_360_page(console_server: ConsoleServer) -> None:
    seed(console_server.runtime)
    engine = console_server.runtime.engine
    with console_server.signed_in("marketer") as http:
        page = http.get("/console/customers/C0001")
        token = csrf_of(page.text)
        r = http.post(
            "/console/customers/C0001/tags", data={"tag": "vip-event", "csrf_token": token}
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/customers/C0001#tags"
        after = http.get("/console/customers/C0001").text
        assert "Tag vip-event added to C0001." in after
        assert 'test-marketer <span class="hint">(by hand)</span>' in after
        bad = http.post(
            "/console/customers/C0001/tags", data={"tag": "Not A Tag", "csrf_token": token}
        )
        assert "is not a tag name" in http.get(bad.headers["location"]).text
        gone = http.post(
            "/console/customers/C0001/tags",
            data={"tag": "vip-event", "op": "remove", "csrf_token": token},
        )
        assert gone.status_code == 303
        assert "Tag vip-event removed from C0001." in http.get("/console/customers/C0001").text
        unknown = http.post("/console/customers/NOPE/tags", data={"tag": "x", "csrf_token": token})
        assert "no customer with id" in http.get(unknown.headers["location"]).text
        forged = http.post("/console/customers/C0001/tags", data={"tag": "sneaky"})
        assert forged.status_code == 403 and "CSRF" in forged.text
    with console_server.signed_in("operator") as http:
        token = csrf_of(http.get("/console/customers/C0001").text)
        refused = http.post(
            "/console/customers/C0001/tags", data={"tag": "sneaky", "csrf_token": token}
        )
        assert refused.status_code == 403
    assert _count(engine, TagRow, TagRow.tag == "sneaky") == 0
    with engine.connect() as conn:
        logged = conn.execute(
            select(ChangeLogRow.actor, ChangeLogRow.action, ChangeLogRow.status).where(
                ChangeLogRow.target == "/console/customers/C0001/tags"
            )
        ).all()
    assert ("user:test-marketer", "customers.tag", 303) in [tuple(r) for r in logged]


def test_adjust_and_redeem_go_through_the_points_services(
    console_server: ConsoleServer,
) -> None:
    seed(console_server.runtime)
    engine = console_server.runtime.engine
    with console_server.signed_in("operator") as http:
        page = http.get("/console/customers/C0005").text
        token = csrf_of(page)
        key = page.split('name="key" value="')[1].split('"')[0]
        form = {"amount": "1,000", "reason": "goodwill", "key": key, "csrf_token": token}
        r = http.post("/console/customers/C0005/points/adjust", data=form)
        assert r.status_code == 303
        shown = http.get("/console/customers/C0005").text
        assert "1,000.00 points credited (goodwill)" in shown
        http.post("/console/customers/C0005/points/adjust", data=form)  # sent twice: once
        assert _count(engine, PointsLedgerRow, PointsLedgerRow.ref == key) == 1
        zero = http.post(
            "/console/customers/C0005/points/adjust",
            data={"amount": "0", "reason": "x", "key": "k-zero", "csrf_token": token},
        )
        assert "notice-error" in http.get(zero.headers["location"]).text
        page = http.get("/console/customers/C0005").text
        rkey = page.split('name="key" value="console-redeem-')[1].split('"')[0]
        r = http.post(
            "/console/customers/C0005/points/redeem",
            data={"reward": "coffee-voucher", "key": f"console-redeem-{rkey}", "csrf_token": token},
        )
        assert r.status_code == 303
        done = http.get("/console/customers/C0005").text
        assert "Redeemed coffee-voucher for 500 points, coupon CAFE-" in done
        lounge = http.post(
            "/console/customers/C0005/points/redeem",
            data={"reward": "lounge-pass", "key": "k-lounge", "csrf_token": token},
        )
        assert "needs tier gold" in http.get(lounge.headers["location"]).text
    assert _count(engine, RedemptionRow, RedemptionRow.customer_id == "C0005") == 1
    with console_server.signed_in("marketer") as http:
        token = csrf_of(http.get("/console/customers/C0005").text)
        for path, data in (
            ("points/adjust", {"amount": "5", "reason": "x", "key": "k-m1"}),
            ("points/redeem", {"reward": "coffee-voucher", "key": "k-m2"}),
        ):
            r = http.post(f"/console/customers/C0005/{path}", data=data | {"csrf_token": token})
            assert r.status_code == 403, path
    with console_server.signed_in("operator") as http:
        r = http.post(
            "/console/customers/C0005/points/adjust",
            data={"amount": "5", "reason": "x", "key": "k-nocsrf"},
        )
        assert r.status_code == 403
    assert _count(engine, PointsLedgerRow, PointsLedgerRow.ref.in_(["k-m1", "k-nocsrf"])) == 0
    assert _count(engine, RedemptionRow, RedemptionRow.key == "k-m2") == 0


def test_export_downloads_the_document_and_erase_needs_confirmation(
    console_server: ConsoleServer,
) -> None:
    seed(console_server.runtime)
    engine = console_server.runtime.engine
    with console_server.signed_in("operator") as http:
        token = csrf_of(http.get("/console/customers/C0002").text)
        r = http.post("/console/customers/C0002/export", data={"csrf_token": token})
        assert r.status_code == 200
        assert r.headers["content-disposition"] == 'attachment; filename="customer-C0002.json"'
        doc = json.loads(r.text)
        assert doc["format"] == "crmflow.customer-export.v1" and doc["customer_id"] == "C0002"
        assert doc["profile"]["name"] == "Wang Fang"
        assert http.get("/console/customers/C0002/erase").status_code == 403
        sure = {"confirm": "C0002", "csrf_token": token}
        r = http.post("/console/customers/C0002/erase", data=sure)
        assert r.status_code == 403
    with console_server.signed_in("viewer") as http:
        token = csrf_of(http.get("/console/customers/C0002").text)
        r = http.post("/console/customers/C0002/export", data={"csrf_token": token})
        assert r.status_code == 403
    assert _count(engine, PrivacyLogRow, PrivacyLogRow.action == "export") == 1
    with console_server.signed_in("admin") as http:
        confirm = http.get("/console/customers/C0002/erase")
        assert confirm.status_code == 200 and "This cannot be undone" in confirm.text
        token = csrf_of(confirm.text)
        wrong = http.post(
            "/console/customers/C0002/erase", data={"confirm": "C0003", "csrf_token": token}
        )
        assert wrong.headers["location"] == "/console/customers/C0002/erase"
        with engine.connect() as conn:
            kept = conn.execute(
                select(CustomerRow.name).where(CustomerRow.customer_id == "C0002")
            ).scalar_one()
        assert kept == "Wang Fang"
        nocsrf = http.post("/console/customers/C0002/erase", data={"confirm": "C0002"})
        assert nocsrf.status_code == 403
        r = http.post(
            "/console/customers/C0002/erase", data={"confirm": "C0002", "csrf_token": token}
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/customers/C0002"
        after = http.get("/console/customers/C0002").text
        assert "C0002 erased" in after and "personal data was erased on" in after
        assert "Wang Fang" not in after and ">erase<" in after
    with engine.connect() as conn:
        row = conn.execute(
            select(CustomerRow.name, CustomerRow.erased_at).where(
                CustomerRow.customer_id == "C0002"
            )
        ).one()
    assert row.name is None and row.erased_at is not None


def test_pages_need_a_session(console_server: ConsoleServer) -> None:
    with httpx.Client(base_url=console_server.base, timeout=30) as http:
        r = http.get("/console/customers/C0001", follow_redirects=False)
        assert r.status_code == 303 and "/console/login" in r.headers["location"]
        r = http.post("/console/customers/C0001/tags", data={"tag": "x"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
