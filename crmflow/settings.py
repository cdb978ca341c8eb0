"""Settings from `CRMFLOW_*` environment variables and an optional `crmflow.toml`.

Environment variables win over the file. With no Temporal address set, crmflow runs the
embedded default: a SQLite file and the Temporal dev server under `home` (`.crmflow/`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _toml_file() -> Path:
    return Path(os.environ.get("CRMFLOW_CONFIG", "crmflow.toml"))


class Settings(BaseSettings):
    """Everything an operator can set. Every field is `CRMFLOW_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CRMFLOW_", extra="forbid")

    home: Path = Field(Path(".crmflow"), description="Folder for the embedded stack's files")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file under `home`"
    )
    temporal_address: str | None = Field(
        None, description="host:port of a Temporal frontend; unset means the embedded dev server"
    )
    temporal_namespace: str = "default"
    task_queue: str = "crmflow"
    temporal_tls: bool = Field(False, description="Use TLS to reach Temporal")
    temporal_tls_client_cert: Path | None = None
    temporal_tls_client_key: Path | None = None
    temporal_tls_server_root_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    embedded_port: int = Field(7233, description="gRPC port of the embedded dev server")
    embedded_ui_port: int = Field(8233, description="Web UI port of the embedded dev server")
    up_http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Port of the API and web console `crmflow up` serves on 127.0.0.1 (0: none)",
    )
    default_phone_region: str = Field(
        "CN", description="ISO region for phone numbers written without a country code"
    )
    schedules_file: Path = Field(
        Path("examples/schedules.yaml"),
        description="The schedules file `crmflow schedules` and the API's /schedules read",
    )
    import_chunk_size: int = Field(5000, ge=1, le=100_000)
    import_workers: int = Field(
        default_factory=lambda: min(os.cpu_count() or 1, 4),
        ge=1,
        le=32,
        description="processes that store an event file longer than one chunk, each taking "
        "a share of the customers (default: one per core, at most 4); also the event "
        "processor's",
    )
    process_linger_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="how long the event processor lets events accepted asynchronously wait "
        "for more to fill its round (bigger chunks are cheaper per event)",
    )

    # Channels (activities/channels). The `outbox` table channel is always on; the others are
    # built when their settings are present.
    smtp_host: str | None = Field(
        None, description="SMTP server host name; set it (and `mail_from`) to enable `email`"
    )
    smtp_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="SMTP port; default 587 for starttls, 465 for ssl, 25 for none",
    )
    smtp_security: Literal["none", "starttls", "ssl"] = Field(
        "starttls",
        description="`starttls` (upgrade a plain connection), `ssl` (TLS from the first byte), "
        "or `none` (plain text: only for a relay on a trusted network)",
    )
    smtp_username: str | None = Field(None, description="SMTP AUTH user; unset means no AUTH")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password")
    smtp_timeout_seconds: float = Field(
        30.0, gt=0, description="Socket timeout for each SMTP connection and command"
    )
    smtp_ca_file: Path | None = Field(
        None,
        description="PEM file of CA certificates to trust for the SMTP server (a private CA); "
        "default: the system trust store",
    )
    mail_from: str | None = Field(
        None, description="From address of e-mail, e.g. `Club <news@example.com>`"
    )
    webhook_url: str | None = Field(
        None, description="URL the `webhook` channel POSTs each message to (JSON)"
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key signing webhook bodies (X-Crmflow-Signature); "
        "required with `webhook_url`",
    )
    sms_url: str | None = Field(
        None, description="URL of the SMS provider (or relay) the `sms` channel POSTs to"
    )
    sms_secret: SecretStr | None = Field(
        None, description="HMAC key signing `sms` requests; required with `sms_url`"
    )
    wechat_url: str | None = Field(
        None, description="URL of the WeChat relay the `wechat` channel POSTs to"
    )
    wechat_secret: SecretStr | None = Field(
        None, description="HMAC key signing `wechat` requests; required with `wechat_url`"
    )
    # Direct providers for `sms` and `wechat` (activities/channels/sms_twilio.py,
    # sms_aliyun.py, wechat_oa.py, wecom.py). `relay` keeps the signed-JSON relay above.
    sms_provider: Literal["relay", "twilio", "aliyun"] = Field(
        "relay",
        description="Who sends `sms`: `relay` (POST to `sms_url`), `twilio` or `aliyun`",
    )
    twilio_account_sid: str | None = Field(None, description="Twilio Account SID (AC…)")
    twilio_auth_token: SecretStr | None = Field(None, description="Twilio Auth Token")
    twilio_from: str | None = Field(
        None,
        description="Twilio sender: an E.164 number or sender id, or a Messaging Service SID (MG…)",
    )
    twilio_api_url: str = Field(
        "https://api.twilio.com", description="Base URL of Twilio's REST API"
    )
    aliyun_access_key_id: str | None = Field(None, description="Alibaba Cloud AccessKey ID")
    aliyun_access_key_secret: SecretStr | None = Field(
        None, description="Alibaba Cloud AccessKey secret (signs each SendSms request)"
    )
    aliyun_sign_name: str | None = Field(None, description="Approved SMS signature (SignName)")
    aliyun_template_code: str | None = Field(
        None, description="Approved SMS template (TemplateCode, e.g. SMS_15305…)"
    )
    aliyun_template_param: str = Field(
        "content", description="Template variable the message text fills, e.g. ${content}"
    )
    aliyun_sms_url: str = Field(
        "https://dysmsapi.aliyuncs.com", description="Endpoint of Alibaba Cloud SMS (dysmsapi)"
    )
    wechat_provider: Literal["relay", "official_account", "wecom"] = Field(
        "relay",
        description="Who sends `wechat`: `relay` (POST to `wechat_url`), `official_account` "
        "(template messages) or `wecom` (企业微信 application messages)",
    )
    wechat_app_id: str | None = Field(None, description="Official Account AppID")
    wechat_app_secret: SecretStr | None = Field(None, description="Official Account AppSecret")
    wechat_template_id: str | None = Field(
        None, description="Template id of the Official Account's template messages"
    )
    wechat_template_field: str = Field(
        "content", description="Template field (key) the message text fills"
    )
    wechat_template_url: str | None = Field(
        None, description="Page a template message opens when tapped (optional)"
    )
    wechat_api_url: str = Field(
        "https://api.weixin.qq.com", description="Base URL of the WeChat Official Account API"
    )
    wecom_corp_id: str | None = Field(None, description="WeCom corpid")
    wecom_corp_secret: SecretStr | None = Field(
        None, description="Secret of the WeCom application that sends"
    )
    wecom_agent_id: int | None = Field(None, description="WeCom application's AgentId")
    wecom_api_url: str = Field(
        "https://qyapi.weixin.qq.com", description="Base URL of the WeCom API"
    )
    channel_retry_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="HTTP attempts per send of the webhook-style channels before the send "
        "fails as transient (Temporal then retries the activity)",
    )
    channel_retry_base_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="First back-off between HTTP attempts; doubles after each attempt",
    )
    channel_http_timeout_seconds: float = Field(
        10.0, gt=0, description="Timeout of each HTTP request of the webhook-style channels"
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="Public base URL of crmflow's HTTP API, used in unsubscribe links",
    )
    unsubscribe_secret: SecretStr = Field(
        SecretStr("crmflow-embedded-unsubscribe-secret-change-me"),
        description="HMAC key of unsubscribe tokens. The default only suits the embedded "
        "stack: production MUST set its own long random value (anyone knowing the key can "
        "unsubscribe any customer); changing it invalidates links already sent",
    )
    api_max_body_bytes: int = Field(
        1_000_000, ge=1024, le=100_000_000, description="Largest HTTP request body (413 above)"
    )
    api_max_batch: int = Field(
        1000, ge=1, le=100_000, description="Most events or customers in one API request"
    )
    api_rate_limit: str = Field(
        "6000/minute",
        description="Requests per API key, e.g. `600/minute` or `10/second` (429 above)",
    )
    api_rate_limit_storage: str = Field(
        "memory://",
        description="Where rate-limit counters live: `memory://` (each API process its own) "
        "or a shared store such as `redis://host:6379`",
    )
    api_public_docs: bool = Field(
        False,
        description="Serve /docs, /redoc and /openapi.json without a key (off: every route "
        "but the unsubscribe links needs one; `crmflow api-schema` prints the schema)",
    )
    console_session_hours: float = Field(
        12, gt=0, le=24 * 30, description="A console session ends after this many idle hours"
    )
    console_sign_in_limit: str = Field(
        "10/minute",
        description="Sign-in attempts per user name (and per address) before the console "
        "answers 429",
    )
    api_certfile: Path | None = Field(None, description="TLS certificate (PEM) for `crmflow api`")
    api_keyfile: Path | None = Field(None, description="TLS private key (PEM) for `crmflow api`")
    quiet_hours_start: str = Field(
        "21:00", description="Quiet hours start (HH:MM on the customer's own clock)"
    )
    quiet_hours_end: str = Field(
        "08:00", description="Quiet hours end; equal to the start: no quiet hours"
    )
    frequency_cap_messages: int = Field(
        3, ge=0, description="At most this many messages per customer, across all journeys …"
    )
    frequency_cap_days: float = Field(
        7, gt=0, description="… in this many days (0 messages: no cap)"
    )
    dispatch_interval_seconds: float = Field(
        1.0, gt=0, description="How often a worker hands journey commands from the outbox over"
    )
    # Operations: Prometheus metrics of a worker (the API serves /api/v1/metrics to a key
    # with `metrics.read`), and team chat for staff notices (activities/team_chat.py). The
    # robot URLs carry their access key or token, so they are secrets and never printed.
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port a worker serves Prometheus metrics on (unset: none; e.g. 9464)",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the worker's metrics port binds to (0.0.0.0 in a container)",
    )
    wecom_robot_url: SecretStr | None = Field(
        None,
        description="WeCom group robot webhook (…/cgi-bin/webhook/send?key=…) for staff notices",
    )
    dingtalk_robot_url: SecretStr | None = Field(
        None,
        description="DingTalk robot webhook (…/robot/send?access_token=…) for staff notices",
    )
    dingtalk_robot_secret: SecretStr | None = Field(
        None, description="The DingTalk robot's signing secret (SEC…); unset: unsigned robot"
    )
    slack_webhook_url: SecretStr | None = Field(
        None, description="Slack incoming webhook (https://hooks.slack.com/…) for staff notices"
    )

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _clock(cls, v: str) -> str:
        from journeys.timing import parse_clock

        parse_clock(v)
        return v

    @field_validator("api_rate_limit")
    @classmethod
    def _rate(cls, v: str) -> str:
        from limits import parse

        try:
            parse(v)
        except ValueError:
            raise ValueError("expected a rate such as 600/minute or 10/second") from None
        return v

    @field_validator("default_phone_region")
    @classmethod
    def _upper_region(cls, v: str) -> str:
        if len(v) != 2 or not v.isalpha():
            raise ValueError("expected a two-letter ISO region code such as CN or US")
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_toml_file()),
        )

    @property
    def embedded(self) -> bool:
        """True when crmflow starts its own Temporal dev server."""
        return self.temporal_address is None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'crmflow.db').resolve()}"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.embedded_port}"
