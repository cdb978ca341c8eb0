"""`crmflow outbox list` over messages the outbox channel wrote (SQLite and PostgreSQL):
newest first, filtered by customer, channel and time, paged; addresses masked unless asked,
bodies only when asked, and an unsubscribe link's token never printed."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from activities.channels.base import OutgoingMessage
from activities.channels.outbox import OutboxChannel
from activities.channels.unsubscribe import make_unsubscribe_token, unsubscribe_url
from crmflow.cli import app as cli_app
from crmflow.cli.outbox import since_time

TOKEN = make_unsubscribe_token("test-secret", "C1", "email", "welcome")
LINK = unsubscribe_url("https://crm.example.com", TOKEN)
TOKEN_IN_URL = LINK.rsplit("/", 1)[1]


def seed(engine: Engine) -> None:
    box = OutboxChannel(engine)
    messages = [
        OutgoingMessage(
            dedupe_key="welcome:C1:hello",
            customer_id="C1",
            channel="email",
            to="li.wei@example.com",
            subject="Welcome, Li Wei",
            text=f"Hello!\nUnsubscribe: {LINK}",
            html=f'<p>Hello!</p><a href="{LINK}">unsubscribe</a>',
            unsubscribe_url=LINK,
        ),
        OutgoingMessage(
            dedupe_key="welcome:C2:hello",
            customer_id="C2",
            channel="sms",
            to="+8613800001234",
            text="Welcome!",
        ),
        OutgoingMessage(
            dedupe_key="chat:slack:lead_sla:nightly:2026-11-20:abc",
            channel="slack",
            subject="3 lead(s) of zhang went back to the shared pool",
            text="C0001\nC0002\nC0003",
        ),
    ]
    for m in messages:
        asyncio.run(box.send(m))


def run(*args: str) -> Any:
    out = CliRunner().invoke(cli_app, ["outbox", "list", *args])
    return out


def listed(*args: str) -> dict[str, Any]:
    out = run(*args, "--json")
    assert out.exit_code == 0, out.output
    page: dict[str, Any] = json.loads(out.output)
    return page


def test_list_filters_masks_and_hides_tokens(engine: Engine, cli_env: Path) -> None:
    seed(engine)
    page = listed()
    assert [m["channel"] for m in page["messages"]] == ["slack", "sms", "email"]
    email = page["messages"][2]
    assert email["address"] == "l***@example.com"
    assert email["body_text"] is None and email["body_html"] is None
    assert email["headers"]["List-Unsubscribe"] == "<https://crm.example.com/unsubscribe/…>"
    assert page["messages"][1]["address"] == "+86*******1234"
    everything = json.dumps(page)
    assert TOKEN_IN_URL not in everything and "li.wei@example.com" not in everything

    full = listed("--customer", "C1", "--bodies", "--addresses")
    [one] = full["messages"]
    assert one["address"] == "li.wei@example.com"
    assert one["body_text"] == "Hello!\nUnsubscribe: https://crm.example.com/unsubscribe/…"
    assert "/unsubscribe/…" in one["body_html"]
    assert TOKEN_IN_URL not in json.dumps(full)

    assert [m["channel"] for m in listed("--channel", "slack")["messages"]] == ["slack"]
    assert len(listed("--since", "1h")["messages"]) == 3
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert listed("--since", future)["messages"] == []

    first = listed("--limit", "1")
    assert len(first["messages"]) == 1 and first["next_before_id"] is not None
    rest = listed("--before", str(first["next_before_id"]))
    assert [m["channel"] for m in rest["messages"]] == ["sms", "email"]
    assert rest["next_before_id"] is None

    table = run()
    assert table.exit_code == 0, table.output
    assert "Welcome" in table.output and "l***@" in table.output  # wrapped to the width
    assert TOKEN_IN_URL not in table.output and "Hello!" not in table.output


def test_bad_options_say_what_was_expected(engine: Engine, cli_env: Path) -> None:
    out = run("--since", "2026-11-20T08:00:00")
    assert out.exit_code == 1
    assert "has no time zone" in out.output and "Traceback" not in out.output
    out = run("--since", "yesterday")
    assert out.exit_code == 1 and "such as 90m, 6h or 2d" in out.output
    out = run("--channel", "x" * 40)
    assert out.exit_code == 1 and "channel" in out.output
    assert run("--json").exit_code == 0  # an empty outbox is not an error
    assert "no messages" in run().output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", datetime(2026, 11, 20, 10, 30, tzinfo=UTC)),
        ("6h", datetime(2026, 11, 20, 6, 0, tzinfo=UTC)),
        ("2d", datetime(2026, 11, 18, 12, 0, tzinfo=UTC)),
        ("2026-11-20T08:00:00+08:00", datetime(2026, 11, 20, 0, 0, tzinfo=UTC)),
    ],
)
def test_since(text: str, expected: datetime) -> None:
    assert since_time(text, now=datetime(2026, 11, 20, 12, 0, tzinfo=UTC)) == expected
