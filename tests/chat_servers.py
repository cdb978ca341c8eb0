"""Stand-ins for the team chats' webhooks: real HTTP servers on 127.0.0.1 that check each
request the way the provider documents it and answer as it does.

- `WecomRobotServer`: WeCom group robot, `POST /cgi-bin/webhook/send?key=KEY`, JSON with
  `msgtype` and its object; `{"errcode": 0, "errmsg": "ok"}`, 93000 for a wrong key, 44004
  for empty content, 40058 for content over 2,048 bytes, 45009 past 20 messages a minute.
- `DingtalkRobotServer`: DingTalk custom robot, `POST /robot/send?access_token=T`, and with a
  secret `&timestamp=<ms>&sign=<urlencoded base64 HmacSHA256("<ts>\\n<secret>")>` recomputed
  here from the secret (310000 when it does not match or the timestamp is over an hour
  off), 300001 for a wrong token, 130101 past 20 messages a minute.
- `SlackWebhookServer`: Slack incoming webhook, `POST /services/T…/B…/X…` with JSON `{"text"}`;
  HTTP 200 `ok`, 400 `invalid_payload` / `no_text`, 404 `no_service` for a wrong path.

Each records every request (`requests`) and every message it accepted (`delivered`);
`script` holds answers (status, body, headers) given, one per request, to requests that
pass every check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from abc import abstractmethod
from typing import Any

from tests.provider_servers import ProviderRequest, StandIn

Reply = tuple[int, str, dict[str, str]]  # status, body (JSON or text), extra headers


ChatRequest = ProviderRequest


def errcode(code: int, message: str) -> Reply:
    return 200, json.dumps({"errcode": code, "errmsg": message}), {}


class ChatServer(StandIn):
    """A chat robot's stand-in: `handle` checks a POST as the provider would; its own limit
    of `per_minute` messages accepted."""

    content_type = "application/json; charset=utf-8"
    per_minute = 20
    script: list[Reply]

    def __init__(self) -> None:
        super().__init__()
        self._accepted_at: list[float] = []

    def scripted(self) -> Reply | None:
        reply: Reply | None = super().scripted()
        return reply

    def over_rate(self) -> bool:
        """More than `per_minute` messages accepted in the last minute (the robots' limit)."""
        now = time.monotonic()
        with self.lock:
            self._accepted_at = [t for t in self._accepted_at if now - t < 60]
            return len(self._accepted_at) >= self.per_minute

    def accept(self, message: dict[str, Any]) -> None:
        with self.lock:
            self._accepted_at.append(time.monotonic())
            self.delivered.append(message)

    @staticmethod
    def json_body(req: ChatRequest) -> dict[str, Any] | None:
        if not req.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    @abstractmethod
    def handle(self, req: ChatRequest) -> Reply: ...

    def reply(self, req: ChatRequest) -> tuple[int, bytes, str, dict[str, str]]:
        status, text, headers = (
            self.handle(req) if req.method == "POST" else (405, "method not allowed", {})
        )
        return status, text.encode("utf-8"), self.content_type, headers


class WecomRobotServer(ChatServer):
    """WeCom group robot (https://developer.work.weixin.qq.com/document/path/91770)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    @property
    def url(self) -> str:
        return f"{self.base}/cgi-bin/webhook/send?key={self.key}"

    def handle(self, req: ChatRequest) -> Reply:
        if req.path != "/cgi-bin/webhook/send" or req.query.get("key") != self.key:
            return errcode(93000, "invalid webhook url, hint: [1] from ip: 127.0.0.1")
        body = self.json_body(req)
        if body is None:
            return errcode(40008, "invalid message type")
        kind = body.get("msgtype")
        if kind not in ("text", "markdown", "image", "news", "file", "template_card"):
            return errcode(40008, "invalid message type")
        part = body.get(kind)
        content = part.get("content") if isinstance(part, dict) else None
        if kind in ("text", "markdown"):
            if not isinstance(content, str) or not content:
                return errcode(44004, "empty content")
            limit = 2048 if kind == "text" else 4096
            if len(content.encode("utf-8")) > limit:
                return errcode(40058, f"content exceed max length {limit}")
        if self.over_rate():
            return errcode(45009, "api freq out of limit")
        if (answer := self.scripted()) is not None:
            return answer
        self.accept(body)
        return errcode(0, "ok")


def dingtalk_expected_sign(timestamp: str, secret: str) -> str:
    """The signature as DingTalk's own Python sample computes it (before URL-encoding)."""
    string_to_sign = f"{timestamp}\n{secret}"
    hmac_code = hmac.new(
        secret.encode("utf-8"), string_to_sign.encode("utf-8"), digestmod=hashlib.sha256
    ).digest()
    return base64.b64encode(hmac_code).decode("utf-8")


class DingtalkRobotServer(ChatServer):
    """DingTalk custom robot
    (https://open.dingtalk.com/document/robots/customize-robot-security-settings)."""

    def __init__(self, token: str, secret: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.secret = secret

    @property
    def url(self) -> str:
        return f"{self.base}/robot/send?access_token={self.token}"

    def handle(self, req: ChatRequest) -> Reply:
        if req.path != "/robot/send" or req.query.get("access_token") != self.token:
            return errcode(300001, "token is not exist")
        if self.secret is not None:
            timestamp, sign = req.query.get("timestamp", ""), req.query.get("sign", "")
            if not timestamp.isdigit():
                return errcode(310000, "sign not match, more: missing timestamp")
            if abs(int(timestamp) - time.time() * 1000) > 3600 * 1000:
                return errcode(310000, "invalid timestamp")
            # parse_qs URL-decodes: a sign sent without encoding ('+' as such) arrives with
            # spaces and does not match, as at DingTalk
            if not hmac.compare_digest(sign, dingtalk_expected_sign(timestamp, self.secret)):
                return errcode(310000, "sign not match")
        body = self.json_body(req)
        if body is None or body.get("msgtype") not in ("text", "markdown", "link", "actionCard"):
            return errcode(40035, "缺少参数 msgtype")
        part = body.get(body["msgtype"])
        field = "content" if body["msgtype"] == "text" else "text"
        if not isinstance(part, dict) or not part.get(field):
            return errcode(40035, f"缺少参数 {field}")
        if self.over_rate():
            return errcode(130101, "send too fast, exceed 20 times per minute")
        if (answer := self.scripted()) is not None:
            return answer
        self.accept(body)
        return errcode(0, "ok")


class SlackWebhookServer(ChatServer):
    """Slack incoming webhook (https://api.slack.com/messaging/webhooks)."""

    content_type = "text/plain; charset=utf-8"
    per_minute = 60

    def __init__(self, path: str = "/services/T0001/B0001/slack-test-token-000000000001") -> None:
        super().__init__()
        self.path = path

    @property
    def url(self) -> str:
        return f"{self.base}{self.path}"

    def handle(self, req: ChatRequest) -> Reply:
        if req.path != self.path:
            return 404, "no_service", {}
        body = self.json_body(req)
        if body is None:
            return 400, "invalid_payload", {}
        text = body.get("text")
        if (not isinstance(text, str) or not text.strip()) and not body.get("blocks"):
            return 400, "no_text", {}
        if self.over_rate():
            return 429, "rate_limited", {"Retry-After": "1"}
        if (answer := self.scripted()) is not None:
            return answer
        self.accept(body)
        return 200, "ok", {}
