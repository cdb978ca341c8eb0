"""Rate limits and frequency caps are places reserved before a send, on both databases and
under concurrency; retries do not bypass them; an abandoned send gives its place back;
a transactional journey is exempt from the cap; every attempt is logged; an enrollment
says what it waits for and until when."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import Engine, select
from temporalio.testing import WorkflowEnvironment

from activities.channels.webhook import WebhookChannel
from crmflow.contracts.journeys import EnrollmentPosition
from crmflow.settings import Settings
from store import send_limits
from store.models import DeliveryAttemptRow, DeliveryRow, EnrollmentRow
from tests.channel_servers import RecordingHTTPServer
from tests.test_journey_workflow import customers, journey, settings, start, worker
from workflows.journey import JourneyWorkflow

AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def webhook_journey(name: str, per_minute: int | None = None, cap: str = "skip") -> str:
    limit = f"rate_limit_per_minute: {per_minute}\n" if per_minute else ""
    return f"""
journey: {name}
entry: rule
channels: [webhook]
frequency_cap_policy: {cap}
{limit}start: ping
nodes:
  ping:
    type: message
    channel: webhook
    template: {{text: "order {{{{ customer.customer_id }}}} shipped"}}
    next: done
  done: {{type: exit}}
"""


@asynccontextmanager
async def hook_worker(
    env: WorkflowEnvironment, engine: Engine, url: str, conf: Settings | None = None
) -> AsyncIterator[str]:
    # one request per activity attempt: every retry is Temporal's, and counted
    hook = WebhookChannel(url, "whsec-limits", attempts=1, base_delay=0)
    async with worker(env, engine, conf, {"webhook": hook}) as queue:
        yield queue


def people(engine: Engine, tmp_path: Path, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(1, n + 1)]
    customers(engine, tmp_path, *({"customer_id": c, "consent": {"webhook": True}} for c in ids))
    return ids


def attempts(engine: Engine, customer_ids: list[str]) -> list[Any]:
    a = DeliveryAttemptRow
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(a.at, a.outcome, a.attempt, a.latency_ms, a.response)
                .where(a.customer_id.in_(customer_ids))
                .order_by(a.at)
            )
        )


def sends(channel: str, outcome: str) -> float:
    labels = {"channel": channel, "outcome": outcome}
    return REGISTRY.get_sample_value("crmflow_sends_total", labels) or 0.0


async def _results(handles: list[Any]) -> list[Any]:
    # one result awaited at a time: the time-skipping server skips ahead while one is
    # awaited (awaited together, it stopped skipping once some had finished)
    return [await h.result() for h in handles]


def most_in_a_minute(times: list[datetime]) -> int:
    """The most of `times` in any window of one minute (sliding)."""
    times = sorted(times)
    return max((sum(1 for u in times if t - MINUTE < u <= t) for t in times), default=0)


# --------------------------------------------------------------------------- the store


def test_concurrent_reservations_never_exceed_the_limit(engine: Engine) -> None:
    """Sixteen workers' threads reserve at the same instant under a limit of five: five
    places are taken, and the others are told when the window has room."""
    limit = send_limits.Limit(send_limits.rate_scope(f"race-{uuid.uuid4().hex[:6]}"), 5, MINUTE)

    def one(n: int) -> Any:
        with engine.begin() as conn:
            return send_limits.reserve(conn, [(limit, f"k{n}")], workflow_id=None, at=AT)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    taken = [r for r in results if r is None]
    assert len(taken) == 5
    assert {r[1] for r in results if r is not None} == {AT + MINUTE}
    with engine.connect() as conn:
        assert send_limits.held_count(conn, limit.scope, AT - MINUTE) == 5


def test_a_message_keeps_its_place_through_retries_and_gives_it_back(engine: Engine) -> None:
    cap = send_limits.Limit(send_limits.cap_scope(f"C-{uuid.uuid4().hex[:6]}"), 2, MINUTE * 60)
    with engine.begin() as conn:

        def reserve(key: str, wid: str, at: datetime = AT) -> Any:
            return send_limits.reserve(conn, [(cap, key)], workflow_id=wid, at=at)

        assert reserve("a", "w1") is None and reserve("b", "w2") is None
        # full for a third message …
        full = reserve("c", "w3")
        assert full is not None and full[1] == AT + MINUTE * 60
        # … but a retry of "a" keeps its own place
        later = AT + timedelta(seconds=30)
        assert reserve("a", "w1", later) is None
        send_limits.settle(conn, ["a"], send_limits.RELEASED, later)  # "a" is abandoned
        assert reserve("c", "w3", later) is None
        # an enrollment that ended gives back what it held
        assert send_limits.release_enrollment(conn, "w2", later) == 1
        assert send_limits.held_count(conn, cap.scope, AT - MINUTE) == 1


# --------------------------------------------------------------------------- workflows


async def test_retries_do_not_bypass_the_rate_limit(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """The issue's case: limited to 2 per minute, the provider answering 503 to the first
    four attempts. Before, all six went out within a second. Now every attempt — first
    tries and retries — keeps to two per minute, and all six arrive."""
    name = f"hook-{uuid.uuid4().hex[:6]}"
    ids = people(engine, tmp_path, f"R{uuid.uuid4().hex[:4]}-", 6)
    before = {o: sends("webhook", o) for o in ("sent", "retried")}
    with RecordingHTTPServer([503, 503, 503, 503]) as server:
        async with hook_worker(ts_env, engine, server.url) as queue:
            handles = [
                await start(ts_env, queue, journey(webhook_journey(name, 2)), c) for c in ids
            ]
            results = await _results(handles)
    assert [r.sent for r in results] == [1] * 6
    logged = attempts(engine, ids)
    # the worker's metrics count the same
    assert sends("webhook", "retried") - before["retried"] == 4
    assert sends("webhook", "sent") - before["sent"] == 6
    outcomes = [r.outcome for r in logged]
    # four refusals, six sends (a send is logged again only if its worker lost it mid-way)
    assert outcomes.count("transient") == 4 and outcomes.count("sent") >= 6, outcomes
    assert all(r.latency_ms is not None and r.latency_ms >= 0 for r in logged)
    assert most_in_a_minute([r.at for r in logged]) <= 2
    sent = [r.at for r in logged if r.outcome == "sent"]
    assert most_in_a_minute(sent) <= 2
    assert max(sent) - min(sent) >= 2 * MINUTE  # six at two a minute: three minutes' worth


async def test_an_abandoned_send_gives_its_place_under_the_cap_back(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """A message the provider refused for good was never received: it does not count
    against the customer's frequency cap (a cap of one: the next message still goes)."""
    ids = people(engine, tmp_path, f"P{uuid.uuid4().hex[:4]}-", 1)
    # a window long enough that no skip of the shared test server's clock (to another
    # test's far timer, while a result is awaited) reaches its end
    conf = settings(frequency_cap_messages=1, frequency_cap_days=36500)
    first = journey(webhook_journey(f"hook-{uuid.uuid4().hex[:6]}"))
    second = journey(webhook_journey(f"hook-{uuid.uuid4().hex[:6]}"))
    with RecordingHTTPServer([400]) as server:  # a permanent refusal for the first
        async with hook_worker(ts_env, engine, server.url, conf) as queue:
            r1 = await (await start(ts_env, queue, first, ids[0])).result()
            r2 = await (await start(ts_env, queue, second, ids[0])).result()
    assert (r1.sent, r2.sent) == (0, 1)
    logged = attempts(engine, ids)
    assert [r.outcome for r in logged] == ["permanent", "sent"]
    assert "HTTP 400" in (logged[0].response or "")


async def test_a_transactional_journey_is_exempt_from_the_frequency_cap(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    ids = people(engine, tmp_path, f"T{uuid.uuid4().hex[:4]}-", 1)
    # a window long enough that no skip of the shared test server's clock (to another
    # test's far timer, while a result is awaited) reaches its end
    conf = settings(frequency_cap_messages=1, frequency_cap_days=36500)
    marketing = journey(webhook_journey(f"promo-{uuid.uuid4().hex[:6]}"))
    receipts = journey(webhook_journey(f"receipt-{uuid.uuid4().hex[:6]}", cap="exempt"))
    with RecordingHTTPServer() as server:
        async with hook_worker(ts_env, engine, server.url, conf) as queue:
            assert (await (await start(ts_env, queue, marketing, ids[0])).result()).sent == 1
            # the cap is reached: another promotion is skipped …
            again = journey(webhook_journey(f"promo2-{uuid.uuid4().hex[:6]}"))
            assert (await (await start(ts_env, queue, again, ids[0])).result()).sent == 0
            # … while the receipt goes out, and does not count against the cap
            assert (await (await start(ts_env, queue, receipts, ids[0])).result()).sent == 1
    with engine.connect() as conn:
        reasons = conn.execute(
            select(DeliveryRow.status, DeliveryRow.reason)
            .where(DeliveryRow.customer_id == ids[0])
            .order_by(DeliveryRow.id)
        ).all()
        held = send_limits.held_count(
            conn, send_limits.cap_scope(ids[0]), AT - timedelta(days=3650)
        )
    assert [s for s, _ in reasons] == ["sent", "suppressed", "sent"]
    assert "frequency cap: 1 messages in 36500 days" in str(reasons[1][1])
    assert held == 1


async def _until(check: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def enrollment(engine: Engine, customer_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(EnrollmentRow).where(EnrollmentRow.customer_id == customer_id)
        ).first()


WAITS = """
journey: waits
entry: rule
channels: [email]
start: hello
nodes:
  hello:
    type: message
    channel: email
    template: {subject: "Hi", text: "Hi {{ unsubscribe_url }}"}
    next: pause
  pause: {type: delay, duration: 3d, next: listen}
  listen:
    type: wait_for
    event: purchase
    timeout: 5d
    on_event: done
    on_timeout: done
  done: {type: exit}
"""


async def test_an_enrollment_says_what_it_waits_for_and_until_when(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    cid = f"W{uuid.uuid4().hex[:6]}"
    customers(engine, tmp_path, {"customer_id": cid})
    async with worker(ts_env, engine) as queue:
        handle = await start(ts_env, queue, journey(WAITS), cid)
        # the time-skipping server runs in real time while nobody awaits a result
        row = await _until(
            lambda: (r := enrollment(engine, cid)) is not None and r.waiting_for and r
        )
        assert (row.node, row.waiting_for, row.wait_detail) == ("pause", "delay", "delay pause")
        assert row.wait_until - row.node_since == timedelta(days=3)
        position = EnrollmentPosition.model_validate(await handle.query(JourneyWorkflow.position))
        assert position.node == "pause" and position.waiting is not None
        assert position.waiting.waiting_for == "delay"
        # the store's end is counted from the send, the workflow's from just after it
        assert position.waiting.until is not None
        assert abs(position.waiting.until - row.wait_until) < timedelta(seconds=5)
        await handle.result()
    row = enrollment(engine, cid)
    assert row.status == "completed" and row.waiting_for is None and row.wait_until is None


async def test_quiet_hours_and_the_rate_limit_are_named_as_what_it_waits_for(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    quiet = f"Q{uuid.uuid4().hex[:6]}"
    customers(engine, tmp_path, {"customer_id": quiet, "timezone": "Asia/Shanghai"})
    conf = settings(quiet_hours_start="00:00", quiet_hours_end="23:59")
    async with hook_worker(ts_env, engine, "http://127.0.0.1:9/hook", conf) as queue:
        handle = await start(ts_env, queue, journey(WAITS), quiet)
        row = await _until(
            lambda: (r := enrollment(engine, quiet)) is not None and r.waiting_for and r
        )
        assert row.waiting_for == "quiet_hours" and row.node == "hello"
        assert "Asia/Shanghai" in row.wait_detail and "23:59" in row.wait_detail
        await handle.terminate("done looking")

    name = f"hook-{uuid.uuid4().hex[:6]}"
    ids = people(engine, tmp_path, f"L{uuid.uuid4().hex[:4]}-", 2)
    with RecordingHTTPServer() as server:
        async with hook_worker(ts_env, engine, server.url) as queue:
            first = await start(ts_env, queue, journey(webhook_journey(name, 1)), ids[0])
            await _until(lambda: len(server.requests) == 1)
            second = await start(ts_env, queue, journey(webhook_journey(name, 1)), ids[1])
            row = await _until(
                lambda: (r := enrollment(engine, ids[1])) is not None and r.waiting_for and r
            )
            assert row.waiting_for == "rate_limit" and row.wait_detail == "rate limit: 1 per minute"
            assert row.wait_until is not None
            await _results([first, second])
