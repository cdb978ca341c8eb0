"""Team chat for staff notices (reminders, escalations, lead SLA, digests): WeCom (企业微信)
group robots, DingTalk custom robots and Slack incoming webhooks, each configured by its
webhook URL (`CRMFLOW_WECOM_ROBOT_URL`, `CRMFLOW_DINGTALK_ROBOT_URL` with
`CRMFLOW_DINGTALK_ROBOT_SECRET`, `CRMFLOW_SLACK_WEBHOOK_URL`). The URLs carry the robot's key
or token: they are secrets, and no message, error or log line here contains them.

Followed, provider by provider:

- WeCom group robot ("群机器人配置说明",
  https://developer.work.weixin.qq.com/document/path/91770): `POST <url>` (…/cgi-bin/
  webhook/send?key=KEY) with JSON `{"msgtype": "text", "text": {"content": …}}`, content at
  most 2,048 bytes of UTF-8; answered `{"errcode": 0, "errmsg": "ok"}`. Transient: -1
  (system busy), 45009 (over 20 messages a minute), 5xx; permanent: 93000 (invalid webhook
  URL or key), 40008 (bad message type), 44004 (empty content) and any other code.
- DingTalk custom robot ("自定义机器人安全设置" and "自定义机器人发送群消息",
  https://open.dingtalk.com/document/robots/customize-robot-security-settings): `POST <url>`
  (…/robot/send?access_token=TOKEN), signed when a secret is set: `&timestamp=<ms>&sign=<s>`
  where s = urlencode(base64(HmacSHA256(key=secret, message="<timestamp>\\n<secret>"))); the
  timestamp must be within an hour of DingTalk's clock. JSON `{"msgtype": "text", "text":
  {"content": …}}`; answered `{"errcode": 0, "errmsg": "ok"}`. Transient: -1 (busy), 130101
  and 410100 (sending too fast, 20 a minute), 5xx; permanent: 310000 (signature, keyword or
  IP check failed), 300001 (no such token), 400102 (robot stopped) and any other code.
- Slack incoming webhook (https://api.slack.com/messaging/webhooks): `POST <url>` with JSON
  `{"text": …}` in mrkdwn, `&`, `<`, `>` escaped as Slack requires; answered HTTP 200 with the
  body `ok`. Transient: 429 (with Retry-After; about one message a second) and 5xx;
  permanent: 400 (invalid_payload, no_text), 403 (action_prohibited, invalid_token), 404
  (channel_not_found, no_service: the webhook was removed), 410 (channel_is_archived).

A notice longer than a robot takes is cut at the limit with a note saying so (the whole
notice stays in the outbox and the e-mail). Robots have no idempotency key: the caller keeps
a ledger so a retried activity does not post twice (`activities.staff_notices`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from abc import abstractmethod
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

from activities.channels.base import OutgoingMessage, PermanentSendError, SendResult
from activities.channels.provider import (
    ProviderChannel,
    ProviderPermanentError,
    ProviderTransientError,
    json_object,
    retry_after,
)
from crmflow.settings import Settings

WECOM_ROBOT, DINGTALK_ROBOT, SLACK = "wecom_robot", "dingtalk_robot", "slack"
TEAM_CHATS = (WECOM_ROBOT, DINGTALK_ROBOT, SLACK)  # channel names, also the outbox's
CUT_NOTE = "\n…(cut: the whole notice is in the outbox and the e-mail)"


def notice_text(subject: str, text: str) -> str:
    """What a chat shows: the subject, a blank line, the text."""
    return f"{subject}\n\n{text}".strip()


def cut_bytes(content: str, max_bytes: int) -> str:
    """`content` within `max_bytes` of UTF-8, cut at a character with `CUT_NOTE` when long."""
    if len(content.encode("utf-8")) <= max_bytes:
        return content
    room = max_bytes - len(CUT_NOTE.encode("utf-8"))
    cut = content.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return cut + CUT_NOTE


def _checked_url(url: str, setting: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # the value itself is a secret: say which setting, never what it holds
        raise ValueError(f"{setting} is not an http(s) URL")
    return url


class ChatRobot(ProviderChannel):
    """A team chat's webhook: one JSON POST per notice; the URL is the secret."""

    setting = ""
    transient_codes: frozenset[object] = frozenset()

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url = _checked_url(url, self.setting)

    def __repr__(self) -> str:  # never the URL: it holds the key
        return f"{type(self).__name__}()"

    def validate(self, msg: OutgoingMessage) -> None:
        if not notice_text(msg.subject or "", msg.text or ""):
            raise PermanentSendError(f"{self.name}: an empty notice")

    def url(self) -> str:
        return self._url

    @abstractmethod
    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        """The robot's JSON message for a notice."""

    async def attempt(self, client: httpx.AsyncClient, msg: OutgoingMessage) -> SendResult:
        try:
            response = await client.post(
                self.url(),
                json=self.body(msg),
                headers={"User-Agent": "crmflow"},
                timeout=self.timeout,
            )
        except httpx.TransportError as exc:  # its message could name the URL: only the kind
            raise ProviderTransientError(
                f"{self.name}: {type(exc).__name__}",
                provider=self.provider,
                code=type(exc).__name__,
            ) from None
        return self.answer(response)

    def answer(self, response: httpx.Response) -> SendResult:
        """WeCom and DingTalk: `errcode` 0 is accepted; others by their code."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise ProviderTransientError(
                f"{self.name} answered HTTP {status}",
                provider=self.provider,
                code=status,
                retry_after=retry_after(response),
            )
        answer = json_object(response)
        if status != 200 or answer is None:
            raise ProviderPermanentError(
                f"{self.name} answered HTTP {status} without an errcode",
                provider=self.provider,
                code=status,
            )
        code = answer.get("errcode")
        words = str(answer.get("errmsg") or "")[:200]
        if code == 0:
            return SendResult(provider_message_id=f"{self.name}:{int(time.time() * 1000)}")
        text = f"{self.name} refused the notice: errcode {code}: {words}"
        if code in self.transient_codes:
            raise ProviderTransientError(text, provider=self.provider, code=str(code))
        raise ProviderPermanentError(text, provider=self.provider, code=str(code))


class WecomRobot(ChatRobot):
    name = WECOM_ROBOT
    provider = "wecom"
    setting = "CRMFLOW_WECOM_ROBOT_URL"
    transient_codes = frozenset({-1, 45009})
    max_bytes = 2048

    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        content = cut_bytes(notice_text(msg.subject or "", msg.text or ""), self.max_bytes)
        return {"msgtype": "text", "text": {"content": content}}


def dingtalk_sign(timestamp_ms: int, secret: str) -> str:
    """DingTalk's signature: base64(HmacSHA256(secret, "<timestamp>\\n<secret>")), not yet
    URL-encoded."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingtalkRobot(ChatRobot):
    name = DINGTALK_ROBOT
    provider = "dingtalk"
    setting = "CRMFLOW_DINGTALK_ROBOT_URL"
    transient_codes = frozenset({-1, 130101, 410100})
    max_bytes = 20_000

    def __init__(self, url: str, secret: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._secret = secret or None

    def url(self) -> str:
        if self._secret is None:
            return self._url
        now = int(time.time() * 1000)
        sign = quote_plus(dingtalk_sign(now, self._secret))
        joiner = "&" if urlsplit(self._url).query else "?"
        return f"{self._url}{joiner}timestamp={now}&sign={sign}"

    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        content = cut_bytes(notice_text(msg.subject or "", msg.text or ""), self.max_bytes)
        return {"msgtype": "text", "text": {"content": content}}


def slack_escape(text: str) -> str:
    """The three characters Slack's mrkdwn wants escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackWebhook(ChatRobot):
    name = SLACK
    provider = "slack"
    setting = "CRMFLOW_SLACK_WEBHOOK_URL"
    max_bytes = 12_000  # Slack truncates text past 40,000 characters; keep notices readable

    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        subject = slack_escape(msg.subject or "")
        text = slack_escape(msg.text or "")
        content = f"*{subject}*\n\n{text}" if subject else text
        return {"text": cut_bytes(content.strip(), self.max_bytes)}

    def answer(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        words = response.text[:100].strip()
        if status == 200 and words == "ok":
            return SendResult(provider_message_id=f"{self.name}:{int(time.time() * 1000)}")
        text = f"slack answered HTTP {status}: {words or 'no reason given'}"
        if status == 429 or status >= 500:
            raise ProviderTransientError(
                text, provider="slack", code=status, retry_after=retry_after(response)
            )
        raise ProviderPermanentError(text, provider="slack", code=words or status)


def team_chats(settings: Settings) -> dict[str, ChatRobot]:
    """The team chats the settings configure, by channel name (none by default). A DingTalk
    secret without its URL is refused, naming the setting, so a worker does not start with
    the robot silently off."""
    http = {
        "attempts": settings.channel_retry_attempts,
        "base_delay": settings.channel_retry_base_seconds,
        "timeout": settings.channel_http_timeout_seconds,
    }
    chats: dict[str, ChatRobot] = {}
    if settings.wecom_robot_url is not None:
        chats[WECOM_ROBOT] = WecomRobot(settings.wecom_robot_url.get_secret_value(), **http)
    secret = settings.dingtalk_robot_secret
    if settings.dingtalk_robot_url is not None:
        chats[DINGTALK_ROBOT] = DingtalkRobot(
            settings.dingtalk_robot_url.get_secret_value(),
            secret.get_secret_value() if secret is not None else None,
            **http,
        )
    elif secret is not None:
        raise ValueError(
            "CRMFLOW_DINGTALK_ROBOT_SECRET is set but CRMFLOW_DINGTALK_ROBOT_URL is not"
        )
    if settings.slack_webhook_url is not None:
        chats[SLACK] = SlackWebhook(settings.slack_webhook_url.get_secret_value(), **http)
    return chats
