"""The `sms` channel through Alibaba Cloud SMS (dysmsapi `SendSms`, RPC style).

Followed (Alibaba Cloud docs: "SendSms" https://help.aliyun.com/document_detail/55284.html,
the RPC "Signature mechanism" https://help.aliyun.com/document_detail/28839.html (English:
https://help.aliyun.com/en/document_detail/130769.html), and the SMS error codes
https://help.aliyun.com/en/sms/developer-reference/error-codes):

- one request to `https://dysmsapi.aliyuncs.com/` with the common parameters `Action=SendSms`,
  `Version=2017-05-25`, `Format=JSON`, `AccessKeyId`, `SignatureMethod=HMAC-SHA1`,
  `SignatureVersion=1.0`, `SignatureNonce` (a UUID, new for every request), `Timestamp`
  (ISO 8601 in UTC, `YYYY-MM-DDThh:mm:ssZ`), and the operation's `PhoneNumbers`, `SignName`,
  `TemplateCode`, `TemplateParam` (a JSON string) and `OutId` (ours: the dedupe key, under
  256 characters, echoed in delivery receipts). Sent as a form-encoded POST, so the phone
  number stays out of URLs;
- the signature: every parameter but `Signature`, sorted by name; names and values
  percent-encoded as RFC 3986 (unreserved `A-Za-z0-9-_.~` kept, space as `%20`, `*` as `%2A`)
  and joined `k=v&…`; `StringToSign = METHOD & percentEncode("/") & percentEncode(query)`;
  `Signature = Base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign))`;
- the answer `{"Code": "OK", "Message": "OK", "BizId": …, "RequestId": …}`; `BizId` is the
  provider id. Any other `Code` is an error (HTTP 200 for the `isv.*` business errors, 4xx
  for `SignatureDoesNotMatch`, `InvalidAccessKeyId.NotFound`, 5xx for service errors).

Transient: `Throttling*`, `isv.BUSINESS_LIMIT_CONTROL` (per-number minute/hour/day flow
control), `isp.SYSTEM_ERROR`, `ServiceUnavailable`, `InternalError`, `SignatureNonceUsed`
(a retry signs with a new nonce) and any 5xx. Everything else (`isv.MOBILE_NUMBER_ILLEGAL`,
`isv.TEMPLATE_MISSING_PARAMETERS`, `isv.SMS_SIGNATURE_ILLEGAL`, `SignatureDoesNotMatch`, …)
is permanent.

Aliyun SMS sends templates only: the message's text goes into the template parameter named by
`template_param` (default `content`), so the approved template reads e.g. `${content}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from activities.channels.base import OutgoingMessage, PermanentSendError, SendResult
from activities.channels.provider import (
    ProviderChannel,
    ProviderPermanentError,
    ProviderTransientError,
    check_base_url,
    check_e164,
    json_object,
    retry_after,
)

ALIYUN_SMS_API = "https://dysmsapi.aliyuncs.com"
API_VERSION = "2017-05-25"
MAX_TEXT_CHARS = 500  # a template variable's value; the whole SMS is bounded by Aliyun too
TRANSIENT_CODES = frozenset(
    {
        "isv.BUSINESS_LIMIT_CONTROL",
        "isp.SYSTEM_ERROR",
        "ServiceUnavailable",
        "InternalError",
        "SignatureNonceUsed",
    }
)


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8, as the RPC signature wants: only `A-Za-z0-9-_.~`
    stay as they are (so space is `%20`, `*` is `%2A`, `~` stays)."""
    return quote(value, safe="~")


def canonical_query(params: dict[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def rpc_signature(method: str, params: dict[str, str], secret: str) -> str:
    """The `Signature` of RPC-style `params` (without `Signature`) under `secret`."""
    string_to_sign = (
        f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"
    )
    mac = hmac.new((secret + "&").encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def is_transient(code: str) -> bool:
    return code in TRANSIENT_CODES or code.startswith("Throttling")


class AliyunSmsChannel(ProviderChannel):
    """SMS via Alibaba Cloud's SendSms, one signed RPC request per attempt."""

    name = "sms"
    provider = "aliyun"

    def __init__(
        self,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        template_code: str,
        *,
        template_param: str = "content",
        base_url: str = ALIYUN_SMS_API,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (access_key_id and access_key_secret and sign_name and template_code):
            raise ValueError(
                "aliyun sms needs an AccessKey id and secret, a sign name and a template"
            )
        self.access_key_id = access_key_id
        self._secret = access_key_secret
        self.sign_name = sign_name
        self.template_code = template_code
        self.template_param = template_param
        self.url = check_base_url(base_url) + "/"

    def __repr__(self) -> str:  # never the AccessKey secret
        return (
            f"AliyunSmsChannel(access_key_id={self.access_key_id!r}, "
            f"template_code={self.template_code!r})"
        )

    def validate(self, msg: OutgoingMessage) -> None:
        check_e164(msg, max_chars=MAX_TEXT_CHARS)
        if len(msg.dedupe_key) >= 256:
            raise PermanentSendError("aliyun OutId (the dedupe key) must be under 256 characters")

    def params(self, msg: OutgoingMessage, *, now: datetime | None = None) -> dict[str, str]:
        """The signed request's parameters for `msg`, `Signature` included."""
        at = (now or datetime.now(UTC)).astimezone(UTC)
        params = {
            "AccessKeyId": self.access_key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": str(uuid.uuid4()),
            "SignatureVersion": "1.0",
            "Timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": API_VERSION,
            # Chinese mainland numbers may carry +86; others are country code + number.
            "PhoneNumbers": (msg.to or "").removeprefix("+"),
            "SignName": self.sign_name,
            "TemplateCode": self.template_code,
            "TemplateParam": json.dumps(
                {self.template_param: msg.text or ""}, ensure_ascii=False, separators=(",", ":")
            ),
            "OutId": msg.dedupe_key,
        }
        params["Signature"] = rpc_signature("POST", params, self._secret)
        return params

    async def attempt(self, client: httpx.AsyncClient, msg: OutgoingMessage) -> SendResult:
        response = await client.post(
            self.url,
            data=self.params(msg),
            headers={"Accept": "application/json", "User-Agent": "crmflow"},
            timeout=self.timeout,
        )
        status = response.status_code
        answer = json_object(response)
        code = str(answer.get("Code", "")) if answer else ""
        if 200 <= status < 300 and code == "OK" and answer is not None:
            return SendResult(
                provider_message_id=str(answer.get("BizId") or msg.dedupe_key),
                detail={"status": status, "request_id": answer.get("RequestId")},
            )
        words = str(answer.get("Message", "")) if answer else response.text[:200]
        text = f"aliyun answered HTTP {status}, {code or 'no code'}: {words}"
        if status >= 500 or status == 429 or is_transient(code):
            raise ProviderTransientError(
                text, provider="aliyun", code=code or status, retry_after=retry_after(response)
            )
        raise ProviderPermanentError(text, provider="aliyun", code=code or status)
