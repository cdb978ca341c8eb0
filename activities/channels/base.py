"""The channel interface: one message in, one provider id out, or a send error saying whether
a retry can help.

Channels only transport. Consent, quiet hours, frequency caps, rate limits and the delivery
ledger (`message_deliveries`) sit above them; the caller gives every message a dedupe key that
is stable across retries of the same enrollment step, and each channel passes it on to the
receiver (Message-ID, Idempotency-Key, a unique column) so a resend is recognisable there too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from crmflow.settings import Settings


class OutgoingMessage(BaseModel):
    """A rendered message ready to leave. Plain data: it crosses the Temporal boundary."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dedupe_key: str = Field(
        min_length=1,
        max_length=250,
        description="stable per enrollment step: the same key is the same message",
    )
    customer_id: str | None = None
    channel: str = Field(min_length=1, max_length=32)
    to: str | None = Field(
        None, description="e-mail address, E.164 phone, WeChat openid; None for outbox/webhook"
    )
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra e-mail headers, e.g. Reply-To"
    )
    unsubscribe_url: str | None = None
    data: dict[str, Any] = Field(
        default_factory=dict, description="extra JSON fields for webhook-style channels"
    )


class SendResult(BaseModel):
    """What the channel's receiver said: its id for the message and channel-specific detail."""

    provider_message_id: str
    detail: dict[str, Any] = Field(default_factory=dict)


class SendError(Exception):
    """A send failed. `retry_after` is a delay the receiver asked for (HTTP Retry-After)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """Retrying cannot help: a bad address, a refused recipient, a 4xx answer."""


class TransientSendError(SendError):
    """It may work later: connection refused, a timeout, 5xx, 429. The activity retries."""


@runtime_checkable
class Channel(Protocol):
    """A way out. `send` is idempotent per `dedupe_key` as far as the receiver allows."""

    name: str

    async def send(self, msg: OutgoingMessage) -> SendResult: ...


@runtime_checkable
class SyncChannel(Channel, Protocol):
    """A channel whose send is blocking work it runs in a thread anyway (a database insert,
    SMTP): `send_sync` is that work, for a caller already in a thread; `send` is the same
    from the event loop."""

    def send_sync(self, msg: OutgoingMessage) -> SendResult: ...


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_channels(settings: Settings, engine: Engine) -> dict[str, Channel]:
    """The channels the settings configure, by name.

    `outbox` always; `email` when `smtp_host` is set (with `mail_from`); `sms` and `wechat`
    through a provider when `sms_provider` / `wechat_provider` names one; `webhook`, and `sms`
    / `wechat` left on `relay`, when their URL is set (each needs its secret). A
    half-configured channel raises ValueError naming the missing setting, so a worker does
    not start with it silently off.
    """
    from activities.channels.email import EmailChannel, SmtpConfig
    from activities.channels.outbox import OutboxChannel
    from activities.channels.webhook import (
        SmsChannel,
        WebhookChannel,
        WechatChannel,
    )

    channels: dict[str, Channel] = {"outbox": OutboxChannel(engine)}
    if settings.smtp_host:
        if not settings.mail_from:
            raise ValueError("CRMFLOW_SMTP_HOST is set but CRMFLOW_MAIL_FROM is not")
        channels["email"] = EmailChannel(SmtpConfig.from_settings(settings))
    channels.update(_provider_channels(settings))
    for name, cls, url, secret in (
        ("webhook", WebhookChannel, settings.webhook_url, settings.webhook_secret),
        ("sms", SmsChannel, settings.sms_url, settings.sms_secret),
        ("wechat", WechatChannel, settings.wechat_url, settings.wechat_secret),
    ):
        if name in channels or not url:
            continue
        key = _secret(secret)
        if not key:
            raise ValueError(
                f"CRMFLOW_{name.upper()}_URL is set but CRMFLOW_{name.upper()}_SECRET is not"
            )
        channels[name] = cls(
            url,
            key,
            attempts=settings.channel_retry_attempts,
            base_delay=settings.channel_retry_base_seconds,
            timeout=settings.channel_http_timeout_seconds,
        )
    return channels


def _require(settings: Settings, provider: str, *names: str) -> None:
    missing = [n for n in names if not _value(getattr(settings, n))]
    if missing:
        listed = ", ".join(f"CRMFLOW_{n.upper()}" for n in missing)
        raise ValueError(f"{provider} is chosen but {listed} is not set")


def _value(value: Any) -> Any:
    return _secret(value) if hasattr(value, "get_secret_value") else value


def _provider_channels(settings: Settings) -> dict[str, Channel]:
    """`sms` / `wechat` through the provider the settings choose (none on `relay`)."""
    http = {
        "attempts": settings.channel_retry_attempts,
        "base_delay": settings.channel_retry_base_seconds,
        "timeout": settings.channel_http_timeout_seconds,
    }
    channels: dict[str, Channel] = {}
    if settings.sms_provider == "twilio":
        from activities.channels.sms_twilio import TwilioSmsChannel

        _require(settings, "CRMFLOW_SMS_PROVIDER=twilio", *TWILIO_SETTINGS)
        channels["sms"] = TwilioSmsChannel(
            str(settings.twilio_account_sid),
            str(_secret(settings.twilio_auth_token)),
            str(settings.twilio_from),
            base_url=settings.twilio_api_url,
            **http,
        )
    elif settings.sms_provider == "aliyun":
        from activities.channels.sms_aliyun import AliyunSmsChannel

        _require(settings, "CRMFLOW_SMS_PROVIDER=aliyun", *ALIYUN_SETTINGS)
        channels["sms"] = AliyunSmsChannel(
            str(settings.aliyun_access_key_id),
            str(_secret(settings.aliyun_access_key_secret)),
            str(settings.aliyun_sign_name),
            str(settings.aliyun_template_code),
            template_param=settings.aliyun_template_param,
            base_url=settings.aliyun_sms_url,
            **http,
        )
    if settings.wechat_provider == "official_account":
        from activities.channels.wechat_oa import WechatOfficialAccountChannel

        _require(settings, "CRMFLOW_WECHAT_PROVIDER=official_account", *WECHAT_OA_SETTINGS)
        channels["wechat"] = WechatOfficialAccountChannel(
            str(settings.wechat_app_id),
            str(_secret(settings.wechat_app_secret)),
            str(settings.wechat_template_id),
            template_field=settings.wechat_template_field,
            url=settings.wechat_template_url,
            base_url=settings.wechat_api_url,
            **http,
        )
    elif settings.wechat_provider == "wecom":
        from activities.channels.wecom import WecomChannel

        _require(settings, "CRMFLOW_WECHAT_PROVIDER=wecom", *WECOM_SETTINGS)
        channels["wechat"] = WecomChannel(
            str(settings.wecom_corp_id),
            str(_secret(settings.wecom_corp_secret)),
            int(settings.wecom_agent_id or 0),
            base_url=settings.wecom_api_url,
            **http,
        )
    return channels


TWILIO_SETTINGS = ("twilio_account_sid", "twilio_auth_token", "twilio_from")
ALIYUN_SETTINGS = (
    "aliyun_access_key_id",
    "aliyun_access_key_secret",
    "aliyun_sign_name",
    "aliyun_template_code",
)
WECHAT_OA_SETTINGS = ("wechat_app_id", "wechat_app_secret", "wechat_template_id")
WECOM_SETTINGS = ("wecom_corp_id", "wecom_corp_secret", "wecom_agent_id")
