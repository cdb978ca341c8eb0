"""The Twilio, Aliyun SMS, WeChat Official Account and WeCom channels against local stand-ins
that check requests the way each provider documents them (tests/provider_servers.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    TransientSendError,
    build_channels,
)
from activities.channels.provider import ProviderPermanentError, ProviderTransientError
from activities.channels.sms_aliyun import AliyunSmsChannel, percent_encode, rpc_signature
from activities.channels.sms_twilio import TwilioSmsChannel
from activities.channels.webhook import SmsChannel
from activities.channels.wechat_oa import WechatOfficialAccountChannel
from activities.channels.wecom import WecomChannel
from crmflow.settings import Settings
from tests.conftest import free_port
from tests.provider_servers import (
    AliyunSmsServer,
    TwilioServer,
    WechatOAServer,
    WecomServer,
    aliyun_signature,
)

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-0123456789"
FROM = "+15005550006"
PHONE = "+8613800138000"
AK_ID, AK_SECRET = "LTAI5tTestKeyId", "aliyun-secret-0123456789"
APPID, APPSECRET = "wx0123456789abcdef", "oa-app-secret-0123456789"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
CORPID, CORPSECRET, AGENT = "ww0123456789abcdef", "wecom-secret-0123456789", 1000002
FAST = {"attempts": 3, "base_delay": 0.01}


def message(**overrides: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "dedupe_key": "welcome:v1:cust-7:node-2",
        "customer_id": "cust-7",
        "channel": "sms",
        "to": PHONE,
        "text": "Welcome! 积分 +200 * 100% ~ ok",
        "data": {"journey": "welcome", "node": "node-2"},
    }
    fields.update(overrides)
    return OutgoingMessage.model_validate(fields)


# --- Twilio ---------------------------------------------------------------------------


def twilio_server(**kwargs: Any) -> TwilioServer:
    return TwilioServer(SID, TOKEN, {FROM, "MG" + "a" * 32}, **kwargs)


def twilio(server: TwilioServer, *, token: str = TOKEN, **kwargs: Any) -> TwilioSmsChannel:
    return TwilioSmsChannel(
        SID, token, kwargs.pop("sender", FROM), base_url=server.url, **{**FAST, **kwargs}
    )


async def test_twilio_sends_a_form_with_basic_auth() -> None:
    with twilio_server() as server:
        result = await twilio(server).send(message())
    req = server.requests[0]
    assert req.method == "POST" and req.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    user, _, password = base64.b64decode(req.headers["authorization"][6:]).decode().partition(":")
    assert (user, password) == (SID, TOKEN)
    assert req.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert req.form() == {"To": PHONE, "From": FROM, "Body": "Welcome! 积分 +200 * 100% ~ ok"}
    assert result.provider_message_id == server.delivered[0]["sid"]
    assert result.provider_message_id.startswith("SM")
    assert result.detail["provider"] == "twilio" and result.detail["attempts"] == 1


async def test_twilio_messaging_service_sid_instead_of_from() -> None:
    with twilio_server() as server:
        await twilio(server, sender="MG" + "a" * 32).send(message())
    assert server.requests[0].form()["MessagingServiceSid"] == "MG" + "a" * 32
    assert "From" not in server.requests[0].form()


async def test_twilio_wrong_token_is_permanent_and_not_retried() -> None:
    with twilio_server() as server, pytest.raises(ProviderPermanentError) as caught:
        await twilio(server, token="wrong-token").send(message())
    assert caught.value.code == "20003" and caught.value.provider == "twilio"
    assert len(server.requests) == 1 and server.delivered == []
    assert "wrong-token" not in str(caught.value) and "wrong-token" not in repr(twilio(server))


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 21211, ProviderPermanentError),  # invalid 'To' number
        (400, 21610, ProviderPermanentError),  # recipient unsubscribed (STOP)
        (400, 21614, ProviderPermanentError),  # not a mobile number
        (429, 20429, ProviderTransientError),  # too many requests
        (400, 21611, ProviderTransientError),  # sender's queue is full
        (500, 20500, ProviderTransientError),  # internal error
        (503, 20503, ProviderTransientError),  # service unavailable
    ],
)
async def test_twilio_error_codes(status: int, code: int, kind: type[Exception]) -> None:
    with twilio_server() as server:
        server.script = [(status, {"code": code})] * 5
        with pytest.raises(kind) as caught:
            await twilio(server).send(message())
    assert getattr(caught.value, "code", None) == str(code)
    expected_requests = 3 if kind is ProviderTransientError else 1
    assert len(server.requests) == expected_requests


async def test_twilio_transient_then_success() -> None:
    with twilio_server() as server:
        server.script = [(429, {"code": 20429}), (503, {"code": 20503})]
        result = await twilio(server).send(message())
    assert result.detail["attempts"] == 3 and len(server.delivered) == 1


async def test_twilio_bad_number_never_leaves() -> None:
    with twilio_server() as server:
        with pytest.raises(PermanentSendError):
            await twilio(server).send(message(to="13800138000"))
        with pytest.raises(PermanentSendError, match="1600"):
            await twilio(server).send(message(text="x" * 1601))
    assert server.requests == []


async def test_twilio_timeout_and_refused_connection_are_transient() -> None:
    with twilio_server(delay=0.6) as server:
        channel = twilio(server, attempts=2, timeout=0.2)
        with pytest.raises(TransientSendError, match="ReadTimeout"):
            await channel.send(message())
    assert len(server.requests) == 2
    down = TwilioSmsChannel(SID, TOKEN, FROM, base_url=f"http://127.0.0.1:{free_port()}", **FAST)
    with pytest.raises(ProviderTransientError) as caught:
        await down.send(message())
    assert caught.value.code == "ConnectError"


# --- Aliyun ---------------------------------------------------------------------------


def aliyun_server(**kwargs: Any) -> AliyunSmsServer:
    return AliyunSmsServer(
        {AK_ID: AK_SECRET},
        sign_name="会员俱乐部",
        templates={"SMS_153055065": {"content"}},
        **kwargs,
    )


def aliyun(server: AliyunSmsServer, *, secret: str = AK_SECRET, **kwargs: Any) -> AliyunSmsChannel:
    return AliyunSmsChannel(
        AK_ID,
        secret,
        "会员俱乐部",
        kwargs.pop("template_code", "SMS_153055065"),
        base_url=server.url,
        **{**FAST, **kwargs},
    )


def test_aliyun_percent_encoding_and_signature_follow_the_spec() -> None:
    assert percent_encode("a b*c~d/é") == "a%20b%2Ac~d%2F%C3%A9"
    params = {
        "Action": "SendSms",
        "Timestamp": "2026-01-01T00:00:00Z",
        "TemplateParam": '{"x":"a b"}',
    }
    # The server side computes it with Aliyun's own recipe (quote_plus and replacements).
    assert rpc_signature("POST", params, AK_SECRET) == aliyun_signature("POST", params, AK_SECRET)
    assert rpc_signature("GET", params, AK_SECRET) != rpc_signature("POST", params, AK_SECRET)


async def test_aliyun_sends_a_signed_sendsms() -> None:
    with aliyun_server() as server:
        result = await aliyun(server).send(message())
    req = server.requests[0]
    form = req.form()
    assert req.method == "POST" and req.path == "/"
    assert {
        k: form[k] for k in ("Action", "Version", "Format", "SignatureMethod", "SignatureVersion")
    } == {
        "Action": "SendSms",
        "Version": "2017-05-25",
        "Format": "JSON",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
    }
    assert form["PhoneNumbers"] == "8613800138000" and form["OutId"] == "welcome:v1:cust-7:node-2"
    assert json.loads(form["TemplateParam"]) == {"content": "Welcome! 积分 +200 * 100% ~ ok"}
    assert form["Signature"] == aliyun_signature("POST", form, AK_SECRET)
    assert PHONE.lstrip("+") not in req.path  # the number travels in the body
    assert result.provider_message_id == server.delivered[0]["BizId"]
    assert result.detail["provider"] == "aliyun"


async def test_aliyun_each_attempt_has_its_own_nonce() -> None:
    with aliyun_server() as server:
        server.script = [(200, {"Code": "isv.BUSINESS_LIMIT_CONTROL"})]
        result = await aliyun(server).send(message())
    nonces = [r.form()["SignatureNonce"] for r in server.requests]
    assert len(nonces) == 2 and len(set(nonces)) == 2
    assert result.detail["attempts"] == 2


async def test_aliyun_wrong_secret_is_signature_does_not_match() -> None:
    with aliyun_server() as server, pytest.raises(ProviderPermanentError) as caught:
        await aliyun(server, secret="not-the-secret").send(message())
    assert caught.value.code == "SignatureDoesNotMatch"
    assert len(server.requests) == 1 and server.delivered == []
    assert "not-the-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (200, "isv.MOBILE_NUMBER_ILLEGAL", ProviderPermanentError),
        (200, "isv.BLACK_KEY_CONTROL_LIMIT", ProviderPermanentError),
        (200, "isv.AMOUNT_NOT_ENOUGH", ProviderPermanentError),
        (200, "isv.BUSINESS_LIMIT_CONTROL", ProviderTransientError),
        (400, "Throttling.User", ProviderTransientError),
        (200, "isp.SYSTEM_ERROR", ProviderTransientError),
        (503, "ServiceUnavailable", ProviderTransientError),
    ],
)
async def test_aliyun_error_codes(status: int, code: str, kind: type[Exception]) -> None:
    with aliyun_server() as server:
        server.script = [(status, {"Code": code})] * 5
        with pytest.raises(kind) as caught:
            await aliyun(server).send(message())
    assert getattr(caught.value, "code", None) == code


async def test_aliyun_refusals_found_by_the_stand_in() -> None:
    with aliyun_server() as server:
        with pytest.raises(ProviderPermanentError) as caught:
            await aliyun(server, template_code="SMS_000").send(message())
        assert caught.value.code == "isv.SMS_TEMPLATE_ILLEGAL"
        channel = aliyun(server)
        channel.access_key_id = "LTAI-unknown"
        with pytest.raises(ProviderPermanentError) as caught:
            await channel.send(message())
        assert caught.value.code == "InvalidAccessKeyId.NotFound"
    assert server.delivered == []


# --- WeChat Official Account ----------------------------------------------------------


def oa_server(**kwargs: Any) -> WechatOAServer:
    return WechatOAServer(APPID, APPSECRET, templates={"TPL-points"}, followers={OPENID}, **kwargs)


def oa(
    server: WechatOAServer, *, secret: str = APPSECRET, **kwargs: Any
) -> WechatOfficialAccountChannel:
    return WechatOfficialAccountChannel(
        APPID,
        secret,
        "TPL-points",
        url="https://club.example/points",
        base_url=server.url,
        **{**FAST, **kwargs},
    )


def wx(**overrides: object) -> OutgoingMessage:
    return message(
        **{"channel": "wechat", "to": OPENID, "text": "200 积分将于 12-31 到期", **overrides}
    )


async def test_oa_token_then_template_message() -> None:
    with oa_server() as server:
        channel = oa(server)
        first = await channel.send(
            wx(data={"wechat_template_data": {"points": 200, "date": {"value": "2026-12-31"}}})
        )
        second = await channel.send(wx())
    token_req, send_req = server.requests[0], server.requests[1]
    assert token_req.method == "GET" and token_req.path == "/cgi-bin/token"
    assert token_req.query == {
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": APPSECRET,
    }
    assert send_req.path == "/cgi-bin/message/template/send"
    assert send_req.query["access_token"] in server.tokens
    assert send_req.json() == {
        "touser": OPENID,
        "template_id": "TPL-points",
        "url": "https://club.example/points",
        "data": {
            "content": {"value": "200 积分将于 12-31 到期"},
            "points": {"value": "200"},
            "date": {"value": "2026-12-31"},
        },
    }
    assert first.provider_message_id == str(server.delivered[0]["msgid"])
    assert server.token_requests == 1 and second.detail["token_refreshed"] is False  # cached


async def test_oa_wrong_secret_is_permanent() -> None:
    with oa_server() as server, pytest.raises(ProviderPermanentError) as caught:
        await oa(server, secret="wrong").send(wx())
    assert caught.value.code == "40001" and len(server.requests) == 1
    assert "wrong" not in str(caught.value)


async def test_oa_token_rejected_is_refreshed_once() -> None:
    with oa_server() as server:
        channel = oa(server)
        await channel.send(wx())
        server.expire_tokens()  # 42001 for the cached token
        result = await channel.send(wx())
    assert result.detail["token_refreshed"] is True
    assert server.token_requests == 2 and len(server.delivered) == 2
    assert [r.path for r in server.requests].count("/cgi-bin/message/template/send") == 3


async def test_oa_token_expiry_fetches_a_new_one_before_sending() -> None:
    with oa_server(expires_in=1) as server:
        channel = oa(server)
        await channel.send(wx())
        await asyncio.sleep(1.0)
        result = await channel.send(wx())
    assert server.token_requests == 2 and result.detail["token_refreshed"] is False
    assert len(server.requests) == 4  # token, send, token, send: no refused send


async def test_oa_concurrent_sends_share_one_token_request() -> None:
    with oa_server() as server:
        channel = oa(server)
        await asyncio.gather(*(channel.send(wx(dedupe_key=f"k{i}")) for i in range(5)))
    assert server.token_requests == 1 and len(server.delivered) == 5


@pytest.mark.parametrize(
    ("errcode", "kind"),
    [
        (43004, ProviderPermanentError),
        (40003, ProviderPermanentError),
        (43101, ProviderPermanentError),
        (-1, ProviderTransientError),
        (45009, ProviderTransientError),
    ],
)
async def test_oa_error_codes(errcode: int, kind: type[Exception]) -> None:
    with oa_server() as server:
        server.script = [(200, {"errcode": errcode, "errmsg": "scripted"})] * 5
        with pytest.raises(kind) as caught:
            await oa(server).send(wx())
    assert getattr(caught.value, "code", None) == str(errcode)


async def test_oa_stand_in_refuses_a_non_follower_and_a_bad_template() -> None:
    with oa_server() as server:
        with pytest.raises(ProviderPermanentError) as caught:
            await oa(server).send(wx(to="oUpF8uMuAJO_M2pxb1Q9zNjWeS6X"))
        assert caught.value.code == "43004"
        with pytest.raises(ProviderPermanentError) as caught:
            await oa(server).send(wx(data={"wechat_template_id": "TPL-gone"}))
        assert caught.value.code == "40037"
        with pytest.raises(PermanentSendError, match="openid"):
            await oa(server).send(wx(to="not an openid!"))


async def test_oa_5xx_and_timeouts_are_transient() -> None:
    with oa_server() as server:
        channel = oa(server, attempts=2)
        await channel.send(wx())
        server.script = [(502, {"errcode": None})] * 2
        with pytest.raises(ProviderTransientError):
            await channel.send(wx())
    with oa_server(delay=0.6) as slow, pytest.raises(TransientSendError, match="ReadTimeout"):
        await oa(slow, attempts=1, timeout=0.2).send(wx())


# --- WeCom ----------------------------------------------------------------------------


def wecom_server(**kwargs: Any) -> WecomServer:
    return WecomServer(CORPID, CORPSECRET, agent_id=AGENT, members={"ZhangSan", "lisi"}, **kwargs)


def wecom(server: WecomServer, *, secret: str = CORPSECRET, **kwargs: Any) -> WecomChannel:
    return WecomChannel(CORPID, secret, AGENT, base_url=server.url, **{**FAST, **kwargs})


def wc(**overrides: object) -> OutgoingMessage:
    return message(**{"channel": "wechat", "to": "ZhangSan", "text": "新线索待跟进", **overrides})


async def test_wecom_token_then_text_message() -> None:
    with wecom_server() as server:
        result = await wecom(server).send(wc())
    token_req, send_req = server.requests
    assert token_req.path == "/cgi-bin/gettoken"
    assert token_req.query == {"corpid": CORPID, "corpsecret": CORPSECRET}
    assert send_req.path == "/cgi-bin/message/send"
    body = send_req.json()
    assert body["touser"] == "ZhangSan" and body["msgtype"] == "text"
    assert body["agentid"] == AGENT and body["text"] == {"content": "新线索待跟进"}
    assert body["enable_duplicate_check"] == 1
    assert result.provider_message_id == server.delivered[0]["msgid"]


async def test_wecom_wrong_secret_is_permanent() -> None:
    with wecom_server() as server, pytest.raises(ProviderPermanentError) as caught:
        await wecom(server, secret="wrong").send(wc())
    assert caught.value.code == "40001"


async def test_wecom_expired_token_is_refreshed() -> None:
    with wecom_server() as server:
        channel = wecom(server)
        await channel.send(wc())
        server.expire_tokens()
        result = await channel.send(wc(text="第二条"))
    assert result.detail["token_refreshed"] is True and server.token_requests == 2


async def test_wecom_unknown_token_40014_is_refreshed() -> None:
    with wecom_server() as server:
        channel = wecom(server)
        await channel.send(wc())
        server.tokens.clear()  # the server no longer knows the cached token
        result = await channel.send(wc(text="again"))
    assert result.detail["token_refreshed"] is True


async def test_wecom_retried_send_is_dropped_as_a_duplicate() -> None:
    with wecom_server() as server:
        channel = wecom(server)
        await channel.send(wc())
        await channel.send(wc())
    assert len(server.delivered) == 1 and server.duplicates == 1


@pytest.mark.parametrize(
    ("errcode", "kind"),
    [
        (81013, ProviderPermanentError),
        (40056, ProviderPermanentError),
        (-1, ProviderTransientError),
        (45009, ProviderTransientError),
        (45033, ProviderTransientError),
    ],
)
async def test_wecom_error_codes(errcode: int, kind: type[Exception]) -> None:
    with wecom_server() as server:
        server.script = [(200, {"errcode": errcode, "errmsg": "scripted"})] * 5
        with pytest.raises(kind) as caught:
            await wecom(server).send(wc())
    assert getattr(caught.value, "code", None) == str(errcode)


async def test_wecom_unknown_member_is_permanent() -> None:
    with wecom_server() as server, pytest.raises(ProviderPermanentError) as caught:
        await wecom(server).send(wc(to="wangwu"))
    assert caught.value.code == "81013"


# --- settings and wiring --------------------------------------------------------------


def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    for name in ("SMS_PROVIDER", "WECHAT_PROVIDER", "SMS_URL", "WECHAT_URL"):
        monkeypatch.delenv(f"CRMFLOW_{name}", raising=False)
    return Settings(smtp_host=None, webhook_url=None, sms_url=None, wechat_url=None)


def test_settings_choose_the_providers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = bare(monkeypatch, tmp_path)
    relay = build_channels(
        base.model_copy(
            update={"sms_url": "https://sms.example/send", "sms_secret": SecretStr("s")}
        ),
        engine,
    )
    assert type(relay["sms"]) is SmsChannel
    twilio_settings = base.model_copy(
        update={
            "sms_provider": "twilio",
            "twilio_account_sid": SID,
            "twilio_auth_token": SecretStr(TOKEN),
            "twilio_from": FROM,
            "sms_url": "https://ignored.example",
            "wechat_provider": "wecom",
            "wecom_corp_id": CORPID,
            "wecom_corp_secret": SecretStr(CORPSECRET),
            "wecom_agent_id": AGENT,
            "channel_retry_attempts": 5,
        }
    )
    channels = build_channels(twilio_settings, engine)
    assert isinstance(channels["sms"], TwilioSmsChannel) and channels["sms"].attempts == 5
    assert isinstance(channels["wechat"], WecomChannel)
    assert channels["sms"].name == "sms" and channels["wechat"].name == "wechat"
    assert TOKEN not in repr(twilio_settings) and CORPSECRET not in repr(channels["wechat"])
    aliyun_settings = base.model_copy(
        update={
            "sms_provider": "aliyun",
            "aliyun_access_key_id": AK_ID,
            "aliyun_access_key_secret": SecretStr(AK_SECRET),
            "aliyun_sign_name": "会员俱乐部",
            "aliyun_template_code": "SMS_153055065",
            "wechat_provider": "official_account",
            "wechat_app_id": APPID,
            "wechat_app_secret": SecretStr(APPSECRET),
            "wechat_template_id": "TPL-points",
        }
    )
    channels = build_channels(aliyun_settings, engine)
    assert isinstance(channels["sms"], AliyunSmsChannel)
    assert isinstance(channels["wechat"], WechatOfficialAccountChannel)


def test_settings_refuse_a_half_configured_provider(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = bare(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="CRMFLOW_TWILIO_AUTH_TOKEN"):
        build_channels(
            base.model_copy(
                update={"sms_provider": "twilio", "twilio_account_sid": SID, "twilio_from": FROM}
            ),
            engine,
        )
    with pytest.raises(ValueError, match="CRMFLOW_WECOM_AGENT_ID"):
        build_channels(
            base.model_copy(
                update={
                    "wechat_provider": "wecom",
                    "wecom_corp_id": CORPID,
                    "wecom_corp_secret": SecretStr(CORPSECRET),
                }
            ),
            engine,
        )


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("CRMFLOW_SMS_PROVIDER", "aliyun")
    monkeypatch.setenv("CRMFLOW_ALIYUN_ACCESS_KEY_SECRET", AK_SECRET)
    monkeypatch.setenv("CRMFLOW_WECHAT_PROVIDER", "official_account")
    settings = Settings()
    assert settings.sms_provider == "aliyun" and settings.wechat_provider == "official_account"
    assert AK_SECRET not in repr(settings) and AK_SECRET not in str(settings.model_dump())
    monkeypatch.setenv("CRMFLOW_SMS_PROVIDER", "carrier-pigeon")
    with pytest.raises(ValueError):
        Settings()
