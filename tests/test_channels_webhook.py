"""Webhook, sms and wechat channels against a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from activities.channels.base import OutgoingMessage, PermanentSendError, TransientSendError
from activities.channels.webhook import (
    SmsChannel,
    WebhookChannel,
    WechatChannel,
    encode_body,
    sign,
    verify,
)
from tests.channel_servers import RecordingHTTPServer
from tests.conftest import free_port

SECRET = "whsec-test-0123456789"


def message(**overrides: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "dedupe_key": "winback:v1:cust-7:node-3",
        "customer_id": "cust-7",
        "channel": "webhook",
        "to": None,
        "subject": "We miss you",
        "text": "Come back for 2x points — 积分翻倍",
        "html": "<p>Come back</p>",
        "data": {"coupon": "BACK20", "points": 200},
    }
    fields.update(overrides)
    return OutgoingMessage.model_validate(fields)


def test_sign_and_verify() -> None:
    body = b'{"a":1}'
    now = 1_700_000_000
    sig = sign(SECRET, now, body)
    assert sig.startswith("sha256=") and len(sig) == len("sha256=") + 64
    assert verify(SECRET, now, body, sig, 300, now=now + 10)
    assert not verify(SECRET, now, body + b" ", sig, 300, now=now)
    assert not verify("another-secret", now, body, sig, 300, now=now)
    assert not verify(SECRET, now + 1, body, sig, 300, now=now)  # timestamp is signed too
    assert not verify(SECRET, now, body, sig, 300, now=now + 301)  # too old: a replay
    assert not verify(SECRET, "not-a-number", body, sig, 300, now=now)


async def test_posts_a_signed_json_body() -> None:
    with RecordingHTTPServer(answer={"id": "prov-981"}) as server:
        channel = WebhookChannel(server.url, SECRET, attempts=1)
        result = await channel.send(message())

    assert result.provider_message_id == "prov-981"
    assert result.detail["status"] == 200 and result.detail["attempts"] == 1
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req.path == "/hook"
    assert req.headers["content-type"].startswith("application/json")
    assert req.headers["idempotency-key"] == "winback:v1:cust-7:node-3"
    ts = req.headers["x-crmflow-timestamp"]
    assert abs(int(ts) - time.time()) < 60
    assert verify(SECRET, ts, req.body, req.headers["x-crmflow-signature"], tolerance=300)
    assert not verify("wrong", ts, req.body, req.headers["x-crmflow-signature"], tolerance=300)
    # The documented scheme, computed independently of `sign`.
    expected = hmac.new(SECRET.encode(), ts.encode() + b"." + req.body, hashlib.sha256)
    assert req.headers["x-crmflow-signature"] == "sha256=" + expected.hexdigest()
    assert req.json() == {
        "dedupe_key": "winback:v1:cust-7:node-3",
        "customer_id": "cust-7",
        "channel": "webhook",
        "to": None,
        "subject": "We miss you",
        "text": "Come back for 2x points — 积分翻倍",
        "html": "<p>Come back</p>",
        "headers": {},
        "unsubscribe_url": None,
        "data": {"coupon": "BACK20", "points": 200},
    }
    assert req.body == encode_body(req.json())  # the signed bytes are the canonical JSON


async def test_retries_5xx_with_backoff_and_the_same_idempotency_key() -> None:
    with RecordingHTTPServer([500, 500], default=200, answer={}) as server:
        channel = WebhookChannel(server.url, SECRET, attempts=3, base_delay=0.1)
        started = time.monotonic()
        result = await channel.send(message())
        elapsed = time.monotonic() - started

    assert result.detail["attempts"] == 3
    assert result.provider_message_id == "winback:v1:cust-7:node-3"  # no id in the answer
    assert len(server.requests) == 3
    assert {r.headers["idempotency-key"] for r in server.requests} == {"winback:v1:cust-7:node-3"}
    assert len({r.body for r in server.requests}) == 1
    for r in server.requests:  # each attempt is signed on its own
        assert verify(
            SECRET, r.headers["x-crmflow-timestamp"], r.body, r.headers["x-crmflow-signature"]
        )
    assert elapsed >= 0.1 + 0.2  # slept base, then 2x base


async def test_429_is_retried() -> None:
    with RecordingHTTPServer([429], extra_headers={"Retry-After": "0"}) as server:
        channel = WebhookChannel(server.url, SECRET, attempts=2, base_delay=0.01)
        result = await channel.send(message())
    assert result.detail["attempts"] == 2
    assert len(server.requests) == 2


async def test_5xx_every_time_is_transient_after_the_attempts() -> None:
    with RecordingHTTPServer(default=503) as server:
        channel = WebhookChannel(server.url, SECRET, attempts=4, base_delay=0.01)
        with pytest.raises(TransientSendError, match=r"after 4 attempt\(s\): HTTP 503"):
            await channel.send(message())
    assert len(server.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_4xx_is_permanent_without_retry(status: int) -> None:
    with RecordingHTTPServer(default=status) as server:
        channel = WebhookChannel(server.url, SECRET, attempts=3, base_delay=0.01)
        with pytest.raises(PermanentSendError, match=f"HTTP {status}"):
            await channel.send(message())
    assert len(server.requests) == 1


async def test_connection_refused_is_transient_after_the_attempts() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    channel = WebhookChannel(url, SECRET, attempts=3, base_delay=0.05)
    started = time.monotonic()
    with pytest.raises(TransientSendError, match=r"after 3 attempt\(s\): ConnectError"):
        await channel.send(message())
    assert time.monotonic() - started >= 0.05 + 0.1  # it did back off between the attempts


async def test_a_slow_receiver_times_out_as_transient() -> None:
    with RecordingHTTPServer(delay=1.0) as server:
        channel = WebhookChannel(server.url, SECRET, attempts=2, base_delay=0.01, timeout=0.2)
        with pytest.raises(TransientSendError, match="ReadTimeout"):
            await channel.send(message())
    assert len(server.requests) == 2


async def test_sms_payload_with_an_e164_number() -> None:
    with RecordingHTTPServer(answer={"message_id": "sms-1"}) as server:
        channel = SmsChannel(server.url, SECRET, attempts=1)
        result = await channel.send(
            message(channel="sms", to="+8613800138000", text="Your code is 4711")
        )
    assert channel.name == "sms"
    assert result.provider_message_id == "sms-1"
    req = server.requests[0]
    assert req.json() == {
        "dedupe_key": "winback:v1:cust-7:node-3",
        "customer_id": "cust-7",
        "channel": "sms",
        "to": "+8613800138000",
        "text": "Your code is 4711",
        "data": {"coupon": "BACK20", "points": 200},
    }
    assert verify(
        SECRET, req.headers["x-crmflow-timestamp"], req.body, req.headers["x-crmflow-signature"]
    )


@pytest.mark.parametrize(
    "to",
    [
        "12345",  # not E.164
        "13800138000",  # national form, no country code
        "+86 138 0013 8000",  # spaces
        "+861380013800",  # one digit short: not a valid Chinese mobile number
        "+10000000000",  # not a valid number
        None,
    ],
)
async def test_sms_bad_phone_is_permanent_before_any_request(to: str | None) -> None:
    with RecordingHTTPServer() as server:
        channel = SmsChannel(server.url, SECRET, attempts=3, base_delay=0.01)
        with pytest.raises(PermanentSendError):
            await channel.send(message(channel="sms", to=to))
    assert server.requests == []


async def test_wechat_payload_and_bad_openid() -> None:
    openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    with RecordingHTTPServer(answer={"errcode": 0, "msgid": 200228332}) as server:
        channel = WechatChannel(server.url, SECRET, attempts=1)
        result = await channel.send(message(channel="wechat", to=openid, text="Points doubled"))
        with pytest.raises(PermanentSendError, match="openid"):
            await channel.send(message(channel="wechat", to="not an openid!"))
    assert result.provider_message_id == "200228332"
    assert len(server.requests) == 1
    body = server.requests[0].json()
    assert body["touser"] == openid
    assert body["msgtype"] == "text"
    assert body["text"] == {"content": "Points doubled"}
    assert body["channel"] == "wechat"


def test_providers_are_webhook_channels() -> None:
    assert issubclass(SmsChannel, WebhookChannel)
    assert issubclass(WechatChannel, WebhookChannel)
    with pytest.raises(ValueError, match="http"):
        WebhookChannel("ftp://example.org", SECRET)
    with pytest.raises(ValueError, match="secret"):
        WebhookChannel("http://example.org", "")
