"""What the direct provider channels (Twilio, Aliyun SMS, WeChat Official Account, WeCom)
share: errors that carry the provider's own code, the retry loop within one send, an
access-token cache, and the address checks.

Each provider module implements one `attempt` (one HTTP exchange, or a token refresh and the
exchange) that returns a SendResult or raises ProviderPermanentError / ProviderTransientError
with the provider's code. `ProviderChannel.send` retries transient failures with exponential
back-off (honouring a Retry-After the provider gave) up to `attempts`; after that the send
raises TransientSendError and the Temporal activity retries later. Connection errors and
timeouts are transient.

A timeout after the request was written is ambiguous: the provider may have accepted the
message. Neither Twilio's Messages API nor Aliyun's SendSms is idempotent (Aliyun says so in
its SendSms notes), so such a retry can send twice; the delivery ledger above the channel
still records one delivery per dedupe key. Credentials never appear in error messages.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime

import httpx
import phonenumbers

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
)

MAX_DELAY_SECONDS = 30.0


class ProviderPermanentError(PermanentSendError):
    """The provider refused for good (a bad number, an unsubscribed follower, bad credentials).
    `code` is the provider's error code as it gave it (`21211`, `isv.MOBILE_NUMBER_ILLEGAL`,
    `43004`), or an HTTP status when it gave none."""

    def __init__(self, message: str, *, provider: str, code: str | int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.code = None if code is None else str(code)


class ProviderTransientError(TransientSendError):
    """The provider may take it later (throttling, system busy, 5xx, a timeout)."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        code: str | int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.provider = provider
        self.code = None if code is None else str(code)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from an HTTP `Retry-After` header (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def json_object(response: httpx.Response) -> dict[str, object] | None:
    """The response's JSON object, or None when the body is not one."""
    try:
        answer = response.json()
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def check_e164(msg: OutgoingMessage, *, max_chars: int | None = None) -> str:
    """The message's `to` as a valid E.164 number; PermanentSendError otherwise, or when the
    text is empty or longer than `max_chars` (when given). Every SMS channel checks with it."""
    to = msg.to or ""
    try:
        number = phonenumbers.parse(to, None)
    except phonenumbers.NumberParseException as exc:
        raise PermanentSendError(f"sms needs an E.164 phone number, got {to!r}: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise PermanentSendError(f"{to!r} is not a valid phone number")
    if phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != to:
        raise PermanentSendError(f"{to!r} is not in E.164 form (+<country><number>)")
    text = msg.text or ""
    if not text.strip():
        raise PermanentSendError("sms needs a text body")
    if max_chars is not None and len(text) > max_chars:
        raise PermanentSendError(f"sms text is {len(text)} characters; the most is {max_chars}")
    return to


def check_base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url.rstrip("/")


class ProviderChannel(ABC):
    """A channel speaking one provider's HTTP API: `validate`, then `attempt` with retries.

    Pass a shared `client` (an httpx.AsyncClient) to reuse connections; without one each send
    opens its own client and closes it when done.
    """

    name = "provider"
    provider = "provider"

    def __init__(
        self,
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
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.client = client
        if name is not None:
            self.name = name

    def validate(self, msg: OutgoingMessage) -> None:
        """Raise PermanentSendError for a message this provider can never deliver (a
        provider that checks nothing before sending keeps this default)."""
        return None

    @abstractmethod
    async def attempt(self, client: httpx.AsyncClient, msg: OutgoingMessage) -> SendResult:
        """One request to the provider: its result, or a transient/permanent failure."""

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based): base, 2x base, 4x base..."""
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    async def send(self, msg: OutgoingMessage) -> SendResult:
        self.validate(msg)
        if self.client is not None:
            return await self._send(self.client, msg)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            return await self._send(client, msg)

    async def _send(self, client: httpx.AsyncClient, msg: OutgoingMessage) -> SendResult:
        last: ProviderTransientError | None = None
        for number in range(1, self.attempts + 1):
            try:
                result = await self.attempt(client, msg)
            except ProviderTransientError as exc:
                last = exc
            except httpx.TransportError as exc:  # connect errors, timeouts, protocol errors
                last = ProviderTransientError(
                    f"{type(exc).__name__}: {exc}".rstrip(": "),
                    provider=self.provider,
                    code=type(exc).__name__,
                )
            else:
                result.detail.setdefault("provider", self.provider)
                result.detail["attempts"] = number
                return result
            if number < self.attempts:
                delay = self.backoff(number)
                if last.retry_after is not None:
                    delay = min(self.max_delay, max(delay, last.retry_after))
                await asyncio.sleep(delay)
        assert last is not None
        raise ProviderTransientError(
            f"{self.name} via {self.provider} failed after {self.attempts} attempt(s): {last}",
            provider=self.provider,
            code=last.code,
            retry_after=last.retry_after,
        )


class AccessToken:
    """An access token cached until shortly before it expires, fetched by one caller at a
    time (the others wait for it), and dropped when the provider says it is invalid.

    `fetch` (given to `get`) returns (token, expires_in seconds). The token lives in this
    process only: each worker fetches its own (WeChat keeps the previous token valid for a
    few minutes after a new one is issued; WeCom returns the same token while it is valid).
    """

    def __init__(self) -> None:
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def get(self, fetch: Callable[[], Awaitable[tuple[str, float]]]) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._expires_at:
                return self._token
            token, expires_in = await fetch()
            self.fetches += 1
            # Refresh a little early: a quarter of the lifetime, at most five minutes.
            margin = min(300.0, expires_in / 4)
            self._token, self._expires_at = token, time.monotonic() + expires_in - margin
            return token

    def invalidate(self, token: str) -> None:
        """Forget `token` (the provider refused it); a newer token is kept."""
        if self._token == token:
            self._token, self._expires_at = None, 0.0
