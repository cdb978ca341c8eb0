"""The demo's new sign-ups: three customers who join *now*, so that `crmflow demo` shows the
welcome journey deliver during the run, and prints the messages as each customer gets them.

The sign-ups are fixed customers (`DEMO_SIGN_UPS`) with one `sign_up` event each, stored
through the same services as the API (`upsert_customers`, `store_events`). The event's time
is the moment of the first run: a later run reads it back from the store and sends the same
event again, so it is a duplicate and changes nothing (the welcome journey is `reentry:
never` as well).

Quiet hours (21:00 to 08:00 on the customer's own clock by default) hold a message until they
end. The three customers live eight hours apart (Shanghai, London, Los Angeles): with
13 hours open a day on each clock, at every hour of the day at least one of them may be sent
to. `send_times` says beforehand, by the rule the journey worker applies
(`journeys.timing.next_send_time`), who is sent to now and who waits until when; the demo
waits (bounded) for the messages that should go now, then reports what the store holds —
messages sent during this run, and for each sign-up without one, why it waits.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import Engine, and_, func, select

from crmflow.domain import Event
from crmflow.ingest_report import IngestReport
from crmflow.services.customers import upsert_customers
from crmflow.services.events import store_events
from crmflow.services.operations import mask_address
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from journeys.timing import next_send_time
from store.models import CustomerRow, DeliveryRow, EnrollmentRow, EventRow, OutboxMessageRow

WELCOME = "welcome"  # the journey the welcome-bonus rule enrolls a sign-up in
DECIDED = ("sent", "suppressed", "failed")  # a delivery that is no longer under way
SHOWN = 3  # messages printed in full
LINES = 4  # lines of each message's text printed
WIDTH = 100  # characters of each printed line
URL_WIDTH = 48  # characters of a link in it (an unsubscribe link is long)


@dataclass(frozen=True)
class SignUp:
    """One of the demo's new customers."""

    customer_id: str
    name: str
    email: str
    timezone: str
    locale: str
    city: str

    @property
    def event_id(self) -> str:
        return f"demo-sign-up-{self.customer_id}"

    def profile(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "name": self.name,
            "email": self.email,
            "timezone": self.timezone,
            "locale": self.locale,
            "consent": {"email": True},
            "attributes": {"city": self.city},
        }


# eight hours apart, so that quiet hours never hold all three (see the module's docstring)
DEMO_SIGN_UPS = (
    SignUp("C0901", "Zhou Xin", "zhou.xin@example.com", "Asia/Shanghai", "zh-CN", "Shanghai"),
    SignUp(
        "C0902", "Amelia Clarke", "amelia.clarke@example.com", "Europe/London", "en-GB", "London"
    ),
    SignUp(
        "C0903",
        "Diego Alvarez",
        "diego.alvarez@example.com",
        "America/Los_Angeles",
        "en-US",
        "Los Angeles",
    ),
)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def sign_up_events(engine: Engine, now: datetime, people: Sequence[SignUp]) -> list[Event]:
    """One `sign_up` per person, at `now` — or at the time stored by an earlier run, so the
    same event is sent again (a duplicate, not a conflict)."""
    ids = [p.event_id for p in people]
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(EventRow.event_id, EventRow.occurred_at).where(EventRow.event_id.in_(ids))
            ).all()
        )
    at = now.replace(microsecond=0)
    return [
        Event(
            event_id=p.event_id,
            customer_id=p.customer_id,
            type="sign_up",
            occurred_at=_aware(stored.get(p.event_id, at)),
            properties={"channel": "app"},
        )
        for p in people
    ]


def add_sign_ups(
    rt: Runtime, now: datetime, people: Sequence[SignUp] = DEMO_SIGN_UPS
) -> tuple[IngestReport, IngestReport]:
    """Store the customers, then their sign-ups through the rules (the welcome-bonus rule
    enrolls each in the welcome journey): the two reports."""
    customers = upsert_customers(rt, [p.profile() for p in people])
    events = store_events(rt, sign_up_events(rt.engine, now, people))
    return customers, events


def send_times(
    settings: Settings, now: datetime, people: Sequence[SignUp] = DEMO_SIGN_UPS
) -> dict[str, datetime]:
    """When quiet hours let each person's message go: `now` for those not held."""
    return {
        p.customer_id: next_send_time(
            now, p.timezone, settings.quiet_hours_start, settings.quiet_hours_end
        )
        for p in people
    }


def _decided(engine: Engine, customer_ids: list[str]) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(DeliveryRow.customer_id).where(
                DeliveryRow.customer_id.in_(customer_ids), DeliveryRow.status.in_(DECIDED)
            )
        ).all()
    return {r[0] for r in rows}


async def wait_for_deliveries(engine: Engine, customer_ids: list[str], timeout: float) -> float:
    """Wait until each of `customer_ids` has a delivery decided (sent, suppressed or failed),
    at most `timeout` seconds; the seconds waited."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    want = set(customer_ids)
    while want and not want <= await asyncio.to_thread(_decided, engine, sorted(want)):
        if loop.time() - started >= timeout:
            break
        await asyncio.sleep(0.25)
    return round(loop.time() - started, 1)


class DemoMessage(BaseModel):
    """A message as its customer got it."""

    customer_id: str
    name: str | None
    timezone: str
    channel: str
    via: str | None  # the channel that carried it (`outbox` when SMTP is not configured)
    to: str | None  # masked
    subject: str | None
    lines: list[str]
    sent_at: datetime
    this_run: bool


class Waiting(BaseModel):
    """A demo sign-up whose welcome message has not gone out, and why."""

    customer_id: str
    name: str
    timezone: str
    reason: str
    until: datetime | None = None  # UTC
    until_local: str | None = None  # on the customer's clock


class MessagesReport(BaseModel):
    """What the journeys delivered during this run, a few messages in full, and the demo's
    sign-ups still waiting."""

    since: datetime
    sent_this_run: int
    by_channel: dict[str, int]
    shown: list[DemoMessage]
    waiting: list[Waiting]
    waited_seconds: float


def _short_url(m: re.Match[str]) -> str:
    url = m[0]
    return url if len(url) <= URL_WIDTH else url[: URL_WIDTH - 1] + "…"


def _first_lines(text: str | None) -> list[str]:
    """The text's first non-blank lines, long links and lines cut short."""
    lines = [
        re.sub(r"https?://\S+", _short_url, line.strip())
        for line in (text or "").splitlines()
        if line.strip()
    ]
    return [line if len(line) <= WIDTH else line[: WIDTH - 1] + "…" for line in lines[:LINES]]


def _shown(engine: Engine, since: datetime, customer_ids: list[str]) -> list[DemoMessage]:
    """Up to `SHOWN` sent messages: this run's first (the demo's sign-ups before others),
    then the sign-ups' messages from earlier runs."""
    d, c, o = DeliveryRow, CustomerRow, OutboxMessageRow
    ours = d.customer_id.in_(customer_ids)
    query = (
        select(
            d.customer_id,
            c.name,
            c.timezone,
            c.email,
            c.phone,
            d.channel,
            d.meta,
            o.address,
            d.subject,
            d.body,
            d.sent_at,
        )
        .join(c, c.customer_id == d.customer_id)
        .outerjoin(o, o.dedupe_key == d.dedupe_key)
        .where(d.status == "sent", d.sent_at.is_not(None))
        .where((d.sent_at >= since) | ours)
        .order_by((d.sent_at >= since).desc(), ours.desc(), d.sent_at, d.id)
        .limit(SHOWN)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    shown = []
    for r in rows:
        sent_at = _aware(r.sent_at)
        default = r.email if r.channel == "email" else r.phone if r.channel == "sms" else None
        shown.append(
            DemoMessage(
                customer_id=r.customer_id,
                name=r.name,
                timezone=r.timezone or "UTC",
                channel=r.channel,
                via=(r.meta or {}).get("via"),
                to=mask_address(r.address or default),
                subject=r.subject,
                lines=_first_lines(r.body),
                sent_at=sent_at,
                this_run=sent_at >= since,
            )
        )
    return shown


def _waiting(
    engine: Engine, settings: Settings, now: datetime, people: Sequence[SignUp]
) -> list[Waiting]:
    ids = [p.customer_id for p in people]
    with engine.connect() as conn:
        deliveries: dict[str, list[tuple[str, str | None]]] = {}
        for cid, status, reason in conn.execute(
            select(DeliveryRow.customer_id, DeliveryRow.status, DeliveryRow.reason).where(
                DeliveryRow.customer_id.in_(ids)
            )
        ).all():
            deliveries.setdefault(cid, []).append((status, reason))
        enrolled = {
            r[0]
            for r in conn.execute(
                select(EnrollmentRow.customer_id).where(
                    EnrollmentRow.customer_id.in_(ids), EnrollmentRow.journey == WELCOME
                )
            ).all()
        }
    waits = []
    for p in people:
        found = deliveries.get(p.customer_id, [])
        if any(status == "sent" for status, _ in found):
            continue
        if found:
            status, reason = found[0]
            waits.append(
                Waiting(
                    customer_id=p.customer_id,
                    name=p.name,
                    timezone=p.timezone,
                    reason=f"not sent: {status}" + (f" ({reason})" if reason else ""),
                )
            )
            continue
        if p.customer_id not in enrolled:
            waits.append(
                Waiting(
                    customer_id=p.customer_id,
                    name=p.name,
                    timezone=p.timezone,
                    reason=f"not enrolled in {WELCOME} yet (the journey outbox was not "
                    "handed over during the run)",
                )
            )
            continue
        at = next_send_time(now, p.timezone, settings.quiet_hours_start, settings.quiet_hours_end)
        if at > now:
            local = at.astimezone(ZoneInfo(p.timezone))
            waits.append(
                Waiting(
                    customer_id=p.customer_id,
                    name=p.name,
                    timezone=p.timezone,
                    reason=f"held by quiet hours ({settings.quiet_hours_start} to "
                    f"{settings.quiet_hours_end} on the customer's clock)",
                    until=at.astimezone(UTC),
                    until_local=f"{local:%Y-%m-%d %H:%M} {p.timezone}",
                )
            )
        else:
            waits.append(
                Waiting(
                    customer_id=p.customer_id,
                    name=p.name,
                    timezone=p.timezone,
                    reason="not sent yet: the worker had not sent it when the demo stopped "
                    "waiting; it goes out with the next worker (`crmflow up`)",
                )
            )
    return waits


def messages_report(
    engine: Engine,
    settings: Settings,
    since: datetime,
    now: datetime,
    waited: float,
    people: Sequence[SignUp] = DEMO_SIGN_UPS,
) -> MessagesReport:
    """What the store holds after the run: sends since `since` (the run's start) by channel,
    a few messages in full, and the sign-ups that still wait (why, until when)."""
    with engine.connect() as conn:
        by_channel = {
            str(ch): int(n)
            for ch, n in conn.execute(
                select(DeliveryRow.channel, func.count())
                .where(and_(DeliveryRow.status == "sent", DeliveryRow.sent_at >= since))
                .group_by(DeliveryRow.channel)
            ).all()
        }
    return MessagesReport(
        since=since,
        sent_this_run=sum(by_channel.values()),
        by_channel=by_channel,
        shown=_shown(engine, since, [p.customer_id for p in people]),
        waiting=_waiting(engine, settings, now, people),
        waited_seconds=waited,
    )


def describe(report: MessagesReport, smtp: bool) -> list[str]:
    """The demo's lines for `report` (plain text: print without markup)."""
    where = "" if smtp else " (SMTP is not configured: e-mail goes to the outbox_messages table)"
    out = [f"  Messages sent during this run: {report.sent_this_run}{where}"]
    if report.sent_this_run == 0 and any(not m.this_run for m in report.shown):
        out.append("    the demo's sign-ups got theirs on an earlier run:")
    for m in report.shown:
        local = m.sent_at.astimezone(ZoneInfo(m.timezone))
        when = "" if m.this_run else " (an earlier run)"
        via = f" via {m.via}" if m.via and m.via != m.channel else ""
        out.append(
            f"    {m.channel}{via} to {m.name or m.customer_id} <{m.to or '-'}>, "
            f"{local:%Y-%m-%d %H:%M} {m.timezone}{when}"
        )
        out.append(f"      Subject: {m.subject or '(none)'}")
        out.extend(f"      | {line}" for line in m.lines)
    for w in report.waiting:
        until = (
            f" until {w.until_local} ({w.until:%Y-%m-%d %H:%M} UTC)" if w.until is not None else ""
        )
        out.append(f"    {w.name} ({w.customer_id}, {w.timezone}): {w.reason}{until}")
    out.append("    (`crmflow outbox list`, `crmflow journeys enrollments welcome`)")
    return out
