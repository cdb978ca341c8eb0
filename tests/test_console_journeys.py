"""The console's journey pages over HTTP (real server, SQLite and PostgreSQL): the list, one
journey drawn as an SVG graph with per-node counts, variants against the holdout with
intervals (small samples labelled, no uplift claimed), the versions, pause/resume by role
with CSRF, and the enrollments at a node, paginated.

`seed_journeys` deploys the example rules and journeys and writes enrollments, steps and
goal events with known figures (the browser test uses it too)."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select

from crmflow.services import journeys as service
from crmflow.services.audit import list_changes
from crmflow.services.journey_views import SMALL_SAMPLE, difference_interval, wilson
from crmflow.services.runtime import Runtime
from store.journeys import deploy_journey
from store.models import CustomerRow, EnrollmentRow, EventRow, JourneyRow, JourneyStepRow
from tests.console_helpers import ConsoleServer, csrf_of
from tests.rules_helpers import REPO, deploy_dir

EXAMPLES = REPO / "examples/journeys"
PROGRAM = REPO / "examples/program.yaml"
CAP = "frequency cap: 3 messages in 7 days"
NO_EMAIL = "no consent for email"
NO_SMS = "no consent for sms"
SMS_DOWN = "sms gateway timeout"
WEEKLY = """
journey: vip-weekly
entry: {segment: "tier == gold", schedule: "0 9 * * 1"}
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template: {subject: "Hi", text: "hello"}
    next: done
  done: {type: exit}
"""


# --------------------------------------------------------------------------- seeding


class Rows:
    """Enrollments with their steps and events, written in a few statements."""

    def __init__(self, journey: str, version: str, at: datetime) -> None:
        self.journey, self.version, self.at = journey, version, at
        self.enrollments: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.customers: set[str] = set()

    def add(
        self,
        cid: str,
        status: str,
        node: str,
        steps: Sequence[tuple[str, ...]],
        variant: str | None = None,
        hours: float = 0,
    ) -> None:
        """One enrollment of `cid` entered `hours` after the seed's time; `steps` are
        (node, kind) or (node, kind, reason)."""
        wid = f"journey:{self.journey}:{cid}:1"
        entered = self.at + timedelta(hours=hours)
        done = status != "active"
        self.customers.add(cid)
        self.enrollments.append(
            {
                "workflow_id": wid,
                "journey": self.journey,
                "version": self.version,
                "customer_id": cid,
                "entry_no": 1,
                "status": status,
                "node": node,
                "node_since": entered + timedelta(hours=len(steps)),
                "variant": variant,
                "entered_at": entered,
                "finished_at": entered + timedelta(days=3) if done else None,
                "outcome": {"converted": "goal reached", "exited": "unsubscribed"}.get(
                    status, "end of the journey" if done else None
                ),
            }
        )
        for i, step in enumerate(steps):
            self.steps.append(
                {
                    "step_key": f"{wid}:{i}",
                    "workflow_id": wid,
                    "journey": self.journey,
                    "version": self.version,
                    "customer_id": cid,
                    "node": step[0],
                    "kind": step[1],
                    "reason": step[2] if len(step) > 2 else None,
                    "variant": variant,
                    "at": entered + timedelta(minutes=i),
                }
            )

    def event(self, cid: str, typ: str, days: float, **props: Any) -> None:
        self.events.append(
            {
                "event_id": f"ev-{self.journey}-{len(self.events)}",
                "customer_id": cid,
                "type": typ,
                "occurred_at": self.at + timedelta(days=days),
                "properties": props,
            }
        )

    def write(self, engine: Engine) -> None:
        with engine.begin() as conn:
            known = set(conn.execute(select(CustomerRow.customer_id)).scalars())
            new = sorted(self.customers - known)
            if new:
                conn.execute(
                    insert(CustomerRow),
                    [{"customer_id": c, "name": f"Member {c}"} for c in new],
                )
            for table, rows in (
                (EnrollmentRow, self.enrollments),
                (JourneyStepRow, self.steps),
                (EventRow, self.events),
            ):
                if rows:
                    conn.execute(insert(table), rows)


def _deploy(rt: Runtime, path: Path) -> str:
    source = service.JourneyFile(path=path, program=PROGRAM)
    # in a thread of its own: Playwright's sync API keeps an event loop in the test's thread
    with ThreadPoolExecutor(1) as pool:
        report = pool.submit(asyncio.run, service.deploy(rt, source)).result()
    return report.version


def seed_journeys(rt: Runtime, tmp: Path) -> dict[str, str]:
    """The example rules and the four example journeys deployed (winback twice: an older
    version with a 21-day goal first), and enrollments with known figures:

    - winback (active version): 400 entered — discount 180 (54 converted), points 180
      (36 converted), holdout 40 (8 bought within the goal's 30 days); messages suppressed
      for a frequency cap and missing consent, failed SMS; 20 on the older version;
    - welcome: 120 entered, no split and no goal, 25 waiting at wait_2d;
    - points-expiring: 12 entered (a small sample), 3 converted;
    - birthday: none.

    Returns the versions by name (winback-v1 for the older one)."""
    deploy_dir(rt.engine, REPO / "examples/rules")
    older = tmp / "winback.yaml"
    older.write_text(
        (EXAMPLES / "winback.yaml").read_text().replace("within_days: 30", "within_days: 21")
    )
    versions = {"winback-v1": _deploy(rt, older)}
    for name in ("birthday", "points-expiring", "welcome", "winback"):
        versions[name] = _deploy(rt, EXAMPLES / f"{name}.yaml")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)

    # winback, active version
    w = Rows("winback", versions["winback"], start)
    split = [("offer_test", "entered"), ("offer_test", "entered")]
    n = 0

    def cid() -> str:
        nonlocal n
        n += 1
        return f"W{n:04d}"

    for variant, mail, converted, waiting, at_delay, completed, exited, reminder in (
        ("discount", "discount_email", 54, 40, 20, 50, 16, [("sent", 46), ("suppressed", 4)]),
        ("points", "points_email", 36, 48, 16, 64, 16, [("sent", 60), ("failed", 4)]),
    ):
        total = converted + waiting + at_delay + completed + exited
        assert total == 180
        fates = (
            ["converted"] * converted
            + ["waiting"] * waiting
            + ["delay"] * at_delay
            + ["completed"] * completed
            + ["exited"] * exited
        )
        sends = (
            [("sent",)] * (170 if variant == "discount" else 175)
            + [("suppressed", CAP)] * (6 if variant == "discount" else 5)
            + [("suppressed", NO_EMAIL)] * (4 if variant == "discount" else 0)
        )
        reminders = [k for k, count in reminder for _ in range(count)]
        done_no = 0
        for i, fate in enumerate(fates):
            steps: list[tuple[str, ...]] = [*split, (mail, "entered"), (mail, *sends[i])]
            who = cid()
            if fate == "converted":
                w.add(who, "converted", "wait_purchase", [*steps, ("wait_purchase", "converted")],
                      variant, i)  # fmt: skip
                w.event(who, "purchase", 5 + i / 100, amount=199)
            elif fate == "waiting":
                w.add(who, "active", "wait_purchase", steps, variant, 300 + i)
            elif fate == "delay":
                w.add(who, "active", "reminder_time", steps, variant, i)
            elif fate == "exited":
                w.add(who, "exited", "wait_purchase", [*steps, ("wait_purchase", "exited")],
                      variant, i)  # fmt: skip
            else:
                kind = reminders[done_no]
                done_no += 1
                why = {"suppressed": NO_SMS, "failed": SMS_DOWN}.get(kind)
                sms = ("reminder", kind, why) if why else ("reminder", kind)
                ends = [("reminder", "entered"), sms, ("done", "completed")]
                w.add(who, "completed", "done", [*steps, *ends], variant, i)
    for i in range(40):
        who = cid()
        w.add(who, "held_out", "offer_test", [*split, ("offer_test", "held_out")], "holdout", i)
        if i < 8:
            w.event(who, "purchase", 4, amount=80)  # within 30 days: converts
        elif i < 10:
            w.event(who, "purchase", 40, amount=80)  # too late
    w.write(rt.engine)
    old = Rows("winback", versions["winback-v1"], start - timedelta(days=30))
    for i in range(20):
        old.add(f"V{i:03d}", "completed", "done",
                [*split, ("points_email", "entered"), ("points_email", "sent"),
                 ("done", "completed")], "points", i)  # fmt: skip
    old.write(rt.engine)

    # welcome: no split, no goal
    wel = Rows("welcome", versions["welcome"], start + timedelta(days=5))
    for i in range(120):
        who = f"N{i:04d}"
        hello: list[tuple[str, ...]] = [("hello", "entered"), ("hello", "entered")]
        hello.append(("hello", "suppressed", NO_EMAIL) if i < 8 else ("hello", "sent"))
        if i < 25:
            wel.add(who, "active", "wait_2d", hello, hours=300 + i)
        elif i < 30:
            wel.add(who, "exited", "wait_2d", [*hello, ("wait_2d", "exited")], hours=i)
        elif i < 65:
            thanks = [("thank_you", "entered"), ("thank_you", "sent"), ("done", "completed")]
            wel.add(who, "completed", "done", [*hello, *thanks], hours=i)
        else:
            outcome = ("suppressed", CAP) if i < 70 else ("sent",)
            nudge = [("nudge", "entered"), ("nudge", *outcome), ("done", "completed")]
            wel.add(who, "completed", "done", [*hello, *nudge], hours=i)
    wel.write(rt.engine)

    # points-expiring: a small sample
    pe = Rows("points-expiring", versions["points-expiring"], start + timedelta(days=10))
    for i in range(12):
        who = f"P{i:03d}"
        first = [("first_reminder", "entered"), ("first_reminder", "entered"),
                 ("first_reminder", "sent")]  # fmt: skip
        if i < 3:
            pe.add(who, "converted", "wait_a_week", [*first, ("wait_a_week", "converted")],
                   hours=i)  # fmt: skip
            pe.event(who, "points_redeemed", 1)  # the goal event: what counts as converting
        elif i < 8:
            pe.add(who, "active", "wait_a_week", first, hours=i)
        else:
            second = [("second_reminder", "entered"), ("second_reminder", "sent")]
            pe.add(who, "completed", "done", [*first, *second, ("done", "completed")], hours=i)
    pe.write(rt.engine)
    return versions


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def seeded(console_server: ConsoleServer, tmp_path: Path) -> dict[str, str]:
    return seed_journeys(console_server.runtime, tmp_path)


def node_text(svg: ET.Element, node: str) -> str:
    """All the text of a node's box in the graph."""
    ns = "{http://www.w3.org/2000/svg}"
    for g in svg.iter(f"{ns}g"):
        if g.get("data-node") == node:
            return " ".join(" ".join("".join(t.itertext()) for t in g.iter(f"{ns}text")).split())
    raise AssertionError(f"no box for {node}")


def graph_of(html: str) -> ET.Element:
    found = re.search(r"<svg[^>]*class=\"journey-graph\".*?</svg>", html, re.S)
    assert found, "the page has no journey graph"
    return ET.fromstring(found.group(0))


def status_of(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(JourneyRow.status).where(JourneyRow.name == name)).scalar())


def notice(http: httpx.Client, r: httpx.Response) -> str:
    assert r.status_code == 303, r.text
    page = http.get(r.headers["location"])
    found = re.search(r'<p class="notice[^"]*"[^>]*>(.*?)</p>', page.text, re.S)
    assert found, "no notice shown"
    return unescape(found.group(1))


# --------------------------------------------------------------------------- intervals


def test_wilson_and_newcombe_intervals() -> None:
    assert wilson(0, 0) is None
    low, high = wilson(1, 1)  # type: ignore[misc]
    assert low == pytest.approx(0.2065, abs=1e-4) and high == 1.0
    low, high = wilson(54, 180)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.2378, abs=1e-4), pytest.approx(0.3706, abs=1e-4))
    low, high = wilson(0, 10)  # type: ignore[misc]
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    # Newcombe (1998), example (h): 56/70 - 48/80: 0.0524 to 0.3339
    low, high = difference_interval(56, 70, 48, 80)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))
    assert difference_interval(1, 1, 0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


# --------------------------------------------------------------------------- pages


def test_the_list(console_server: ConsoleServer, seeded: dict[str, str]) -> None:
    with console_server.signed_in("marketer") as http:
        r = http.get("/console/journeys")
        assert r.status_code == 200
        html = r.text
    for name in ("birthday", "points-expiring", "welcome", "winback"):
        assert f'href="/console/journeys/{name}"' in html
    row = re.search(r"<tr>\s*<td><a href=\"/console/journeys/winback\">.*?</tr>", html, re.S)
    assert row is not None
    text = re.sub(r"<[^>]+>", " ", row.group(0))
    assert "event" in text and seeded["winback"][:8] in text
    assert "active 124" in text and "converted 90" in text and "held out 40" in text
    assert re.search(r"\b420\b", text) and re.search(r"\b90\b", text)  # entered, converted
    welcome = re.search(r"journeys/welcome\">.*?</tr>", html, re.S)
    assert welcome is not None and ">rule<" in welcome.group(0)


def test_the_journey_graph_with_counts(
    console_server: ConsoleServer, seeded: dict[str, str]
) -> None:
    with console_server.signed_in("marketer") as http:
        r = http.get("/console/journeys/winback")
        assert r.status_code == 200
        html = r.text
    svg = graph_of(html)
    boxes = {g.get("data-node") for g in svg.iter("{http://www.w3.org/2000/svg}g")} - {None}
    assert boxes >= {
        "offer_test", "discount_email", "points_email", "wait_purchase", "reminder_time",
        "reminder", "done", "~holdout~offer_test",
    }  # fmt: skip
    assert "entered 180" in node_text(svg, "discount_email")
    assert "sent 170" in node_text(svg, "discount_email")
    assert "suppressed 10" in node_text(svg, "discount_email")
    assert "waiting 88" in node_text(svg, "wait_purchase")
    assert "waiting 36" in node_text(svg, "reminder_time")
    assert "failed 4" in node_text(svg, "reminder")
    assert "held out 40" in node_text(svg, "~holdout~offer_test")
    assert "entered 400" in node_text(svg, "offer_test")
    # edges say what they mean; each box links to the enrollments there
    labels = [" ".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    for label in ("discount 45%", "points 45%", "holdout 10%", "purchase ✓", "timeout 14d"):
        assert label in labels
    assert 'href="/console/journeys/winback/enrollments?node=discount_email"' in html
    assert (
        'href="/console/journeys/winback/enrollments?node=offer_test&amp;status=held_out"' in html
    )
    # not sent, by reason
    assert CAP in html and NO_SMS in html and SMS_DOWN in html
    # versions: both, the active one marked
    assert seeded["winback"] in html and seeded["winback-v1"] in html
    # no project sign-off anywhere
    lower = html.lower()
    assert "sign off" not in lower and "sign-off" not in lower and "signoff" not in lower


def test_conversions_with_intervals_and_small_samples(
    console_server: ConsoleServer, seeded: dict[str, str]
) -> None:
    with console_server.signed_in("viewer") as http:
        html = http.get("/console/journeys/winback").text
        small = http.get("/console/journeys/points-expiring").text
        welcome = http.get("/console/journeys/welcome").text
    section = html[html.index('id="conversions"') :]
    section = section[: section.index("</section>")]
    text = " ".join(re.sub(r"<[^>]+>", " ", section).split())
    # discount: 54/180 = 30.0% (23.8% to 37.1%); uplift over the holdout's 8/40 = 20.0%
    assert "30.0% (23.8% \u2013 37.1%)" in text.replace("( ", "(").replace(" )", ")")
    assert "+10.0 pp" in text and "20.0%" in text
    assert "no clear difference" in text  # the holdout is 40: the interval spans 0
    assert "better than the holdout" not in text
    # points-expiring: 12 entered, no holdout; labelled a small sample, no uplift
    section = small[small.index('id="conversions"') :]
    section = section[: section.index("</section>")]
    assert "small sample" in section and "25.0%" in section and " pp" not in section
    assert f"fewer than {SMALL_SAMPLE}" in section
    assert "no goal" in welcome


def test_an_older_version_and_unknown_names(
    console_server: ConsoleServer, seeded: dict[str, str]
) -> None:
    old = seeded["winback-v1"]
    with console_server.signed_in("viewer") as http:
        r = http.get("/console/journeys/winback", params={"version": old})
        assert r.status_code == 200
        svg = graph_of(r.text)
        assert "entered 20" in node_text(svg, "points_email")
        assert "no enrollments here" in node_text(svg, "discount_email")
        assert "within 21 days" in r.text
        assert http.get("/console/journeys/nope").status_code == 404
        assert http.get("/console/journeys/winback", params={"version": "abc"}).status_code == 404
        assert http.get("/console/journeys/Not%20A%20Name").status_code == 422
        assert http.get("/console/journeys/nope/enrollments").status_code == 404
        bad = http.get("/console/journeys/winback/enrollments", params={"node": "<x>"})
        assert bad.status_code == 422
        bad = http.get("/console/journeys/winback/enrollments", params={"status": "zzz"})
        assert bad.status_code == 422
    with console_server.signed_in("project_manager") as http:
        assert http.get("/console/journeys").status_code == 403
        assert http.get("/console/journeys/winback").status_code == 403


def test_enrollments_at_a_node_paginated(
    console_server: ConsoleServer, seeded: dict[str, str]
) -> None:
    with console_server.signed_in("marketer") as http:
        r = http.get("/console/journeys/winback/enrollments", params={"node": "wait_purchase"})
        assert r.status_code == 200
        # 88 waiting + 90 converted + 32 exited there now
        assert "210 enrollments" in r.text and "page 1 of 5" in r.text
        first = re.findall(r'href="/console/customers/(W\d+)"', r.text)
        assert len(first) == 50
        r2 = http.get(
            "/console/journeys/winback/enrollments", params={"node": "wait_purchase", "page": 2}
        )
        second = re.findall(r'href="/console/customers/(W\d+)"', r2.text)
        assert len(second) == 50 and not set(first) & set(second)
        assert 'rel="prev"' in r2.text and 'rel="next"' in r2.text
        last = http.get(
            "/console/journeys/winback/enrollments", params={"node": "wait_purchase", "page": 5}
        )
        assert len(re.findall(r'href="/console/customers/W', last.text)) == 10
        assert 'rel="next"' not in last.text
        waiting = http.get(
            "/console/journeys/winback/enrollments",
            params={"node": "wait_purchase", "status": "active"},
        )
        assert "88 enrollments" in waiting.text
        held = http.get(
            "/console/journeys/winback/enrollments",
            params={"node": "offer_test", "status": "held_out"},
        )
        assert "40 enrollments" in held.text and "holdout" in held.text
        assert "/console/journeys/winback/enrollments?status=held_out" in held.text  # all steps
        none = http.get("/console/journeys/birthday/enrollments", params={"node": "greeting"})
        assert none.status_code == 200 and "No enrollment is here" in none.text


def test_pause_and_resume_by_role(console_server: ConsoleServer, seeded: dict[str, str]) -> None:
    engine = console_server.runtime.engine
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/journeys/winback").text
        assert "Pause journey" not in page and "Resume journey" not in page
        token = csrf_of(page)  # the sign-out form's: a valid token, the wrong role
        r = http.post("/console/journeys/winback/pause", data={"csrf_token": token})
        assert r.status_code == 403
    assert status_of(engine, "winback") == "active"
    with console_server.signed_in("marketer") as http:
        page = http.get("/console/journeys/winback").text
        assert "Pause journey" in page and "Resume journey" not in page
        assert http.post("/console/journeys/winback/pause", data={}).status_code == 403
        r = http.post("/console/journeys/winback/pause", data={"csrf_token": "nope"})
        assert r.status_code == 403
        assert status_of(engine, "winback") == "active"
        r = http.post("/console/journeys/winback/pause", data={"csrf_token": csrf_of(page)})
        assert "paused" in notice(http, r)
        assert status_of(engine, "winback") == "paused"
        page = http.get("/console/journeys/winback").text
        assert "Resume journey" in page and "Pause journey" not in page
        r = http.post("/console/journeys/winback/resume", data={"csrf_token": csrf_of(page)})
        assert "resumed" in notice(http, r)
        assert status_of(engine, "winback") == "active"
        r = http.post("/console/journeys/nope/pause", data={"csrf_token": csrf_of(page)})
        assert "no journey 'nope'" in notice(http, r)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(EnrollmentRow)).scalar_one()
    assert n == 552  # nothing else changed
    # the changes are in the audit log, made by the console user
    changes = [
        (c.actor_name, c.action, c.target, c.status)
        for c in list_changes(console_server.runtime)
        if c.target.startswith("/console/journeys/winback/")
    ]
    assert ("test-marketer", "journeys.write", "/console/journeys/winback/pause", 303) in changes
    assert ("test-marketer", "journeys.write", "/console/journeys/winback/resume", 303) in changes


def test_a_scheduled_journey_without_temporal_shows_why(
    console_server: ConsoleServer, seeded: dict[str, str]
) -> None:
    """Pausing a journey entered by a scheduled segment syncs its Temporal Schedule: with
    Temporal down, the page says the status changed and the schedule did not follow."""
    rt = console_server.runtime
    journey = service.load(rt, service.JourneyText(yaml=WEEKLY))[0].journey
    with rt.engine.begin() as conn:
        deploy_journey(conn, "vip-weekly", journey.definition(), WEEKLY, "test")
    rt.settings = rt.settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    with console_server.signed_in("admin") as http:
        page = http.get("/console/journeys/vip-weekly").text
        assert "on schedule" in page and "0 9 * * 1" in page
        r = http.post("/console/journeys/vip-weekly/pause", data={"csrf_token": csrf_of(page)})
        said = notice(http, r)
    assert "paused, but" in said and "Temporal" in said
    assert status_of(rt.engine, "vip-weekly") == "paused"


def test_signed_out_goes_to_sign_in(console_server: ConsoleServer) -> None:
    with httpx.Client(base_url=console_server.base) as http:
        r = http.get("/console/journeys/winback")
        assert r.status_code == 303 and "/console/login" in r.headers["location"]
        r = http.post("/console/journeys/winback/pause")
        assert r.status_code == 303
