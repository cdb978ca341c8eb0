"""Messages that say what happened: templates see the entry event (`event.type`,
`event.occurred_at`, `event.properties.*`) and the data a rule handed over (`data.*`).

Validation knows those names and their types from the programme (its declared event
properties, the properties an automation's event carries) and from the rules that enroll the
customer or send the entry event; an unknown one is refused with its line. The deliver
activity reads the entry event's properties from the store by the id the workflow passes, so
they reach the message and never Temporal's history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, insert
from temporalio.testing import WorkflowEnvironment

from automations.models import PointsExpiryParams
from crmflow.dispatch import dispatch_once
from journeys.models import MessageNode
from journeys.templates import AUTOMATION_EVENT_PROPERTIES, render_message
from journeys.validate import load_journey, validate_text
from rules.models import Program, Rule
from rules.pack import load_program
from rules.source import SourceError, parse_yaml
from store.automations import RunContext, warn_expiring
from store.models import CustomerRow, PointsLotRow
from tests.rules_helpers import PROGRAM, REPO, deploy_dir, import_rows
from tests.test_journey_workflow import customers, outbox
from tests.test_temporal_payloads_pii import (
    cid,
    decoded,
    deploy,
    histories,
    journey_worker,
)

EXAMPLE = REPO / "examples/journeys/points-expiring.yaml"


def program() -> Program:
    return load_program(parse_yaml(PROGRAM, "program.yaml"))


def problems(text: str, rules: list[Rule] | None = None) -> list[tuple[int | None, str]]:
    try:
        validate_text(text, "j.yaml", program(), rules=rules)
    except SourceError as exc:
        return [(e.line, e.message) for e in exc.errors]
    return []


def on_event(event: str, text: str) -> str:
    return f"""journey: j
entry: {{event: {event}}}
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template:
      subject: "Hi"
      text: |
{text}
    next: done
  done: {{type: exit}}
"""


# --------------------------------------------------------------------------- validation


def test_event_properties_the_programme_declares_are_accepted() -> None:
    text = on_event(
        "purchase",
        "        {{ event.type }} of {{ event.properties.amount + 1 }}"
        " {{ event.properties.currency | upper }} at {{ event.occurred_at[:10] }}",
    )
    assert problems(text) == []


def test_an_unknown_event_property_is_refused_with_its_line() -> None:
    text = on_event(
        "purchase",
        "        Thanks for order {{ event.properties.order_id }}.\n"
        "        Your coupon: {{ event.properties.coupon | default('') }}",
    )
    found = problems(text)
    assert len(found) == 1, found
    line, message = found[0]
    assert (
        line
        == text.splitlines().index(
            "        Your coupon: {{ event.properties.coupon | default('') }}"
        )
        + 1
    )
    assert "event.properties has no 'coupon'" in message
    assert "amount" in message and "order_id" in message  # what it does have


def test_a_property_of_the_wrong_declared_type_does_not_render() -> None:
    # `currency` is a string: arithmetic on it fails against the sample, as it would live
    found = problems(on_event("purchase", "        {{ event.properties.currency - 1 }}"))
    assert len(found) == 1 and "does not render" in found[0][1], found


def test_an_automation_event_carries_its_own_properties() -> None:
    ok = on_event(
        "points_expiring",
        "        {{ event.properties.amount | int }} points on {{ event.properties.date }}"
        " ({{ event.properties.total_expiring }} in {{ event.properties.within_days }} days)",
    )
    assert problems(ok) == []
    bad = on_event("tier_changed", "        {{ event.properties.date }}")
    assert ["tier_changed" in m or "has no 'date'" in m for _, m in problems(bad)] == [True]


RULE_ENTERED = """journey: thanks
entry: rule
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template:
      subject: "A gift"
      text: |
        Your code: {{ data.coupon_code }}
        {{ data.value * 2 }} off
    next: done
  done: {type: exit}
"""


def enrolling_rule(journey: str, data: dict[str, Any]) -> Rule:
    return Rule.model_validate(
        {
            "name": "r",
            "on": "purchase",
            "then": [{"enroll_journey": {"journey": journey, "data": data}}],
        }
    )


def test_data_the_enrolling_rules_pass_is_accepted_with_its_types() -> None:
    rules = [enrolling_rule("thanks", {"coupon_code": "BACK-1", "value": 50})]
    assert problems(RULE_ENTERED, rules) == []


def test_data_no_rule_passes_is_refused_with_its_line() -> None:
    rules = [
        enrolling_rule("thanks", {"coupon_code": "BACK-1"}),
        enrolling_rule("other", {"value": 5}),
    ]
    found = problems(RULE_ENTERED, rules)
    assert len(found) == 1, found
    line, message = found[0]
    assert line == RULE_ENTERED.splitlines().index("        {{ data.value * 2 }} off") + 1
    assert "data has no 'value' (it has: coupon_code)" in message


def test_without_the_rules_any_data_name_is_accepted() -> None:
    assert problems(RULE_ENTERED) == []


def test_a_journey_event_hands_its_data_to_the_entry_event_and_to_data() -> None:
    text = on_event(
        "churn_risk", "        {{ data.coupon_code }} {{ event.properties.coupon_code }}"
    )
    sends = Rule.model_validate(
        {
            "name": "r",
            "on": "sign_in",
            "then": [
                {
                    "journey_event": {
                        "journey": "j",
                        "event": "churn_risk",
                        "data": {"coupon_code": "X"},
                    }
                }
            ],
        }
    )
    assert problems(text, [sends]) == []
    found = problems(text, [])
    assert len(found) == 1 and "data has no 'coupon_code'" in found[0][1], found


def test_a_journey_entered_by_a_rule_or_a_segment_has_no_event() -> None:
    text = RULE_ENTERED.replace("{{ data.value * 2 }} off", "{{ event.type }}")
    found = problems(text)
    assert len(found) == 1 and "undefined 'event'" in found[0][1], found
    segment = text.replace("entry: rule", 'entry: {segment: "tier == gold", once: true}')
    found = problems(segment.replace("{{ data.coupon_code }}", "{{ data.segment_run }}"))
    assert len(found) == 1 and "undefined 'event'" in found[0][1], found


# --------------------------------------------------------------------------- the example


AT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_the_points_expiry_automation_puts_what_the_example_shows_on_its_event(
    engine: Engine,
) -> None:
    """The automation's event carries the declared properties, and the example's message
    says how many points expire and on which date."""
    expires = AT + timedelta(days=20)
    with engine.begin() as conn:
        conn.execute(
            insert(CustomerRow),
            [{"customer_id": "A", "name": "Ann", "timezone": "Asia/Shanghai", "consent": {}}],
        )
        earned = AT - timedelta(days=345)
        lots = [(150, 120, expires), (40, 40, expires + timedelta(days=5))]
        conn.execute(
            insert(PointsLotRow),
            [
                {"customer_id": "A", "earned": e, "remaining": r, "earned_at": earned,
                 "expires_at": at}
                for e, r, at in lots
            ],
        )  # fmt: skip
        ctx = RunContext("expiry", "2026-03-01", AT, "UTC", PointsExpiryParams())
        chunk = warn_expiring(conn, ctx, None)
    [ev] = chunk.events
    props = ev["properties"]
    assert set(props) == set(AUTOMATION_EVENT_PROPERTIES["points_expiring"])
    assert (
        props["amount"] == 120 and props["date"] == "2026-03-21" and props["total_expiring"] == 160
    )

    loaded = load_journey(EXAMPLE)  # the example validates against the example programme
    node = loaded.journey.nodes["first_reminder"]
    assert isinstance(node, MessageNode)
    event = {"type": ev["type"], "occurred_at": AT.isoformat(), "properties": props}
    profile = {"name": "Ann", "points_balance": 160.0, "locale": "en"}
    message = render_message(node, profile, event=event)
    assert message.subject == "Ann, 120 points expire on 2026-03-21"
    assert "120 of your 160\npoints with Acme Rewards expire on 2026-03-21." in (message.text or "")
    second = loaded.journey.nodes["second_reminder"]
    assert isinstance(second, MessageNode)
    assert "120 points expire on 2026-03-21" in (
        render_message(second, profile, event=event).subject or ""
    )


# --------------------------------------------------------------------------- deliver


async def test_an_event_entered_journey_shows_the_entry_event_from_the_store(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """The example journey, entered on a points_expiring event: the message says how many
    points expire and when (read from the store by the deliver activity); the event's
    property values are nowhere in the workflow's history, which names the event by id."""
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, EXAMPLE.read_text())
    customer = cid("TPL", engine)
    customers(engine, tmp_path, {"customer_id": customer, "name": "Ann", "locale": "en"})
    event_id = f"{customer}-expiring"
    row = {
        "event_id": event_id,
        "customer_id": customer,
        "type": "points_expiring",
        "occurred_at": (await ts_env.get_current_time()).isoformat(),
        "properties": {
            "amount": 9876543,
            "date": "2031-07-19",
            "expires_at": "2031-07-19T15:59:59+00:00",
            "total_expiring": 9876543,
            "within_days": 30,
        },
    }
    imported = import_rows(engine, tmp_path / "e.jsonl", [row])
    assert imported.rejected == 0, imported.faults
    async with journey_worker(ts_env, engine) as queue:
        report = await dispatch_once(ts_env.client, engine, queue)
        assert report.started == 1, report
        for _ in range(100):
            if len(outbox(engine, customer)) >= 2:
                break
            await ts_env.sleep(timedelta(days=1))
    first, second = outbox(engine, customer)
    assert first.subject == "Ann, 9876543 points expire on 2031-07-19"
    assert "9876543 of your 0" in first.body_text and "expire on 2031-07-19" in first.body_text
    assert second.subject == "Last call: 9876543 points expire on 2031-07-19"
    wid = f"journey:points-expiring:{customer}:1"
    runs = await histories(ts_env, wid)
    text = "\n".join(decoded(h) + h.to_json() for h in runs)
    assert event_id in text  # the event by id …
    # … its properties stay in the store (a number long enough not to be part of a timestamp)
    assert "2031-07-19" not in text and "9876543" not in text


def test_yaml_of_the_example_is_unchanged_in_shape() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert data["entry"] == {"event": "points_expiring"}


@pytest.mark.parametrize("name", ["birthday", "points-expiring", "welcome", "winback"])
def test_every_example_journey_still_validates(name: str) -> None:
    load_journey(REPO / "examples/journeys" / f"{name}.yaml")
