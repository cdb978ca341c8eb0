"""The console's tags page over HTTP (a real server, SQLite and PostgreSQL): every tag with
how many customers carry it now, which rules or people set it and when, tags nobody carries
any more (declared by the active rules, or seen in the audit trail), and applying or removing
a tag by hand — shown to and allowed for `customers.tag` roles only, never without a CSRF
token."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from crmflow.services import customers
from crmflow.services.tags import tag_overview
from store.models import TagRow
from tests.console_helpers import ConsoleServer, csrf_of
from tests.test_console_customers import seed


def _row(html: str, tag: str) -> str:
    """The table row of `tag` on the tags page."""
    rows = re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S)
    found = [r for r in rows if f">{tag}</span>" in r]
    assert found, tag
    return found[0]


def test_every_tag_with_its_carriers_setters_and_the_unused_ones(
    console_server: ConsoleServer,
) -> None:
    rt = console_server.runtime
    seed(rt)
    customers.add_tag(rt, "C0003", "vip-event", by="Ada Admin")
    customers.add_tag(rt, "C0004", "old-campaign", by="Ada Admin")
    customers.remove_tag(rt, "C0004", "old-campaign", by="Li Na")
    overview = {t.tag: t for t in tag_overview(rt).tags}
    assert overview["big-spender"].customers == 7 and overview["big-spender"].state == "in use"
    assert [s.name for s in overview["big-spender"].setters] == ["big-spender"]
    assert overview["churn-risk"].state == "nobody carries it"
    assert overview["churn-risk"].declared_by == ["churn-risk"]
    old = overview["old-campaign"]
    assert (old.customers, old.state, old.declared_by) == (0, "nobody carries it", [])
    assert {(s.name, s.added, s.removed) for s in old.setters} == {
        ("Ada Admin", 1, 0),
        ("Li Na", 0, 1),
    }
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/tags")
        assert page.status_code == 200
        big = _row(page.text, "big-spender")
        assert 'href="/console/customers?tag=big-spender">7</a>' in big
        assert "rule <strong>big-spender</strong>" in big
        assert "nobody carries it" in _row(page.text, "churn-risk")
        gone = _row(page.text, "old-campaign")
        assert "nobody carries it" in gone and "Li Na" in gone and "Ada Admin" in gone
        vip = _row(page.text, "vip-event")
        assert "Ada Admin" in vip and "(by hand)" in vip and ">1</a>" in vip
        assert "Apply or remove a tag by hand" not in page.text
    with console_server.signed_in("project_manager") as http:
        assert http.get("/console/tags").status_code == 403


def test_apply_and_remove_a_tag_by_hand(console_server: ConsoleServer) -> None:
    rt = console_server.runtime
    seed(rt)

    def carriers(tag: str) -> int:
        with rt.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(TagRow.tag == tag)).scalar_one())

    with console_server.signed_in("marketer") as http:
        page = http.get("/console/tags")
        assert "Apply or remove a tag by hand" in page.text
        token = csrf_of(page.text)
        r = http.post(
            "/console/tags/apply",
            data={"customer_id": "C0007", "tag": "vip-event", "op": "add", "csrf_token": token},
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/tags"
        after = http.get("/console/tags").text
        assert "Tag vip-event added to C0007." in after
        assert "test-marketer" in _row(after, "vip-event")
        assert carriers("vip-event") == 1
        r = http.post(
            "/console/tags/apply",
            data={"customer_id": "C0007", "tag": "vip-event", "op": "remove", "csrf_token": token},
        )
        after = http.get("/console/tags").text
        assert "Tag vip-event removed from C0007." in after
        assert "nobody carries it" in _row(after, "vip-event")
        unknown = http.post(
            "/console/tags/apply",
            data={"customer_id": "NOPE", "tag": "vip-event", "csrf_token": token},
        )
        assert "no customer with id" in http.get(unknown.headers["location"]).text
        bad = http.post(
            "/console/tags/apply",
            data={"customer_id": "C0007", "tag": "VIP Event", "csrf_token": token},
        )
        assert "is not a tag name" in http.get(bad.headers["location"]).text
        forged = http.post("/console/tags/apply", data={"customer_id": "C0007", "tag": "x1"})
        assert forged.status_code == 403
    with console_server.signed_in("viewer") as http:
        token = csrf_of(http.get("/console/tags").text)
        r = http.post(
            "/console/tags/apply",
            data={"customer_id": "C0007", "tag": "x2", "csrf_token": token},
        )
        assert r.status_code == 403
    assert carriers("x1") == carriers("x2") == 0
