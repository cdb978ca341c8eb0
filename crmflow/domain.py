"""The domain models: a customer and an event as they come in, and a customer's profile as
every face shows it (tags, points lots, tier changes, audit, coupons).

These pydantic models are the single description of a customer row and an event, used by the
file importers, the API and the rules. Validation normalises on the way in: phone
numbers to E.164 (default region from the validation context), e-mail addresses through
email-validator (no DNS), timestamps must carry a zone and are kept in UTC.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

LifecycleStage = Literal["lead", "prospect", "customer", "member"]
LIFECYCLE_STAGES: tuple[str, ...] = ("lead", "prospect", "customer", "member")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (a database cannot store them)")
    return value


Identifier = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
]
_NAME = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a name; expected lower case letters, digits and _ . : - "
            "starting with a letter (such as purchase or sign_in), at most 64 characters"
        )
    return value


Name = Annotated[str, AfterValidator(_name)]


_PLAIN = (str, int, bool, type(None))


def _finite_json(value: Any) -> bool:
    """True when `value` holds only JSON values a database can store: no NaN or infinity,
    string keys, no NUL character in a string (PostgreSQL refuses it)."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, dict):
        for k, v in value.items():  # a loop, not all(...): this runs for every imported row
            if not isinstance(k, str) or "\x00" in k:
                return False
            if isinstance(v, str):
                if "\x00" in v:
                    return False
            elif not isinstance(v, _PLAIN) and not _finite_json(v):
                return False
        return True
    if isinstance(value, list):
        return all(_finite_json(v) for v in value)
    return False


EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "timestamp has no time zone; expected ISO 8601 with an offset, "
            "such as 2026-11-20T10:00:00+08:00 or 2026-11-20T02:00:00Z"
        )
    try:
        at = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before the calendar's start
        raise _out_of_range(value) from None
    if not EARLIEST <= at < LATEST:
        raise _out_of_range(value)
    return at


def _out_of_range(value: datetime) -> ValueError:
    return ValueError(
        f"timestamp {value.isoformat()} is out of range; expected a time from "
        f"{EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d}"
    )


def _timestamp_text(value: Any) -> Any:
    """A number is no time: seconds or milliseconds since 1970 cannot be told apart."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(
            f"{value!r} is a number; expected an ISO 8601 time with its offset, such as "
            "2026-11-20T10:00:00+08:00"
        )
    return value


AwareTimestamp = Annotated[datetime, BeforeValidator(_timestamp_text), AfterValidator(_aware_utc)]

MAX_JSON_BYTES = 32_768  # an event's properties, or a customer's attributes, as JSON


def _bounded_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    """`value` when it is plain, storable JSON of at most MAX_JSON_BYTES (a 10 MB property
    was stored and copied into every fact and message after it)."""
    if not _finite_json(value):
        raise ValueError(
            f"{what} must be plain JSON values (no NaN, infinity, objects or NUL characters)"
        )
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) * 4 > MAX_JSON_BYTES and len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(
            f"{what} hold {len(text.encode()):,} bytes as JSON; at most {MAX_JSON_BYTES:,}"
        )
    return value


class Event(BaseModel):
    """Something a customer did: `{"event_id", "customer_id", "type", "occurred_at", ...}`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: Identifier = Field(description="Idempotency key: the same id twice has one effect")
    customer_id: Identifier
    type: Name = Field(description="Event type, lower case: purchase, sign_in, unsubscribed …")
    occurred_at: AwareTimestamp
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("properties")
    @classmethod
    def _json_properties(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _bounded_json(v, "properties")


class Customer(BaseModel):
    """A customer profile row as imported: contact details, consent and free attributes."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    customer_id: Identifier
    name: str | None = Field(None, max_length=200)
    email: str | None = None
    phone: str | None = None
    timezone: str | None = Field(None, description="IANA zone; unset keeps the stored one (UTC)")
    locale: str | None = Field(None, pattern=r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
    consent: dict[Name, bool] = Field(
        default_factory=dict, description="Marketing consent per channel: email, sms, wechat …"
    )
    lifecycle_stage: LifecycleStage | None = Field(
        None, description="lead → prospect → customer → member; unset keeps the stored one"
    )
    owner: str | None = Field(None, max_length=200, description="Sales owner; empty = pool")
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator(
        "name", "email", "phone", "owner", "locale", "timezone", "lifecycle_stage", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return validate_email(v, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(f"not a valid e-mail address: {exc}") from exc

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        region = (info.context or {}).get("phone_region", "CN")
        try:
            number = phonenumbers.parse(v, region)
        except phonenumbers.NumberParseException as exc:
            raise ValueError(
                f"not a phone number ({exc}); expected e.g. +86 139 1234 5678"
            ) from exc
        if not phonenumbers.is_valid_number(number):
            where = "" if v.lstrip().startswith("+") else f" for region {region}"
            raise ValueError(
                f"not a valid phone number{where}; "
                "write it with its country code, e.g. +86 139 1234 5678"
            )
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {v!r}; expected an IANA name such as Asia/Shanghai"
            ) from exc
        return v

    @field_validator("attributes")
    @classmethod
    def _json_attributes(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _bounded_json(v, "attributes")

    def content_hash(self) -> str:
        """A digest of the imported fields: an unchanged row re-imported changes nothing."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, naming the field and what was expected."""
    parts = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        if err["type"] == "missing":
            msg = "required field is missing"
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"field '{where}': {msg}" if where else f"row: {msg}")
    return "; ".join(parts)


class TagView(BaseModel):
    tag: str
    source: str | None = None
    expires_at: datetime | None = None


class PointsLotView(BaseModel):
    earned: float
    remaining: float
    earned_at: datetime
    expires_at: datetime | None = None
    available_at: datetime | None = Field(
        None, description="pending until then (the return window); null: spendable at once"
    )


class TierChangeView(BaseModel):
    from_tier: str | None
    to_tier: str
    changed_at: datetime
    reason: str | None = None
    event_id: str | None = None


class AuditView(BaseModel):
    at: datetime
    event_id: str | None
    rule: str
    rules_version: str | None
    kind: str
    detail: dict[str, Any]
    skipped: str | None = None


class CouponView(BaseModel):
    code: str
    value: float
    expires_at: datetime
    redeemed_at: datetime | None = None


class CustomerProfile(BaseModel):
    """What `crmflow customer show` prints: the stored profile and its derived figures."""

    customer_id: str
    name: str | None
    email: str | None
    phone: str | None
    timezone: str
    locale: str | None
    consent: dict[str, bool]
    lifecycle_stage: str
    owner: str | None
    attributes: dict[str, Any]
    tier: str | None
    is_stub: bool = Field(description="known only from events so far, no profile row imported")
    created_at: datetime
    updated_at: datetime
    tags: list[TagView] = Field(default_factory=list)
    points_balance: float = Field(
        0.0, description="points that can be spent now (pending points and a debt apart)"
    )
    points_pending: float = Field(0.0, description="points still inside the return window")
    points_debt: float = Field(
        0.0, description="what refunds clawed back beyond the balance; later earnings settle it"
    )
    expiring_lots: list[PointsLotView] = Field(
        default_factory=list, description="lots with points left, soonest expiry first"
    )
    tier_history: list[TierChangeView] = Field(default_factory=list)
    events: int = 0
    last_event_at: datetime | None = None
    events_by_type: dict[str, int] = Field(default_factory=dict)
    coupons: list[CouponView] = Field(default_factory=list)
    history: list[AuditView] = Field(
        default_factory=list,
        description="what changed the profile, newest first: rule, rules version, event, time",
    )
