"""The outbox channel on SQLite and PostgreSQL, and the channel registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select

from activities.channels.base import (
    Channel,
    OutgoingMessage,
    PermanentSendError,
    build_channels,
)
from activities.channels.email import EmailChannel
from activities.channels.outbox import OutboxChannel
from activities.channels.webhook import SmsChannel, WebhookChannel, WechatChannel
from crmflow.settings import Settings
from store.models import OutboxMessageRow


def message(**overrides: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "dedupe_key": "welcome:v1:cust-1:n1",
        "customer_id": "cust-1",
        "channel": "email",
        "to": "li@example.cn",
        "subject": "欢迎 Welcome",
        "text": "Hi Li",
        "html": "<p>Hi Li</p>",
        "headers": {"Reply-To": "care@club.example"},
        "unsubscribe_url": "http://127.0.0.1:8080/unsubscribe/t.s",
    }
    fields.update(overrides)
    return OutgoingMessage.model_validate(fields)


def rows(engine: Engine) -> list[OutboxMessageRow]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxMessageRow)).all())  # type: ignore[arg-type]


async def test_writes_one_row(engine: Engine) -> None:
    result = await OutboxChannel(engine).send(message())
    [row] = rows(engine)
    assert result.provider_message_id == f"outbox:{row.id}"
    assert result.detail == {"outbox_id": row.id, "inserted": True}
    assert row.dedupe_key == "welcome:v1:cust-1:n1"
    assert row.customer_id == "cust-1"
    assert row.channel == "email"
    assert row.address == "li@example.cn"
    assert row.subject == "欢迎 Welcome"
    assert row.body_text == "Hi Li"
    assert row.body_html == "<p>Hi Li</p>"
    assert row.headers == {
        "Reply-To": "care@club.example",
        "List-Unsubscribe": "<http://127.0.0.1:8080/unsubscribe/t.s>",
    }
    assert row.created_at.tzinfo is not None


async def test_same_dedupe_key_twice_leaves_one_row(engine: Engine) -> None:
    channel = OutboxChannel(engine)
    first = await channel.send(message())
    again = await channel.send(message(text="a retried render"))
    other = await channel.send(message(dedupe_key="welcome:v1:cust-1:n2"))
    assert again.provider_message_id == first.provider_message_id
    assert again.detail["inserted"] is False
    assert other.provider_message_id != first.provider_message_id
    stored = {r.dedupe_key: r.body_text for r in rows(engine)}
    assert stored == {"welcome:v1:cust-1:n1": "Hi Li", "welcome:v1:cust-1:n2": "Hi Li"}


async def test_concurrent_sends_of_one_key_leave_one_row(engine: Engine) -> None:
    channel = OutboxChannel(engine)
    results = await asyncio.gather(*(channel.send(message()) for _ in range(8)))
    assert len({r.provider_message_id for r in results}) == 1
    assert sum(r.detail["inserted"] for r in results) == 1
    assert len(rows(engine)) == 1


async def test_a_value_the_table_cannot_hold_is_permanent(engine: Engine) -> None:
    too_long = "x" * 400 + "@example.org"  # address is VARCHAR(320)
    if engine.dialect.name == "sqlite":  # SQLite does not enforce VARCHAR lengths
        await OutboxChannel(engine).send(message(to=too_long))
        assert [r.address for r in rows(engine)] == [too_long]
        return
    with pytest.raises(PermanentSendError, match="outbox refused"):
        await OutboxChannel(engine).send(message(to=too_long))
    assert rows(engine) == []


def bare_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings with no channel configured, whatever the environment says."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    return Settings(smtp_host=None, webhook_url=None, sms_url=None, wechat_url=None)


def test_registry_builds_the_configured_channels(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = bare_settings(monkeypatch, tmp_path)
    only = build_channels(base, engine)
    assert list(only) == ["outbox"]
    assert isinstance(only["outbox"], Channel)

    settings = base.model_copy(
        update={
            "smtp_host": "smtp.example.org",
            "mail_from": "Club <news@club.example>",
            "smtp_security": "ssl",
            "webhook_url": "https://hooks.example.org/crm",
            "webhook_secret": SecretStr("w"),
            "sms_url": "https://sms.example.org/send",
            "sms_secret": SecretStr("s"),
            "wechat_url": "https://wx.example.org/send",
            "wechat_secret": SecretStr("x"),
            "channel_retry_attempts": 5,
            "channel_retry_base_seconds": 0.25,
        }
    )
    channels = build_channels(settings, engine)
    assert sorted(channels) == ["email", "outbox", "sms", "webhook", "wechat"]
    assert {name: ch.name for name, ch in channels.items()} == {n: n for n in channels}
    email = channels["email"]
    assert isinstance(email, EmailChannel)
    assert email.config.effective_port == 465
    webhook = channels["webhook"]
    assert type(webhook) is WebhookChannel
    assert (webhook.attempts, webhook.base_delay) == (5, 0.25)
    assert isinstance(channels["sms"], SmsChannel)
    assert isinstance(channels["wechat"], WechatChannel)
    assert all(isinstance(ch, Channel) for ch in channels.values())


def test_registry_refuses_half_configured_channels(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = bare_settings(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="CRMFLOW_MAIL_FROM"):
        build_channels(base.model_copy(update={"smtp_host": "smtp.example.org"}), engine)
    with pytest.raises(ValueError, match="CRMFLOW_SMS_SECRET"):
        build_channels(base.model_copy(update={"sms_url": "https://sms.example.org"}), engine)
