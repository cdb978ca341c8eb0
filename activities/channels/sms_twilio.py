"""The `sms` channel through Twilio's Programmable Messaging REST API.

Followed (Twilio docs, "Our API: the basics" https://www.twilio.com/docs/iam/api, the
Message resource https://www.twilio.com/docs/messaging/api/message-resource, and
"Twilio API responses" https://www.twilio.com/docs/usage/twilios-response):

- `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic authentication
  with the Account SID as user and the Auth Token as password;
- a form-encoded body: `To` (E.164), `Body`, and `From` (a Twilio number or alphanumeric
  sender id) or `MessagingServiceSid`;
- `201 Created` with the Message resource as JSON: its `sid` (`SM…`) is the provider id;
- errors as JSON `{"code": 21211, "message": …, "more_info": …, "status": 400}`
  (https://www.twilio.com/docs/api/errors). 429 (code 20429, too many requests) and 5xx are
  transient; 401 (20003, authentication) and the other 4xx (21211 invalid 'To' number,
  21610 unsubscribed recipient, 21614 not a mobile number, …) are permanent, but for the
  queue-full code 21611, which clears as the sender's queue drains.

A message body is at most 1,600 characters (the Message resource's `Body` limit).
"""

from __future__ import annotations

from typing import Any

import httpx

from activities.channels.base import OutgoingMessage, SendResult
from activities.channels.provider import (
    ProviderChannel,
    ProviderPermanentError,
    ProviderTransientError,
    check_base_url,
    check_e164,
    json_object,
    retry_after,
)

TWILIO_API = "https://api.twilio.com"
MAX_BODY_CHARS = 1600
# Twilio error codes that a later attempt can get past although the HTTP status is 4xx.
TRANSIENT_CODES = frozenset({20429, 21611})


class TwilioSmsChannel(ProviderChannel):
    """SMS via Twilio's Messages API. `sender` is a `From` number/sender id, or a Messaging
    Service SID (`MG…`), sent as `MessagingServiceSid`."""

    name = "sms"
    provider = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        sender: str,
        *,
        base_url: str = TWILIO_API,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not account_sid or not auth_token or not sender:
            raise ValueError("twilio needs an account SID, an auth token and a sender")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.sender = sender
        self.url = f"{check_base_url(base_url)}/2010-04-01/Accounts/{account_sid}/Messages.json"

    def __repr__(self) -> str:  # never the auth token
        return f"TwilioSmsChannel(account_sid={self.account_sid!r}, sender={self.sender!r})"

    def validate(self, msg: OutgoingMessage) -> None:
        check_e164(msg, max_chars=MAX_BODY_CHARS)

    def form(self, msg: OutgoingMessage) -> dict[str, str]:
        form = {"To": msg.to or "", "Body": msg.text or ""}
        if self.sender.startswith("MG"):
            form["MessagingServiceSid"] = self.sender
        else:
            form["From"] = self.sender
        return form

    async def attempt(self, client: httpx.AsyncClient, msg: OutgoingMessage) -> SendResult:
        response = await client.post(
            self.url,
            data=self.form(msg),
            auth=(self.account_sid, self._auth_token),
            headers={"Accept": "application/json", "User-Agent": "crmflow"},
            timeout=self.timeout,
        )
        status = response.status_code
        answer = json_object(response) or {}
        if 200 <= status < 300:
            sid = answer.get("sid")
            if not isinstance(sid, str) or not sid:
                raise ProviderTransientError(
                    f"twilio answered HTTP {status} without a message sid", provider="twilio"
                )
            return SendResult(
                provider_message_id=sid,
                detail={"status": status, "twilio_status": answer.get("status")},
            )
        code = answer.get("code")
        words = str(answer.get("message") or response.text[:200])
        text = f"twilio answered HTTP {status}, error {code}: {words}"
        if status == 429 or status >= 500 or code in TRANSIENT_CODES:
            raise ProviderTransientError(
                text,
                provider="twilio",
                code=code if isinstance(code, int) else status,
                retry_after=retry_after(response),
            )
        raise ProviderPermanentError(
            text, provider="twilio", code=code if isinstance(code, int) else status
        )
