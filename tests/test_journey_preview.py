"""`crmflow journeys preview` and `test-send` on the example programme (SQLite and
PostgreSQL): a message rendered as the customer gets it, changing nothing; a test sent through
a real SMTP server (aiosmtpd) or the outbox, outside every cap, step and enrollment."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from activities.channels.unsubscribe import (
    InvalidUnsubscribeToken,
    make_unsubscribe_token,
    read_unsubscribe_token,
    unsubscribe_url,
)
from crmflow.cli import app
from crmflow.ingest import import_file
from crmflow.services import journey_preview
from crmflow.services import journeys as journeys_service
from crmflow.services import rules as rules_service
from crmflow.services.errors import Invalid, NotFound, Refused
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from journeys.models import Journey, MessageNode
from journeys.templates import render_message
from store import journeys as jstore
from store import send_limits
from store.db import utcnow
from store.models import Base, OutboxMessageRow
from tests.channel_servers import RecordingSmtpHandler, smtp_server
from tests.conftest import REPO

runner = CliRunner()
SECRET = "preview-test-unsubscribe-secret-0123456789"
BASE_URL = "https://crm.acme-rewards.example.com"
# the welcome journey's zh-CN variant, as examples/journeys/welcome.yaml writes it
ZH_HELLO_SUBJECT = "欢迎加入 Acme 会员，Li Wei"  # noqa: RUF001
ZH_HELLO_START = "Li Wei，您好！"  # noqa: RUF001
ZH_UNSUBSCRIBE = "退订："  # noqa: RUF001
ZH_NUDGE_SUBJECT = "新人礼：首单立减 50 元"  # noqa: RUF001


@pytest.fixture
def programme(cli_env: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The example rules and the welcome journey deployed, the example customers imported;
    settings from the environment, as the CLI reads them."""
    monkeypatch.setenv("CRMFLOW_UNSUBSCRIBE_SECRET", SECRET)
    monkeypatch.setenv("CRMFLOW_PUBLIC_BASE_URL", BASE_URL)
    rt = Runtime(Settings(), engine)
    rules_service.deploy(rt, rules_service.RulesFolder(folder=REPO / "examples/rules"))
    source = journeys_service.JourneyFile(path=REPO / "examples/journeys/welcome.yaml")
    asyncio.run(journeys_service.deploy(rt, source))
    report = import_file(engine, REPO / "examples/customers.jsonl", "customers")
    assert report.stored == 28
    yield rt


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }


def activity_render(engine: Engine, customer: str, node: str, locale: str | None = None) -> object:
    """The welcome message as the deliver activity renders it: its profile, its link."""
    with engine.connect() as conn:
        deployed = jstore.deployed(conn, "welcome")[0]
        profile = jstore.message_profile(conn, customer, utcnow())
    assert profile is not None
    spec = Journey.model_validate(deployed.definition).nodes[node]
    assert isinstance(spec, MessageNode)
    token = make_unsubscribe_token(SECRET, customer, "email", "welcome")
    link = unsubscribe_url(BASE_URL, token)
    return render_message(
        spec, {**profile, "data": {}}, locale, unsubscribe_url=link, journey="welcome"
    )


def test_preview_renders_the_message_as_the_customer_gets_it_and_changes_nothing(
    programme: Runtime, engine: Engine
) -> None:
    before = row_counts(engine)
    req = journey_preview.PreviewRequest(journey="welcome", node="hello", customer_id="C0001")
    shown = journey_preview.preview(programme, req)

    assert (shown.journey, shown.node, shown.channel) == ("welcome", "hello", "email")
    assert shown.customer_id == "C0001" and shown.address == "li.wei@example.com"
    assert (shown.locale, shown.variant) == ("zh-CN", "zh-CN")  # Li Wei reads Chinese
    assert shown.subject == ZH_HELLO_SUBJECT
    assert shown.text is not None and shown.text.startswith(ZH_HELLO_START)
    assert f"{ZH_UNSUBSCRIBE}{shown.unsubscribe_url}" in shown.text
    assert shown.held_back is None
    with engine.connect() as conn:
        assert shown.version == jstore.deployed(conn, "welcome")[0].version
    # the customer's own link, signed with the configured secret, naming them and the journey
    assert shown.unsubscribe_url.startswith(f"{BASE_URL}/unsubscribe/")
    token = read_unsubscribe_token(SECRET, shown.unsubscribe_url.rsplit("/", 1)[1])
    assert (token.customer_id, token.channel, token.journey) == ("C0001", "email", "welcome")
    # exactly what the deliver activity renders (same profile, same render function)
    expected = activity_render(engine, "C0001", "hello")
    assert (shown.subject, shown.text, shown.html) == (
        expected.subject,  # type: ignore[attr-defined]
        expected.text,  # type: ignore[attr-defined]
        expected.html,  # type: ignore[attr-defined]
    )

    # another locale: the default content, HTML included
    en = journey_preview.preview(programme, req.model_copy(update={"locale": "en-GB"}))
    assert (en.locale, en.variant) == ("en-GB", None)
    assert en.subject == "Welcome to Acme Rewards, Li Wei"
    assert en.html is not None and "<p>Hi Li Wei,</p>" in en.html
    assert f'<a href="{en.unsubscribe_url}">Unsubscribe</a>' in en.html

    assert row_counts(engine) == before  # nothing written anywhere


def test_preview_errors_name_what_is_missing(programme: Runtime) -> None:
    def ask(journey: str = "welcome", node: str = "hello", customer: str = "C0001") -> None:
        journey_preview.preview(
            programme,
            journey_preview.PreviewRequest(journey=journey, node=node, customer_id=customer),
        )

    with pytest.raises(NotFound, match="no journey 'nope' is deployed"):
        ask(journey="nope")
    with pytest.raises(NotFound, match="no node 'helo'; its message nodes: hello, nudge, thank"):
        ask(node="helo")
    with pytest.raises(Refused, match="'wait_2d' of journey 'welcome' is a delay node, not a"):
        ask(node="wait_2d")
    with pytest.raises(NotFound, match="no customer with id 'C9999'"):
        ask(customer="C9999")


def test_preview_on_the_command_line(programme: Runtime) -> None:
    result = runner.invoke(
        app, ["journeys", "preview", "welcome", "nudge", "--customer", "C0001", "--json"]
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["variant"] == "zh-CN" and got["subject"] == ZH_NUDGE_SUBJECT
    assert got["unsubscribe_url"] in got["text"]

    result = runner.invoke(
        app,
        ["journeys", "preview", "welcome", "hello", "--customer", "C0001", "--locale", "en"],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "variant default" in out
    assert "subject: Welcome to Acme Rewards, Li Wei" in out
    assert "--- text ---" in out and "--- html ---" in out
    assert f"unsubscribe: {BASE_URL}/unsubscribe/" in out

    for args, message in [
        (["nope", "hello", "--customer", "C0001"], "no journey 'nope' is deployed"),
        (["welcome", "bought", "--customer", "C0001"], "is a branch node, not a message"),
        (["welcome", "hello", "--customer", "C9999"], "no customer with id 'C9999'"),
    ]:
        result = runner.invoke(app, ["journeys", "preview", *args])
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())


def unfolded(raw: bytes) -> dict[str, str]:
    head = raw.partition(b"\r\n\r\n")[0].decode("ascii")
    lines = re.sub(r"\r\n(?=[ \t])", "", head).split("\r\n")
    return {k.lower(): v.removeprefix(" ") for k, _, v in (ln.partition(":") for ln in lines)}


def journey_rows(engine: Engine) -> dict[str, int]:
    """What a send through a journey writes: deliveries, steps, enrollments, commands."""
    counts = row_counts(engine)
    names = ("message_deliveries", "journey_steps", "journey_enrollments", "journey_commands")
    return {n: counts[n] for n in names if n in counts}


def test_test_send_goes_through_smtp_marked_and_outside_caps_and_stats(
    programme: Runtime, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(journey_rows(engine)) >= {"message_deliveries", "journey_steps"}
    before = row_counts(engine)
    handler = RecordingSmtpHandler()
    with smtp_server(handler) as port:
        monkeypatch.setenv("CRMFLOW_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("CRMFLOW_SMTP_PORT", str(port))
        monkeypatch.setenv("CRMFLOW_SMTP_SECURITY", "none")
        monkeypatch.setenv("CRMFLOW_MAIL_FROM", "Acme Rewards <news@acme.example>")
        args = ["journeys", "test-send", "welcome", "hello", "--customer", "C0001"]
        result = runner.invoke(app, [*args, "--to", "Tester@QA.Example", "--locale", "en"])
        assert result.exit_code == 0, result.output
        assert "sent to Tester@qa.example via email" in result.stdout
        result = runner.invoke(app, [*args, "--to", "qa@qa.example", "--json"])
        assert result.exit_code == 0, result.output
        sent = json.loads(result.stdout)

    assert sent["via"] == "email" and sent["subject"] == "[TEST] " + ZH_HELLO_SUBJECT
    assert [m.rcpt_tos for m in handler.received] == [["Tester@qa.example"], ["qa@qa.example"]]
    raw = handler.received[0].raw
    headers = unfolded(raw)
    assert headers["subject"] == "[TEST] Welcome to Acme Rewards, Li Wei"
    assert headers["x-crmflow-test"] == "1"
    assert headers["to"] == "Tester@qa.example"
    assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    link = headers["list-unsubscribe"]
    assert re.fullmatch(rf"<{re.escape(BASE_URL)}/unsubscribe/[\w.-]+>", link), link
    # the test's link cannot unsubscribe the customer: the page refuses its token
    with pytest.raises(InvalidUnsubscribeToken):
        read_unsubscribe_token(SECRET, link[1:-1].rsplit("/", 1)[1])
    mail = handler.received[0].message
    text = mail.get_body(("plain",))
    assert text is not None and "Hi Li Wei," in text.get_content()
    # the second test: Li Wei's own locale, the subject encoded as non-ASCII must be
    assert handler.received[1].message["Subject"] == "[TEST] " + ZH_HELLO_SUBJECT
    assert handler.received[1].message["X-Crmflow-Test"] == "1"

    # outside every cap, stat and enrollment: nothing written at all
    assert row_counts(engine) == before
    with engine.connect() as conn:
        since = utcnow() - timedelta(days=1)
        cap, rate = send_limits.cap_scope("C0001"), send_limits.rate_scope("welcome")
        assert send_limits.held_count(conn, cap, since) == 0
        assert send_limits.held_count(conn, rate, since) == 0


def test_test_send_without_smtp_lands_in_the_outbox_only(
    programme: Runtime, engine: Engine
) -> None:
    before = journey_rows(engine)
    req = journey_preview.SendTestRequest(
        journey="welcome", node="thank_you", customer_id="C0002", to="qa@qa.example"
    )
    sent = asyncio.run(journey_preview.send_test(programme, req))
    assert (sent.channel, sent.via) == ("email", "outbox")
    assert sent.subject == "[TEST] Thank you for your first order, Wang Fang"
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxMessageRow.__table__)).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.address == "qa@qa.example" and row.customer_id == "C0002"
    assert row.subject == sent.subject and row.dedupe_key.startswith("test:")
    assert row.headers["X-Crmflow-Test"] == "1"
    assert row.headers["List-Unsubscribe"].startswith(f"<{BASE_URL}/unsubscribe/")
    # a second test is a second message, not a duplicate
    asyncio.run(journey_preview.send_test(programme, req))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OutboxMessageRow)).scalar() == 2
    assert journey_rows(engine) == before

    with pytest.raises(Invalid, match="not an e-mail address"):
        asyncio.run(
            journey_preview.send_test(programme, req.model_copy(update={"to": "not-an-address"}))
        )
    with pytest.raises(Refused, match="is an exit node, not a message"):
        asyncio.run(journey_preview.send_test(programme, req.model_copy(update={"node": "done"})))
    result = runner.invoke(
        app,
        ["journeys", "test-send", "welcome", "hello", "--customer", "C9999", "--to", "a@b.org"],
    )
    assert result.exit_code == 1 and "no customer with id 'C9999'" in result.output


def test_preview_of_an_event_entered_journey_uses_the_customers_latest_entry_event(
    programme: Runtime,
) -> None:
    """The points-expiring journey's message reads its entry event's properties: a preview
    renders it with the customer's latest `points_expiring` event, as a send would."""
    rt = programme
    source = journeys_service.JourneyFile(path=REPO / "examples/journeys/points-expiring.yaml")
    asyncio.run(journeys_service.deploy(rt, source))
    event = {
        "event_id": "pe-preview-1",
        "customer_id": "C0001",
        "type": "points_expiring",
        "occurred_at": "2026-11-20T02:00:00+00:00",
        "properties": {
            "amount": 120.0,
            "date": "2026-12-20",
            "expires_at": "2026-12-20T16:00:00+00:00",
            "total_expiring": 120.0,
            "within_days": 30,
        },
    }
    path = rt.settings.home / "pe.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(event) + "\n")
    assert import_file(rt.engine, path, "events").stored == 1
    shown = journey_preview.preview(
        rt,
        journey_preview.PreviewRequest(
            journey="points-expiring", node="first_reminder", customer_id="C0001"
        ),
    )
    assert shown.subject is not None and "120 points expire on 2026-12-20" in shown.subject
