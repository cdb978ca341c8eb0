"""The `wechat` channel as WeChat Official Account (公众号) template messages, and the
access-token handling WeChat's APIs share (WeCom's in `wecom.py` builds on it).

Followed (WeChat Official Accounts Platform docs: "获取 Access token"
https://developers.weixin.qq.com/doc/offiaccount/Basic_Information/Get_access_token.html,
"模板消息接口" https://developers.weixin.qq.com/doc/offiaccount/Message_Management/Template_Message_Interface.html,
and the global return codes
https://developers.weixin.qq.com/doc/offiaccount/Getting_Started/Global_Return_Code.html):

- the token: `GET {base}/cgi-bin/token?grant_type=client_credential&appid=APPID&secret=SECRET`
  answers `{"access_token": …, "expires_in": 7200}` or `{"errcode": …, "errmsg": …}`. It is
  cached until shortly before `expires_in` runs out, and dropped and fetched again when a call
  answers 40001 (invalid credential), 40014 (invalid access_token) or 42001 (expired). WeChat
  keeps the previous token valid for a short while after a new one is issued;
- the send: `POST {base}/cgi-bin/message/template/send?access_token=TOKEN` with JSON
  `{"touser": openid, "template_id": …, "url": …, "data": {"<key>": {"value": …}}}`, answered
  `{"errcode": 0, "errmsg": "ok", "msgid": 200228332}`; `msgid` is the provider id;
- errors come as HTTP 200 with a non-zero `errcode`. Transient: -1 (system busy), 45009
  (daily API quota reached), 45011 (API minute-quota); any 5xx. Permanent: 43004 (the user
  does not follow the account), 40003 (invalid openid), 40037 (invalid template_id), 43101
  (the user refused the message), 40013/40125 (invalid appid/secret), 40164 (caller IP not
  on the allow-list), and any other code.

The message's text fills the template field `template_field` (default `content`); the message
`data` may add fields as `wechat_template_data: {key: value}` and choose another template with
`wechat_template_id` or link with `wechat_url`.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import Any

import httpx

from activities.channels.base import OutgoingMessage, PermanentSendError, SendResult
from activities.channels.provider import (
    AccessToken,
    ProviderChannel,
    ProviderPermanentError,
    ProviderTransientError,
    check_base_url,
    json_object,
    retry_after,
)
from activities.channels.webhook import OPENID

WECHAT_API = "https://api.weixin.qq.com"
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
TRANSIENT_ERRORS = frozenset({-1, 45009, 45011})
MAX_VALUE_CHARS = 200


class WeixinApiChannel(ProviderChannel):
    """A channel of a WeChat-family API: an access token in the query string, JSON bodies,
    and `errcode` answers. Subclasses give the token request, the send URL and the body."""

    token_errors: frozenset[int] = TOKEN_ERRORS
    transient_errors: frozenset[int] = TRANSIENT_ERRORS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens = AccessToken()

    # --- what subclasses give ---------------------------------------------------------

    @abstractmethod
    def token_request(self) -> tuple[str, dict[str, str]]:
        """URL and query parameters of the token request."""

    @abstractmethod
    def send_url(self) -> str:
        """The send endpoint (the access token is added to its query)."""

    @abstractmethod
    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        """The JSON body that sends `msg`."""

    def accepted(self, answer: dict[str, object], msg: OutgoingMessage) -> SendResult:
        """The result of an answer with errcode 0 (or raise, for a refusal hidden in it)."""
        msgid = answer.get("msgid")
        ident = str(msgid) if isinstance(msgid, int | str) and msgid != "" else msg.dedupe_key
        return SendResult(provider_message_id=ident, detail={"errcode": 0})

    # --- the exchange -----------------------------------------------------------------

    def _failure(
        self, what: str, status: int, answer: dict[str, object] | None, response: httpx.Response
    ) -> Exception:
        errcode = answer.get("errcode") if answer else None
        errmsg = answer.get("errmsg") if answer else response.text[:200]
        text = f"{self.provider} {what}: HTTP {status}, errcode {errcode}: {errmsg}"
        code = errcode if isinstance(errcode, int) else status
        if status >= 500 or status == 429 or errcode in self.transient_errors:
            return ProviderTransientError(
                text, provider=self.provider, code=code, retry_after=retry_after(response)
            )
        return ProviderPermanentError(text, provider=self.provider, code=code)

    async def _fetch_token(self, client: httpx.AsyncClient) -> tuple[str, float]:
        url, params = self.token_request()
        response = await client.get(url, params=params, timeout=self.timeout)
        answer = json_object(response)
        token = answer.get("access_token") if answer else None
        if response.status_code == 200 and isinstance(token, str) and token:
            expires_in = answer.get("expires_in") if answer else None
            seconds = float(expires_in) if isinstance(expires_in, int | float) else 7200.0
            return token, max(1.0, seconds)
        raise self._failure("token request refused", response.status_code, answer, response)

    async def attempt(self, client: httpx.AsyncClient, msg: OutgoingMessage) -> SendResult:
        content = json.dumps(self.body(msg), ensure_ascii=False).encode("utf-8")
        for round_ in (1, 2):
            token = await self.tokens.get(lambda: self._fetch_token(client))
            response = await client.post(
                self.send_url(),
                params={"access_token": token},
                content=content,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "crmflow",
                },
                timeout=self.timeout,
            )
            answer = json_object(response)
            errcode = answer.get("errcode") if answer else None
            if response.status_code == 200 and answer is not None and errcode in (0, None):
                result = self.accepted(answer, msg)
                result.detail["token_refreshed"] = round_ == 2
                return result
            if errcode in self.token_errors:
                self.tokens.invalidate(token)
                if round_ == 1:
                    continue  # fetch a new token and send again, once
                raise ProviderTransientError(
                    f"{self.provider} refused a fresh access token too (errcode {errcode})",
                    provider=self.provider,
                    code=errcode if isinstance(errcode, int) else None,
                )
            raise self._failure("send refused", response.status_code, answer, response)
        raise AssertionError("unreachable")


class WechatOfficialAccountChannel(WeixinApiChannel):
    """WeChat template messages from an Official Account to its followers (by openid)."""

    name = "wechat"
    provider = "wechat_oa"

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        template_id: str,
        *,
        template_field: str = "content",
        url: str | None = None,
        base_url: str = WECHAT_API,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (app_id and app_secret and template_id):
            raise ValueError("a WeChat official account needs an appid, a secret and a template")
        self.app_id = app_id
        self._app_secret = app_secret
        self.template_id = template_id
        self.template_field = template_field
        self.link = url
        self.base_url = check_base_url(base_url)

    def __repr__(self) -> str:  # never the AppSecret
        return f"WechatOfficialAccountChannel(app_id={self.app_id!r})"

    def token_request(self) -> tuple[str, dict[str, str]]:
        return f"{self.base_url}/cgi-bin/token", {
            "grant_type": "client_credential",
            "appid": self.app_id,
            "secret": self._app_secret,
        }

    def send_url(self) -> str:
        return f"{self.base_url}/cgi-bin/message/template/send"

    def validate(self, msg: OutgoingMessage) -> None:
        if not OPENID.match(msg.to or ""):
            raise PermanentSendError(f"wechat needs a follower's openid, got {msg.to!r}")
        extra = msg.data.get("wechat_template_data", {})
        if not isinstance(extra, dict):
            raise PermanentSendError("wechat_template_data must be a mapping of field to value")
        if not (msg.text or "").strip() and not extra:
            raise PermanentSendError("wechat needs a text body or template data")
        for key, value in self._fields(msg).items():
            if len(value) > MAX_VALUE_CHARS:
                raise PermanentSendError(
                    f"wechat template field {key!r} is {len(value)} characters; "
                    f"the most is {MAX_VALUE_CHARS}"
                )

    def _fields(self, msg: OutgoingMessage) -> dict[str, str]:
        fields: dict[str, str] = {}
        if (msg.text or "").strip():
            fields[self.template_field] = msg.text or ""
        extra = msg.data.get("wechat_template_data", {})
        if isinstance(extra, dict):
            for key, value in extra.items():
                raw = value.get("value") if isinstance(value, dict) else value
                fields[str(key)] = "" if raw is None else str(raw)
        return fields

    def body(self, msg: OutgoingMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "touser": msg.to,
            "template_id": str(msg.data.get("wechat_template_id") or self.template_id),
            "data": {key: {"value": value} for key, value in self._fields(msg).items()},
        }
        link = msg.data.get("wechat_url") or self.link
        if link:
            body["url"] = str(link)
        return body
