"""Unsubscribe tokens: signed, URL-safe, tamper-evident."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from activities.channels.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeToken,
    make_unsubscribe_token,
    read_unsubscribe_token,
    unsubscribe_url,
)

SECRET = "unsub-secret-for-tests"
URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_round_trip() -> None:
    issued = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    token = make_unsubscribe_token(SECRET, "cust-42", "email", "welcome", issued_at=issued)
    assert set(token) <= URL_SAFE
    assert read_unsubscribe_token(SECRET, token) == UnsubscribeToken(
        customer_id="cust-42", channel="email", journey="welcome", issued_at=issued
    )


def test_round_trip_without_journey_and_with_unicode_ids() -> None:
    token = make_unsubscribe_token(SECRET, "客户/42?&=", "wechat")
    got = read_unsubscribe_token(SECRET, token)
    assert (got.customer_id, got.channel, got.journey) == ("客户/42?&=", "wechat", None)
    assert abs(got.issued_at.timestamp() - datetime.now(UTC).timestamp()) < 60


def _forge(token: str, **changes: object) -> str:
    payload, _, signature = token.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


def test_tampered_tokens_are_rejected() -> None:
    token = make_unsubscribe_token(SECRET, "cust-42", "email", "welcome")
    payload, _, signature = token.partition(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for bad in [
        _forge(token, c="cust-43"),  # someone else's customer id
        _forge(token, ch="sms"),
        payload + "." + flipped,
        payload + "." + signature[:-1],
        payload[:-1] + "." + signature,
        payload,
        "",
        "a.b",
        "ünicode.x",
    ]:
        with pytest.raises(InvalidUnsubscribeToken):
            read_unsubscribe_token(SECRET, bad)
    with pytest.raises(InvalidUnsubscribeToken, match="bad signature"):
        read_unsubscribe_token("another-secret", token)


def test_unsubscribe_url() -> None:
    token = make_unsubscribe_token(SECRET, "cust-42", "email")
    url = unsubscribe_url("https://crm.example.org/", token)
    assert url == f"https://crm.example.org/unsubscribe/{token}"
    last = urlsplit(url).path.rsplit("/", 1)[1]
    assert read_unsubscribe_token(SECRET, last).customer_id == "cust-42"


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        make_unsubscribe_token("", "cust-42", "email")
