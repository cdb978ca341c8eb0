"""The `webhook` channel — and `sms` and `wechat`, which are webhook-style providers.

Each message is one JSON POST. The receiver can check where it came from and reject replays:

- `X-Crmflow-Timestamp`: Unix seconds when this attempt was signed;
- `X-Crmflow-Signature`: `sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>" under the secret>`;
- `Idempotency-Key`: the message's dedupe key, the same on every attempt and every resend, so
  the receiver can drop duplicates.

`verify()` is the receiver's side of the signature. Within one `send`, transient failures
(connection errors, timeouts, 408, 429, 5xx) are retried with exponential back-off; when the
attempts run out the send raises TransientSendError and the Temporal activity retries later.
Any other 4xx (or a 3xx: the URL is wrong) raises PermanentSendError.

`SmsChannel` and `WechatChannel` are the same transport with their own address check and
payload (override `validate` and `payload` for another provider).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from typing import Any

import httpx

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
)
from activities.channels.provider import check_e164
from activities.channels.provider import retry_after as retry_after_of

TIMESTAMP_HEADER = "X-Crmflow-Timestamp"
SIGNATURE_HEADER = "X-Crmflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_DELAY_SECONDS = 30.0
# Response fields taken as the provider's own id for the message, in this order.
PROVIDER_ID_FIELDS = ("message_id", "id", "msgid", "sid")


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the signing secret is empty")
    return key


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The `X-Crmflow-Signature` value: `sha256=` and the hex HMAC of `timestamp.body`."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str | bytes,
    timestamp: int | str,
    body: bytes,
    signature: str,
    tolerance: float = 300.0,
    *,
    now: float | None = None,
) -> bool:
    """True if `signature` signs `body` at `timestamp` and the timestamp is within `tolerance`
    seconds of now (either side), which bounds how long a captured request can be replayed."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature.strip())


def encode_body(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode(
        "utf-8"
    )


class WebhookChannel:
    """HTTP POST of a signed JSON body, retried with exponential back-off within one send.

    Pass a shared `client` (an httpx.AsyncClient) to reuse connections; without one each send
    opens its own client and closes it when done.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        attempts: int = 3,
        base_delay: float = 0.5,
        max_delay: float = MAX_DELAY_SECONDS,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
        name: str | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        self.url = url
        self.secret = _key(secret)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.client = client
        if name is not None:
            self.name = name

    # --- what providers override -------------------------------------------------------

    def validate(self, msg: OutgoingMessage) -> None:
        """Raise PermanentSendError for a message this provider can never deliver."""

    def payload(self, msg: OutgoingMessage) -> dict[str, Any]:
        """The JSON body: the whole message."""
        return {
            "dedupe_key": msg.dedupe_key,
            "customer_id": msg.customer_id,
            "channel": msg.channel,
            "to": msg.to,
            "subject": msg.subject,
            "text": msg.text,
            "html": msg.html,
            "headers": dict(msg.headers),
            "unsubscribe_url": msg.unsubscribe_url,
            "data": dict(msg.data),
        }

    def provider_id(self, response: httpx.Response, msg: OutgoingMessage) -> str:
        """The receiver's id for the message if its JSON answer has one, else the dedupe key."""
        try:
            answer = response.json()
        except ValueError:
            return msg.dedupe_key
        if isinstance(answer, dict):
            for field in PROVIDER_ID_FIELDS:
                value = answer.get(field)
                if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
                    return str(value)
        return msg.dedupe_key

    # --- the transport ------------------------------------------------------------------

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based): base, 2x base, 4x base..."""
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def headers(self, msg: OutgoingMessage, body: bytes) -> dict[str, str]:
        ts = str(int(time.time()))
        return {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "crmflow",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self.secret, ts, body),
            IDEMPOTENCY_HEADER: msg.dedupe_key,
        }

    async def send(self, msg: OutgoingMessage) -> SendResult:
        self.validate(msg)
        try:
            body = encode_body(self.payload(msg))
        except (TypeError, ValueError) as exc:
            raise PermanentSendError(f"message data is not JSON: {exc}") from exc
        if self.client is not None:
            return await self._send(self.client, msg, body)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await self._send(client, msg, body)

    async def _send(
        self, client: httpx.AsyncClient, msg: OutgoingMessage, body: bytes
    ) -> SendResult:
        failure = ""
        retry_after: float | None = None
        for attempt in range(1, self.attempts + 1):
            retry_after = None
            try:
                # Signed per attempt: the timestamp is fresh, the Idempotency-Key is not.
                response = await client.post(
                    self.url, content=body, headers=self.headers(msg, body), timeout=self.timeout
                )
            except httpx.TransportError as exc:  # connect errors, timeouts, protocol errors
                failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return SendResult(
                        provider_message_id=self.provider_id(response, msg),
                        detail={"status": status, "attempts": attempt, "url": self.url},
                    )
                snippet = response.text[:200]
                if status in RETRYABLE_STATUS or status >= 500:
                    failure = f"HTTP {status}: {snippet}"
                    retry_after = retry_after_of(response)
                else:
                    raise PermanentSendError(
                        f"{self.name} {self.url} answered HTTP {status}: {snippet}"
                    )
            if attempt < self.attempts:
                delay = self.backoff(attempt)
                if retry_after is not None:
                    delay = min(self.max_delay, max(delay, retry_after))
                await asyncio.sleep(delay)
        raise TransientSendError(
            f"{self.name} {self.url} failed after {self.attempts} attempt(s): {failure}",
            retry_after=retry_after,
        )


class SmsChannel(WebhookChannel):
    """SMS through a provider (or relay) taking a signed JSON POST; `to` must be E.164.

    Body: `{"dedupe_key", "customer_id", "channel": "sms", "to": "+8613812345678",
    "text", "data"}`.
    """

    name = "sms"

    def validate(self, msg: OutgoingMessage) -> None:
        check_e164(msg)

    def payload(self, msg: OutgoingMessage) -> dict[str, Any]:
        return {
            "dedupe_key": msg.dedupe_key,
            "customer_id": msg.customer_id,
            "channel": "sms",
            "to": msg.to,
            "text": msg.text,
            "data": dict(msg.data),
        }


# WeChat openids are 28 characters today; accept the URL-safe alphabet at sane lengths.
OPENID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")


class WechatChannel(WebhookChannel):
    """WeChat (official account) messages through a relay taking a signed JSON POST.

    `to` is the follower's openid. Body: `{"dedupe_key", "customer_id", "channel": "wechat",
    "touser": openid, "msgtype": "text", "text": {"content": ...}, "data"}`; `data` carries
    anything else the relay needs (a template id and its fields, a mini-program page).
    """

    name = "wechat"

    def validate(self, msg: OutgoingMessage) -> None:
        if not OPENID.match(msg.to or ""):
            raise PermanentSendError(f"wechat needs an openid, got {msg.to!r}")
        if not (msg.text or "").strip() and not msg.data:
            raise PermanentSendError("wechat needs a text body or template data")

    def payload(self, msg: OutgoingMessage) -> dict[str, Any]:
        return {
            "dedupe_key": msg.dedupe_key,
            "customer_id": msg.customer_id,
            "channel": "wechat",
            "touser": msg.to,
            "msgtype": "text",
            "text": {"content": msg.text or ""},
            "data": dict(msg.data),
        }
