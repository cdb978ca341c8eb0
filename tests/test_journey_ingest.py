"""What the event path does for journeys: unsubscribes revoke consent at once, and events a
journey listens to are handed to it through the outbox, in the event's transaction."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import Engine, select

from journeys.models import Journey
from store.journeys import deploy_journey, set_status
from store.models import AuditRow, CustomerRow, JourneyCommandRow
from tests.rules_helpers import REPO, deploy_dir, event, import_rows

LISTENER = """
journey: listener
entry: {event: sign_up}
goal: {event: purchase, within_days: 7}
exit_on: [unsubscribed]
start: w
nodes:
  w: {type: wait_for, event: clicked, timeout: 1d, on_event: done, on_timeout: done}
  done: {type: exit}
"""


def deploy(engine: Engine, text: str) -> None:
    j = Journey.model_validate(yaml.safe_load(text))
    with engine.begin() as conn:
        deploy_journey(conn, j.journey, j.definition(), text, "test")


def commands(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(JourneyCommandRow.journey, JourneyCommandRow.command, JourneyCommandRow.event)
            .where(JourneyCommandRow.rule.is_(None))
            .order_by(JourneyCommandRow.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_an_unsubscribe_revokes_consent_in_the_same_transaction(
    engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(
        engine,
        tmp_path / "c.jsonl",
        [{"customer_id": "U", "consent": {"email": True, "sms": True}}],
        "customers",
    )
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "U", "unsubscribed", channel="email")])
    with engine.connect() as conn:
        consent = conn.execute(
            select(CustomerRow.consent).where(CustomerRow.customer_id == "U")
        ).scalar_one()
        audit = conn.execute(select(AuditRow.kind, AuditRow.detail)).all()
    assert consent == {"email": False, "sms": True}
    assert ("consent", {"revoked": ["email"]}) in [tuple(a) for a in audit]
    import_rows(engine, tmp_path / "e.jsonl", [event(2, "U", "unsubscribed")])  # every channel
    with engine.connect() as conn:
        consent = conn.execute(
            select(CustomerRow.consent).where(CustomerRow.customer_id == "U")
        ).scalar_one()
    assert consent == {"email": False, "sms": False}


def test_events_a_journey_listens_to_go_to_the_outbox(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    deploy(engine, LISTENER)
    rows = [
        event(1, "A", "sign_up"),
        event(2, "A", "page_view"),
        event(3, "A", "clicked"),
        event(4, "A", "purchase", amount=10.0),
        event(5, "A", "unsubscribed"),
    ]
    import_rows(engine, tmp_path / "e.jsonl", rows)
    assert commands(engine) == [
        ("listener", "event", "sign_up"),
        ("listener", "event", "clicked"),
        ("listener", "event", "purchase"),
        ("listener", "event", "unsubscribed"),
    ]
    with engine.begin() as conn:
        set_status(conn, "listener", "archived")
    import_rows(engine, tmp_path / "e.jsonl", [event(6, "A", "purchase", amount=1.0)])
    assert len(commands(engine)) == 4  # an archived journey listens to nothing


def test_an_unsubscribe_revokes_consent_with_no_rules_deployed(
    engine: Engine, tmp_path: Path
) -> None:
    import_rows(
        engine,
        tmp_path / "c.jsonl",
        [{"customer_id": "N", "consent": {"email": True}}],
        "customers",
    )
    report = import_rows(
        engine, tmp_path / "e.jsonl", [event(1, "N", "unsubscribed", channel="email")]
    )
    assert report.unprocessed == 1  # stored for the rules to process later …
    with engine.connect() as conn:
        consent = conn.execute(
            select(CustomerRow.consent).where(CustomerRow.customer_id == "N")
        ).scalar_one()
    assert consent == {"email": False}  # … but the consent is gone at once
