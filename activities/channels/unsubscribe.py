"""Unsubscribe tokens: who, which channel, which journey, signed so they cannot be forged.

A token is `<payload>.<signature>`, both base64url without padding: the payload is compact
JSON `{"v": 1, "c": customer_id, "ch": channel, "j": journey, "iat": epoch seconds}`, the
signature an HMAC-SHA256 of the payload text under the secret. Tokens do not expire (a link
in a year-old e-mail must still work); the issue time is there for audit and for revoking
links issued before a date. Changing the secret invalidates every link already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

_VERSION = 1
# Domain separation: the same secret used for something else never yields a valid token.
_CONTEXT = b"crmflow-unsubscribe-v1."


class InvalidUnsubscribeToken(ValueError):
    """The token is malformed, was altered, or was signed with another secret."""


@dataclass(frozen=True)
class UnsubscribeToken:
    customer_id: str
    channel: str
    journey: str | None
    issued_at: datetime


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the unsubscribe secret is empty")
    return key


def _sign(secret: str | bytes, payload: str) -> str:
    mac = hmac.new(_key(secret), _CONTEXT + payload.encode("ascii"), hashlib.sha256)
    return _b64(mac.digest())


def make_unsubscribe_token(
    secret: str | bytes,
    customer_id: str,
    channel: str,
    journey: str | None = None,
    *,
    issued_at: datetime | None = None,
) -> str:
    """A URL-safe token naming the customer, the channel and (optionally) the journey."""
    if not customer_id or not channel:
        raise ValueError("customer_id and channel are required")
    iat = int(issued_at.timestamp()) if issued_at is not None else int(time.time())
    body: dict[str, object] = {"v": _VERSION, "c": customer_id, "ch": channel, "iat": iat}
    if journey is not None:
        body["j"] = journey
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return f"{payload}.{_sign(secret, payload)}"


def read_unsubscribe_token(secret: str | bytes, token: str) -> UnsubscribeToken:
    """The token's content, or InvalidUnsubscribeToken if it is not one this secret signed."""
    payload, sep, signature = token.strip().partition(".")
    if not sep or not payload or not signature:
        raise InvalidUnsubscribeToken("not an unsubscribe token")
    try:
        payload.encode("ascii")
    except UnicodeEncodeError as exc:
        raise InvalidUnsubscribeToken("not an unsubscribe token") from exc
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise InvalidUnsubscribeToken("bad signature: the token was altered or not issued here")
    try:
        body = json.loads(_unb64(payload))
        if body.get("v") != _VERSION:
            raise InvalidUnsubscribeToken(f"unknown token version {body.get('v')!r}")
        customer_id, channel, iat = body["c"], body["ch"], body["iat"]
        journey = body.get("j")
        if not (isinstance(customer_id, str) and isinstance(channel, str)):
            raise InvalidUnsubscribeToken("token fields have the wrong type")
        if not isinstance(iat, int) or (journey is not None and not isinstance(journey, str)):
            raise InvalidUnsubscribeToken("token fields have the wrong type")
    except (binascii.Error, ValueError, KeyError, AttributeError) as exc:
        if isinstance(exc, InvalidUnsubscribeToken):
            raise
        raise InvalidUnsubscribeToken("malformed token payload") from exc
    return UnsubscribeToken(
        customer_id=customer_id,
        channel=channel,
        journey=journey,
        issued_at=datetime.fromtimestamp(iat, UTC),
    )


def unsubscribe_url(base_url: str, token: str) -> str:
    """The link to put in a message: `<base_url>/unsubscribe/<token>`.

    The same URL takes a GET (a page asking to confirm) and the RFC 8058 one-click POST
    (`List-Unsubscribe=One-Click`).
    """
    return f"{base_url.rstrip('/')}/unsubscribe/{quote(token, safe='')}"
