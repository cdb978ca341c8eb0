"""Stand-ins for the SMS and WeChat providers: real HTTP servers on 127.0.0.1 that check each
request the way the provider documents it (authentication, signature, parameters, tokens)
and answer as the provider does, or with errors a test asks for.

- `TwilioServer`: Messages API, HTTP Basic auth (Account SID : Auth Token), form fields.
- `AliyunSmsServer`: dysmsapi SendSms, the RPC signature recomputed from the request.
- `WechatOAServer`: access tokens issued and checked (expiry included), template messages.
- `WecomServer`: WeCom access tokens and application messages (with duplicate checking).

Each records every request (`requests`) and every message it accepted (`delivered`).
`script` holds answers (HTTP status, JSON) given, one per request, to the sends that pass
every check, before they are accepted; `delay` makes every answer slow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, quote_plus, urlsplit

Answer = tuple[int, dict[str, Any]]


@dataclass
class ProviderRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    raw_query: str = ""

    def form(self) -> dict[str, str]:
        return _single(parse_qs(self.body.decode("utf-8"), keep_blank_values=True))

    def json(self) -> Any:
        return json.loads(self.body)


def _single(values: dict[str, list[str]]) -> dict[str, str]:
    """A parsed query as one value per name; a repeated name keeps its first value."""
    return {k: v[0] for k, v in values.items()}


class StandIn(ABC):
    """A threaded HTTP server on 127.0.0.1 that records each request and answers it with
    `reply` (after `delay` seconds); `script` holds answers a subclass gives first."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.script: list[Any] = []
        self.requests: list[ProviderRequest] = []
        self.delivered: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def scripted(self) -> Any | None:
        """The next scripted answer, if any (taken under the lock)."""
        with self.lock:
            return self.script.pop(0) if self.script else None

    @abstractmethod
    def reply(self, req: ProviderRequest) -> tuple[int, bytes, str, dict[str, str]]:
        """Status, body, content type and headers for one request."""

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                req = ProviderRequest(
                    method=self.command,
                    path=parts.path,
                    query=_single(parse_qs(parts.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    raw_query=parts.query,
                )
                with server.lock:
                    server.requests.append(req)
                status, out, content_type, headers = server.reply(req)
                if server.delay:
                    time.sleep(server.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(out)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class ProviderServer(StandIn):
    """A provider's stand-in: `handle` checks a request as the provider would and gives its
    JSON answer."""

    script: list[Answer]

    @property
    def url(self) -> str:
        return self.base

    def scripted(self) -> Answer | None:
        answer: Answer | None = super().scripted()
        return answer

    @abstractmethod
    def handle(self, req: ProviderRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Status, JSON answer and headers for one request, checked as the provider would."""

    def reply(self, req: ProviderRequest) -> tuple[int, bytes, str, dict[str, str]]:
        status, answer, headers = self.handle(req)
        out = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        return status, out, "application/json; charset=utf-8", headers


# --- Twilio ---------------------------------------------------------------------------

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def twilio_error(
    status: int, code: int, message: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Twilio's documented error body."""
    return (
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        {},
    )


class TwilioServer(ProviderServer):
    """Twilio's `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`."""

    def __init__(self, account_sid: str, auth_token: str, senders: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.account_sid, self.auth_token, self.senders = account_sid, auth_token, senders

    def _authenticated(self, req: ProviderRequest) -> bool:
        header = req.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self.auth_token
        )

    def handle(self, req: ProviderRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        match = re.fullmatch(r"/2010-04-01/Accounts/([^/]+)/Messages\.json", req.path)
        if req.method != "POST" or match is None:
            return twilio_error(404, 20404, "The requested resource was not found")
        if not self._authenticated(req) or match.group(1) != self.account_sid:
            return twilio_error(401, 20003, "Authenticate")
        if not req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return twilio_error(400, 20001, "form-encoded parameters expected")
        form = req.form()
        to, body = form.get("To", ""), form.get("Body", "")
        sender = form.get("From") or form.get("MessagingServiceSid")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not E164.match(to):
            return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not sender:
            return twilio_error(400, 21603, "A 'From' phone number is required.")
        if sender not in self.senders:
            return twilio_error(
                400,
                21606,
                f"The From phone number {sender} is not a valid message-capable "
                "Twilio phone number for this account.",
            )
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return twilio_error(400, 21617, "The concatenated message body exceeds 1600 chars")
        scripted = self.scripted()
        if scripted is not None:
            status, code = scripted[0], int(scripted[1]["code"])
            answer = twilio_error(status, code, str(scripted[1].get("message", "scripted")))
            return answer[0], answer[1], {"Retry-After": "0"} if status == 429 else {}
        sid = "SM" + secrets.token_hex(16)
        message = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": body,
            "status": "queued",
            "api_version": "2010-04-01",
            "error_code": None,
        }
        with self.lock:
            self.delivered.append(message)
        return 201, message, {}


# --- Aliyun SMS -----------------------------------------------------------------------


def aliyun_encode(value: str) -> str:
    """Aliyun's documented recipe: form-encode, then `+`→`%20`, `*`→`%2A`, `%7E`→`~`."""
    return (
        quote_plus(value, encoding="utf-8")
        .replace("+", "%20")
        .replace("*", "%2A")
        .replace("%7E", "~")
    )


def aliyun_signature(method: str, params: dict[str, str], secret: str) -> str:
    query = "&".join(
        f"{aliyun_encode(k)}={aliyun_encode(v)}"
        for k, v in sorted(params.items())
        if k != "Signature"
    )
    string_to_sign = f"{method}&{aliyun_encode('/')}&{aliyun_encode(query)}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


REQUIRED_ALIYUN = (
    "AccessKeyId",
    "Action",
    "Format",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureVersion",
    "Timestamp",
    "Version",
    "Signature",
    "PhoneNumbers",
    "SignName",
    "TemplateCode",
)


class AliyunSmsServer(ProviderServer):
    """dysmsapi's RPC endpoint for `Action=SendSms`, signature and all."""

    def __init__(
        self,
        access_keys: dict[str, str],
        *,
        sign_name: str,
        templates: dict[str, set[str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.access_keys = access_keys
        self.sign_name = sign_name
        self.templates = templates  # TemplateCode -> the variables it needs
        self.nonces: set[str] = set()

    @staticmethod
    def error(status: int, code: str, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        return status, {"Code": code, "Message": message, "RequestId": str(uuid.uuid4())}, {}

    def handle(self, req: ProviderRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        if req.path != "/":
            return self.error(404, "InvalidApi.NotFound", "Specified api is not found")
        params = dict(req.query)
        if req.method == "POST":
            params.update(req.form())
        missing = [name for name in REQUIRED_ALIYUN if not params.get(name)]
        if missing:
            return self.error(400, "MissingParameter", f"{missing[0]} is mandatory")
        if params["Action"] != "SendSms":
            return self.error(400, "InvalidAction.NotFound", "Specified api is not found")
        if params["Version"] != "2017-05-25":
            return self.error(400, "InvalidVersion", "Specified parameter Version is not valid")
        if params["Format"] != "JSON":
            return self.error(400, "InvalidParameter", "Format must be JSON here")
        if (params["SignatureMethod"], params["SignatureVersion"]) != ("HMAC-SHA1", "1.0"):
            return self.error(400, "InvalidSignatureMethod", "HMAC-SHA1 / 1.0 expected")
        try:
            at = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return self.error(400, "InvalidTimeStamp.Format", "Timestamp is not ISO 8601 UTC")
        if abs((datetime.now(UTC) - at).total_seconds()) > 15 * 60:
            return self.error(400, "InvalidTimeStamp.Expired", "Timestamp is too far from now")
        secret = self.access_keys.get(params["AccessKeyId"])
        if secret is None:
            return self.error(
                404, "InvalidAccessKeyId.NotFound", "Specified access key is not found"
            )
        expected = aliyun_signature(req.method, params, secret)
        if not hmac.compare_digest(expected, params["Signature"]):
            return self.error(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation.",
            )
        with self.lock:
            if params["SignatureNonce"] in self.nonces:
                return self.error(400, "SignatureNonceUsed", "Specified signature nonce was used")
            self.nonces.add(params["SignatureNonce"])
        numbers = params["PhoneNumbers"]
        if not re.fullmatch(r"\d{7,15}", numbers):
            return self.error(200, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        if params["SignName"] != self.sign_name:
            return self.error(200, "isv.SMS_SIGNATURE_ILLEGAL", "该账号下找不到对应签名")
        needs = self.templates.get(params["TemplateCode"])
        if needs is None:
            return self.error(200, "isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板")
        try:
            values = json.loads(params.get("TemplateParam") or "{}")
        except ValueError:
            return self.error(200, "isv.INVALID_JSON_PARAM", "JSON参数不合法")
        if not isinstance(values, dict):
            return self.error(200, "isv.INVALID_JSON_PARAM", "JSON参数不合法")
        if not needs <= set(values):
            return self.error(200, "isv.TEMPLATE_MISSING_PARAMETERS", "模板缺少变量")
        scripted = self.scripted()
        if scripted is not None:
            return self.error(scripted[0], str(scripted[1]["Code"]), "scripted")
        biz_id = f"{secrets.randbelow(10**15):015d}^0"
        with self.lock:
            self.delivered.append({**params, "BizId": biz_id})
        return (
            200,
            {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": str(uuid.uuid4())},
            {},
        )


# --- WeChat Official Account and WeCom ------------------------------------------------


class TokenServer(ProviderServer):
    """Access tokens as WeChat-family APIs issue them: random, valid `expires_in` seconds."""

    def __init__(self, *, expires_in: int = 7200, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expires_in = expires_in
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.token_requests = 0

    def issue(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(48)
        with self.lock:
            self.tokens[token] = time.monotonic() + self.expires_in
            self.token_requests += 1
        return {"access_token": token, "expires_in": self.expires_in}

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (42001 from then on)."""
        with self.lock:
            self.tokens = {t: 0.0 for t in self.tokens}

    def token_state(self, token: str) -> str:
        with self.lock:
            expiry = self.tokens.get(token)
        if expiry is None:
            return "unknown"
        return "expired" if time.monotonic() >= expiry else "valid"

    @staticmethod
    def err(errcode: int, errmsg: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        return 200, {"errcode": errcode, "errmsg": errmsg}, {}

    def json_body(self, req: ProviderRequest) -> dict[str, Any] | None:
        if not req.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            body = json.loads(req.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return body if isinstance(body, dict) else None


OPENID = re.compile(r"^[A-Za-z0-9_-]{28}$")


class WechatOAServer(TokenServer):
    """`/cgi-bin/token` and `/cgi-bin/message/template/send` of the Official Account API."""

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        *,
        templates: set[str],
        followers: set[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app_id, self.app_secret = app_id, app_secret
        self.templates, self.followers = templates, followers
        self.msgid = 200228332

    def handle(self, req: ProviderRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        if req.path == "/cgi-bin/token" and req.method == "GET":
            if req.query.get("grant_type") != "client_credential":
                return self.err(40002, "invalid grant_type")
            if req.query.get("appid") != self.app_id:
                return self.err(40013, "invalid appid")
            if not hmac.compare_digest(req.query.get("secret", ""), self.app_secret):
                return self.err(40001, "invalid credential, access_token is invalid or not latest")
            return 200, self.issue(), {}
        if req.path != "/cgi-bin/message/template/send" or req.method != "POST":
            return 404, {"errcode": 404, "errmsg": "not found"}, {}
        state = self.token_state(req.query.get("access_token", ""))
        if state == "unknown":
            return self.err(40001, "invalid credential, access_token is invalid or not latest")
        if state == "expired":
            return self.err(42001, "access_token expired")
        body = self.json_body(req)
        if body is None:
            return self.err(47001, "data format error")
        touser, template_id, data = body.get("touser"), body.get("template_id"), body.get("data")
        if not isinstance(touser, str) or not OPENID.match(touser):
            return self.err(40003, "invalid openid")
        if template_id not in self.templates:
            return self.err(40037, "invalid template_id")
        if not isinstance(data, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("value"), str) for v in data.values()
        ):
            return self.err(47001, "data format error")
        if touser not in self.followers:
            return self.err(43004, "require subscribe")
        scripted = self.scripted()
        if scripted is not None:
            return scripted[0], scripted[1], {}
        with self.lock:
            self.msgid += 1
            msgid = self.msgid
            self.delivered.append({**body, "msgid": msgid})
        return 200, {"errcode": 0, "errmsg": "ok", "msgid": msgid}, {}


class WecomServer(TokenServer):
    """`/cgi-bin/gettoken` and `/cgi-bin/message/send` of the WeCom API."""

    def __init__(
        self, corp_id: str, corp_secret: str, *, agent_id: int, members: set[str], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.corp_id, self.corp_secret = corp_id, corp_secret
        self.agent_id, self.members = agent_id, members
        self.recent: dict[str, float] = {}  # request JSON -> when (duplicate check)
        self.duplicates = 0

    def handle(self, req: ProviderRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        if req.path == "/cgi-bin/gettoken" and req.method == "GET":
            if req.query.get("corpid") != self.corp_id:
                return self.err(40013, "invalid corpid")
            if not hmac.compare_digest(req.query.get("corpsecret", ""), self.corp_secret):
                return self.err(40001, "invalid secret")
            return 200, {"errcode": 0, "errmsg": "ok", **self.issue()}, {}
        if req.path != "/cgi-bin/message/send" or req.method != "POST":
            return 404, {"errcode": 404, "errmsg": "not found"}, {}
        state = self.token_state(req.query.get("access_token", ""))
        if state == "unknown":
            return self.err(40014, "invalid access_token")
        if state == "expired":
            return self.err(42001, "access_token expired")
        body = self.json_body(req)
        if body is None:
            return self.err(40058, "invalid json")
        if body.get("agentid") != self.agent_id:
            return self.err(40056, "invalid agentid")
        text = body.get("text")
        if body.get("msgtype") != "text" or not isinstance(text, dict):
            return self.err(40008, "invalid message type")
        content = text.get("content")
        if not isinstance(content, str) or not content:
            return self.err(41016, "missing content")
        if len(content.encode("utf-8")) > 2048:
            return self.err(45002, "content size out of limit")
        users = [u for u in str(body.get("touser", "")).split("|") if u]
        valid = [u for u in users if u in self.members]
        if not valid:
            return self.err(81013, "user & party & tag all invalid")
        scripted = self.scripted()
        if scripted is not None:
            return scripted[0], scripted[1], {}
        msgid = secrets.token_urlsafe(24)
        key = json.dumps(body, sort_keys=True)
        with self.lock:
            seen = self.recent.get(key)
            interval = float(body.get("duplicate_check_interval", 1800))
            if body.get("enable_duplicate_check") == 1 and seen and time.time() - seen < interval:
                self.duplicates += 1  # accepted, not delivered again
            else:
                self.recent[key] = time.time()
                self.delivered.append({**body, "msgid": msgid})
        invalid = "|".join(u.lower() for u in users if u not in self.members)
        return 200, {"errcode": 0, "errmsg": "ok", "invaliduser": invalid, "msgid": msgid}, {}
