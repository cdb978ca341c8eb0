"""The canonical formats: validation, normalisation and the error messages users see."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from crmflow.domain import Customer, Event, describe_errors


def event(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "customer_id": "c1",
        "type": "purchase",
        "occurred_at": "2026-11-20T10:00:00+08:00",
        "properties": {"amount": 199.0, "currency": "CNY"},
    }
    return base | over


def errors_of(model: type[Event] | type[Customer], data: dict[str, object], **ctx: str) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data, context=ctx or None)
    return describe_errors(info.value)


def test_event_timestamp_is_kept_in_utc() -> None:
    e = Event.model_validate(event())
    assert e.occurred_at == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def test_event_without_zone_is_rejected_with_an_example() -> None:
    msg = errors_of(Event, event(occurred_at="2026-11-20T10:00:00"))
    assert "field 'occurred_at'" in msg
    assert "no time zone" in msg
    assert "+08:00" in msg


@pytest.mark.parametrize("bad", ["Sign In", "1purchase", "", "x" * 65])
def test_event_type_must_be_a_name(bad: str) -> None:
    assert "field 'type'" in errors_of(Event, event(type=bad))


def test_event_missing_and_unknown_fields_are_named() -> None:
    data = event(extra_field=1)
    del data["event_id"]
    msg = errors_of(Event, data)
    assert "field 'event_id': required field is missing" in msg
    assert "field 'extra_field': unknown field" in msg


def test_event_properties_must_be_json() -> None:
    assert "plain JSON" in errors_of(Event, event(properties={"x": float("nan")}))


def test_customer_is_normalised() -> None:
    c = Customer.model_validate(
        {
            "customer_id": " C1 ",
            "email": "Li.Wei@EXAMPLE.com",
            "phone": "139 1234 5678",
            "timezone": "Asia/Shanghai",
            "name": "  ",
        },
        context={"phone_region": "CN"},
    )
    assert c.customer_id == "C1"
    assert c.email == "Li.Wei@example.com"
    assert c.phone == "+8613912345678"
    assert c.name is None
    assert c.lifecycle_stage is None  # unset keeps what the store has


def test_phone_region_comes_from_the_context() -> None:
    c = Customer.model_validate(
        {"customer_id": "c", "phone": "(650) 253-0000"}, context={"phone_region": "US"}
    )
    assert c.phone == "+16502530000"
    msg = errors_of(Customer, {"customer_id": "c", "phone": "(650) 253-0000"}, phone_region="CN")
    assert "for region CN" in msg


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("email", "not-an-email", "not a valid e-mail address"),
        ("phone", "12", "phone"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("lifecycle_stage", "vip", "lifecycle_stage"),
        ("locale", "Chinese!", "locale"),
        ("consent", {"Email": True}, "consent.Email"),
    ],
)
def test_customer_bad_fields_are_named(field: str, value: object, expect: str) -> None:
    msg = errors_of(Customer, {"customer_id": "c", field: value})
    assert f"field '{field}" in msg
    assert expect in msg


def test_content_hash_changes_only_with_content() -> None:
    a = Customer.model_validate({"customer_id": "c", "name": "A", "attributes": {"x": 1, "y": 2}})
    b = Customer.model_validate({"customer_id": "c", "name": "A", "attributes": {"y": 2, "x": 1}})
    c = Customer.model_validate({"customer_id": "c", "name": "B", "attributes": {"x": 1, "y": 2}})
    assert a.content_hash() == b.content_hash() != c.content_hash()
