"""The `wechat` channel as WeCom (企业微信) application messages to a member of the company.

Followed (WeCom developer docs: "获取access_token"
https://developer.work.weixin.qq.com/document/path/91039, "发送应用消息"
https://developer.work.weixin.qq.com/document/path/90236, and the global error codes
https://developer.work.weixin.qq.com/document/path/90313):

- the token: `GET {base}/cgi-bin/gettoken?corpid=ID&corpsecret=SECRET` answers
  `{"errcode": 0, "errmsg": "ok", "access_token": …, "expires_in": 7200}`; while a token is
  valid, asking again returns the same one. It is cached until shortly before it expires and
  fetched again when a call answers 40014 (invalid access_token), 42001 (expired) or 40082;
- the send: `POST {base}/cgi-bin/message/send?access_token=TOKEN` with JSON `{"touser": userid,
  "msgtype": "text", "agentid": N, "text": {"content": …}, "enable_duplicate_check": 1,
  "duplicate_check_interval": 1800}` (WeCom drops the same request repeated within the
  interval, which makes a retried send safe); answered `{"errcode": 0, "errmsg": "ok",
  "invaliduser": "", "msgid": …}`; `msgid` is the provider id. A userid listed in
  `invaliduser` with errcode 0 was not sent to: permanent;
- errors: -1 (system busy), 45009 (API frequency limit), 45033 (concurrency limit) and 5xx are
  transient; 81013 (every recipient invalid or outside the app's visible range), 40001 (invalid
  secret), 40013 (invalid corpid), 40056 (invalid agentid), 301002 (cannot send to that user)
  and any other code are permanent.

`to` is the member's WeCom userid. Text content is at most 2,048 bytes.
"""

from __future__ import annotations

import re
from typing import Any

from activities.channels.base import OutgoingMessage, PermanentSendError, SendResult
from activities.channels.provider import ProviderPermanentError, check_base_url
from activities.channels.wechat_oa import WeixinApiChannel

WECOM_API = "https://qyapi.weixin.qq.com"
MAX_CONTENT_BYTES = 2048
USERID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
DUPLICATE_CHECK_SECONDS = 1800


class WecomChannel(WeixinApiChannel):
    """WeCom application (自建应用) text messages to one member by userid."""

    name = "wechat"
    provider = "wecom"
    token_errors = frozenset({40014, 42001, 40082})
    transient_errors = frozenset({-1, 45009, 45033})

    def __init__(
        self,
        corp_id: str,
        corp_secret: str,
        agent_id: int,
        *,
        base_url: str = WECOM_API,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (corp_id and corp_secret):
            raise ValueError("WeCom needs a corpid and the application's secret")
        self.corp_id = corp_id
        self._corp_secret = corp_secret
        self.agent_id = int(agent_id)
        self.base_url = check_base_url(base_url)

    def __repr__(self) -> str:  # never the secret
        return f"WecomChannel(corp_id={self.corp_id!r}, agent_id={self.agent_id})"

    def token_request(self) -> tuple[str, dict[str, str]]:
        return f"{self.base_url}/cgi-bin/gettoken", {
            "corpid": self.corp_id,
            "corpsecret": self._corp_secret,
        }

    def send_url(self) -> str:
        return f"{self.base_url}/cgi-bin/message/send"

    def validate(self, msg: OutgoingMessage) -> None:
        if not USERID.match(msg.to or ""):
            raise PermanentSendError(f"wecom needs a member's userid, got {msg.to!r}")
        text = msg.text or ""
        if not text.strip():
            raise PermanentSendError("wecom needs a text body")
        size = len(text.encode("utf-8"))
        if size > MAX_CONTENT_BYTES:
            raise PermanentSendError(f"wecom text is {size} bytes; the most is {MAX_CONTENT_BYTES}")

    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        return {
            "touser": msg.to,
            "msgtype": "text",
            "agentid": self.agent_id,
            "text": {"content": msg.text or ""},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": DUPLICATE_CHECK_SECONDS,
        }

    def accepted(self, answer: dict[str, object], msg: OutgoingMessage) -> SendResult:
        invalid = str(answer.get("invaliduser") or "")
        # WeCom lower-cases the userids it returns.
        if (msg.to or "").lower() in {u.lower() for u in invalid.split("|") if u}:
            raise ProviderPermanentError(
                "wecom did not send: the userid is invalid or outside the app's visible range",
                provider=self.provider,
                code="invaliduser",
            )
        return super().accepted(answer, msg)
