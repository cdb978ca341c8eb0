"""Preview a journey's message as one customer would get it, and send it once as a test.

`preview` renders a message node of a deployed journey's active version for a customer the
way the deliver activity does (`activities.journey_activities`): the customer's message
profile from the store (`store.journeys.message_profile`), their unsubscribe link made with
the real token function, and `journeys.templates.render_message` choosing the variant for
their locale (or the one asked for). It reads only: nothing is written, no enrollment, step or
delivery is recorded. It also says whether a real send would be held back (no consent, no
address for the channel).

`send_test` sends that rendered message through the channel a worker would use (e-mail over
SMTP when it is configured, the outbox otherwise; any other configured channel as itself) to
the address given, marked as a test: the subject starts with `[TEST] ` and an e-mail carries
`X-Crmflow-Test: 1`. It is outside every cap, limit and statistic: no delivery row (the
frequency cap and the rate limit count those), no journey step, no enrollment; consent and
quiet hours are not checked (the customer receives nothing). Its unsubscribe link has the
customer's link's shape but a token signed for tests only, which the unsubscribe page refuses:
a tester clicking it (or a mailbox's one-click unsubscribe) cannot unsubscribe the customer.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    TransientSendError,
    build_channels,
)
from activities.channels.unsubscribe import make_unsubscribe_token, unsubscribe_url
from crmflow.services.errors import Invalid, NotFound, Refused, Unavailable
from crmflow.services.runtime import Runtime
from journeys.models import EventEntry, Journey, MessageNode
from journeys.templates import render_message
from store import journeys as jstore
from store.db import utcnow

TEST_SUBJECT_PREFIX = "[TEST] "
TEST_HEADER = "X-Crmflow-Test"
# the profile field that holds a customer's address on each channel (as the deliver activity)
ADDRESS_FIELD = {"email": "email", "sms": "phone", "wechat": "wechat_openid"}
# a test link's token is signed under the secret plus this: the unsubscribe page refuses it
_TEST_TOKEN_CONTEXT = "\x00crmflow-test-send"


class PreviewRequest(BaseModel):
    journey: str = Field(min_length=1, max_length=200)
    node: str = Field(min_length=1, max_length=200)
    customer_id: str = Field(min_length=1, max_length=200)
    locale: str | None = Field(
        None,
        min_length=1,
        max_length=35,
        description="render the variant for this locale instead of the customer's own",
    )


class SendTestRequest(PreviewRequest):
    to: str = Field(
        min_length=1, max_length=320, description="where the test goes (an e-mail address, …)"
    )


class MessagePreview(BaseModel):
    """A message node rendered for one customer, as the deliver activity would render it."""

    journey: str
    version: str = Field(description="the journey's active version, the one rendered")
    node: str
    channel: str
    customer_id: str
    address: str | None = Field(description="the customer's address on the channel, if any")
    locale: str | None = Field(description="the locale rendered for (asked for, or theirs)")
    variant: str | None = Field(description="the template variant chosen; None: the default")
    subject: str | None
    text: str | None
    html: str | None
    unsubscribe_url: str = Field(description="the customer's unsubscribe link")
    held_back: str | None = Field(
        None, description="why a real send would not go out now (consent, address); None: it would"
    )


class SendTestResult(BaseModel):
    journey: str
    node: str
    customer_id: str
    channel: str = Field(description="the node's channel")
    via: str = Field(description="the channel that sent it (outbox when the node's is not set up)")
    to: str
    subject: str | None
    provider_message_id: str


def _message_node(conn: Connection, journey: str, node: str) -> tuple[str, MessageNode]:
    found = jstore.deployed(conn, journey)
    if not found:
        raise NotFound(f"no journey {journey!r} is deployed")
    deployed = found[0]
    j = Journey.model_validate(deployed.definition)
    messages = sorted(n for n, spec in j.nodes.items() if isinstance(spec, MessageNode))
    spec = j.nodes.get(node)
    if spec is None:
        listed = ", ".join(messages) or "none"
        raise NotFound(f"journey {journey!r} has no node {node!r}; its message nodes: {listed}")
    if not isinstance(spec, MessageNode):
        listed = ", ".join(messages) or "none"
        article = "an" if spec.type[:1] in "aeiou" else "a"
        raise Refused(
            f"node {node!r} of journey {journey!r} is {article} {spec.type} node, not a message; "
            f"its message nodes: {listed}"
        )
    return deployed.version, spec


def _address(channel: str, profile: dict[str, Any]) -> str | None:
    if channel in ("email", "sms"):
        value = profile.get(ADDRESS_FIELD[channel])
    elif channel == "wechat":
        value = (profile.get("attributes") or {}).get("wechat_openid")
    else:
        return None
    return value if isinstance(value, str) and value else None


def _held_back(channel: str, profile: dict[str, Any]) -> str | None:
    """What the deliver activity would suppress the send for (consent, address)."""
    consent = profile.get("consent") or {}
    if (channel in ADDRESS_FIELD or channel == "webhook") and consent.get(channel) is not True:
        return f"no consent for {channel}"
    if channel in ADDRESS_FIELD and _address(channel, profile) is None:
        return f"no {ADDRESS_FIELD[channel]} for {channel}"
    return None


def _render(rt: Runtime, req: PreviewRequest, *, for_test: bool) -> MessagePreview:
    s = rt.settings
    with rt.engine.connect() as conn:
        version, node = _message_node(conn, req.journey, req.node)
        profile = jstore.message_profile(conn, req.customer_id, utcnow())
        spec = Journey.model_validate(jstore.deployed(conn, req.journey)[0].definition)
        event = (
            jstore.latest_event(conn, req.customer_id, spec.entry.event)
            if isinstance(spec.entry, EventEntry)
            else None
        )
    if profile is None:
        raise NotFound(f"no customer with id {req.customer_id!r}")
    secret = s.unsubscribe_secret.get_secret_value()
    if for_test:
        secret += _TEST_TOKEN_CONTEXT
    token = make_unsubscribe_token(secret, req.customer_id, node.channel, req.journey)
    link = unsubscribe_url(s.public_base_url, token)
    try:
        # as the deliver activity renders it; the entry event is the customer's latest of
        # the journey's entry type (a rule's data is not known outside an enrollment)
        rendered = render_message(
            node,
            profile,
            req.locale,
            unsubscribe_url=link,
            journey=req.journey,
            event=event,
            data={},
        )
    except Exception as exc:  # jinja2 errors, the template limits: it cannot render for them
        raise Refused(
            f"node {req.node!r} of journey {req.journey!r} does not render for customer "
            f"{req.customer_id!r}: {type(exc).__name__}: {exc}"
        ) from exc
    locale = req.locale or profile.get("locale")
    return MessagePreview(
        journey=req.journey,
        version=version,
        node=req.node,
        channel=node.channel,
        customer_id=req.customer_id,
        address=_address(node.channel, profile),
        locale=locale if isinstance(locale, str) else None,
        variant=rendered.locale,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        unsubscribe_url=link,
        held_back=_held_back(node.channel, profile),
    )


def preview(rt: Runtime, req: PreviewRequest) -> MessagePreview:
    """Render message node `req.node` of deployed journey `req.journey` for a customer, as the
    deliver activity would now. Reads only. `NotFound` for an unknown journey, node or
    customer; `Refused` for a node that is not a message or a template that does not render
    for this customer."""
    return _render(rt, req, for_test=False)


def _test_message(rt: Runtime, req: SendTestRequest) -> tuple[OutgoingMessage, str]:
    shown = _render(rt, req, for_test=True)
    to = req.to.strip()
    if shown.channel == "email":
        try:
            to = validate_email(to, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise Invalid(f"not an e-mail address: {exc}", field="to") from exc
    subject = shown.subject
    text = shown.text
    if subject is not None:
        subject = TEST_SUBJECT_PREFIX + subject
    elif text is not None:  # a channel without subjects (SMS): the text says it
        text = TEST_SUBJECT_PREFIX + text
    # unique per test: the outbox keeps every test, and no journey key prefix (rate limit)
    key = f"test:{uuid.uuid4().hex}:{req.journey}:{req.node}"[:250]
    message = OutgoingMessage(
        dedupe_key=key,
        customer_id=req.customer_id,
        channel=shown.channel,
        to=to,
        subject=subject,
        text=text,
        html=shown.html,
        headers={TEST_HEADER: "1"} if shown.channel == "email" else {},
        unsubscribe_url=shown.unsubscribe_url if shown.channel == "email" else None,
        data={"journey": req.journey, "node": req.node, "test": True},
    )
    return message, shown.channel


async def send_test(rt: Runtime, req: SendTestRequest) -> SendTestResult:
    """Send the preview of `req.node` for `req.customer_id` to `req.to` as a test, through the
    channel a worker would use (the outbox when the node's channel is not configured). No
    delivery, step or enrollment is recorded; no cap or limit is consulted or counted.
    `Invalid` for a bad address; `Refused` when the channel refuses the message or is set up
    by halves; `Unavailable` when it does not answer now."""
    message, channel_name = await asyncio.to_thread(_test_message, rt, req)
    try:
        channels = build_channels(rt.settings, rt.engine)
    except ValueError as exc:
        raise Refused(f"the channels are not set up: {exc}") from exc
    channel = channels.get(channel_name) or channels["outbox"]
    try:
        sent = await channel.send(message)
    except PermanentSendError as exc:
        raise Refused(f"the {channel.name} channel refused the test message: {exc}") from exc
    except TransientSendError as exc:
        raise Unavailable(f"the {channel.name} channel cannot send now: {exc}") from exc
    return SendTestResult(
        journey=req.journey,
        node=req.node,
        customer_id=req.customer_id,
        channel=channel_name,
        via=channel.name,
        to=message.to or req.to,
        subject=message.subject,
        provider_message_id=sent.provider_message_id,
    )
