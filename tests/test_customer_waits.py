"""The 360 view (API and console) says what each running enrollment waits for and until when,
from what the journey activities record; an ended one waits for nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from crmflow.services.customer_views import customer_page
from crmflow.services.customers import customer_360
from crmflow.services.runtime import Runtime
from store import journeys as jstore
from tests.test_journey_workflow import customers, settings

AT = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def enroll(engine: Engine, cid: str, journey: str, wait: jstore.Wait | None) -> str:
    wid = f"journey:{journey}:{cid}:1"
    with engine.begin() as conn:
        jstore.ensure_enrollment(
            conn, workflow_id=wid, journey=journey, version="v1", customer_id=cid,
            entry_no=1, entered_at=AT, node="listen",
        )  # fmt: skip
        jstore.set_wait(conn, wid, wait)
    return wid


def test_the_360_view_says_what_each_enrollment_waits_for(engine: Engine, tmp_path: Path) -> None:
    cid = f"V{uuid.uuid4().hex[:6]}"
    customers(engine, tmp_path, {"customer_id": cid})
    until = AT + timedelta(days=5)
    enroll(engine, cid, "welcome", jstore.Wait("event", until, "purchase"))
    enroll(engine, cid, "winback", jstore.Wait("rate_limit", AT, "rate limit: 100 per minute"))
    ended = enroll(engine, cid, "birthday", jstore.Wait("delay", until, "delay on_the_day"))
    with engine.begin() as conn:
        jstore.move_enrollment(conn, ended, node="done", at=AT, finish="completed")
    rt = Runtime(settings(), engine)
    try:
        view = customer_360(rt, cid, mask=True)
        places = {p.journey: p for p in view.journeys}
        assert places["welcome"].waiting_for == "event"
        assert places["welcome"].wait_until == until
        assert places["welcome"].wait_detail == "purchase"
        assert places["birthday"].waiting_for is None  # it ended
        page = customer_page(rt, cid, mask=True)
    finally:
        rt.close()
    why = {line.journey: line.why for line in page.journeys}
    assert why["welcome"] == (
        "waits for event purchase until 2026-12-08 09:00 UTC (then it times out)"
    )
    assert why["winback"] == (
        "a message waits for the rate limit: 100 per minute until 2026-12-03 09:00 UTC"
    )
    assert why["birthday"] is None
