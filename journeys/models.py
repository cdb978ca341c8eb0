"""The journey file format, as pydantic models: the single description of a journey.

The loader validates with these models and `crmflow journeys schema` publishes their JSON
Schema for editors. Conditions and effects are the rules language's own (`rules.models`):
a branch tests the same facts with the same operators as a rule, and an `update` node
applies the same effects.

A journey file:

    journey: welcome
    description: Greet new members; nudge the ones who have not bought after two days
    entry: rule                       # or {event: sign_up, when: ...}
                                      # or {segment: <condition>, schedule: "0 9 * * 1"}
                                      # or {segment: <condition>, once: true}
    reentry: never                    # or {after_days: 90} and/or {max_times: 3}
    goal: {event: purchase, within_days: 14}
    exit_on: [unsubscribed]
    channels: [email, sms]
    start: hello
    nodes:
      hello:
        type: message
        channel: email
        template:
          subject: "Welcome, {{ customer.name }}"
          text: "..."
          variants:
            zh-CN: {subject: "...", text: "..."}
        next: wait
      wait: {type: delay, duration: 2d, next: bought}
      bought:
        type: branch
        cases:
          - {when: purchases_30d >= 1, next: done}
        default: nudge
      nudge: {type: message, channel: email, template: {...}, next: done}
      done: {type: exit}

Graph checks (every `next` names a node, every node is reachable, every path ends, every
loop waits), channels, events, templates and conditions are checked by `journeys.validate`,
which knows the file's lines and the programme.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from automations.cron import check_cron, check_timezone
from journeys.timing import WEEKDAYS, parse_clock, parse_duration
from rules.models import Condition, Effect, Name, Strict

Channel = Literal["email", "sms", "wechat", "webhook", "outbox"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
HOLDOUT = "holdout"  # the name `assign_variant` gives the holdout group; no variant may use it
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
NodeId = Annotated[
    str, Field(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$", description="a node's id (lower case)")
]


def _duration(v: str) -> str:
    parse_duration(v)
    return v


def _clock(v: str) -> str:
    parse_clock(v)
    return v


_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def _locale(v: str) -> str:
    if not _LOCALE.match(v):
        raise ValueError(f"{v!r} is not a locale; expected a language tag such as en, zh-CN")
    return v


Duration = Annotated[
    str,
    AfterValidator(_duration),
    Field(
        description="3d, 12h, 90m, 45s, 2w, 1d12h, or ISO-8601 such as P3D, PT12H",
        examples=["3d", "12h", "P3D"],
    ),
]
LocalTime = Annotated[
    str,
    AfterValidator(_clock),
    Field(
        description="a time of day on the customer's clock, HH:MM (24-hour)",
        json_schema_extra={"pattern": r"^([01]\d|2[0-3]):[0-5]\d$"},
        examples=["09:30"],
    ),
]
Locale = Annotated[
    str,
    AfterValidator(_locale),
    Field(
        description="a language tag such as en, en-GB, zh-CN",
        json_schema_extra={"pattern": _LOCALE.pattern},
    ),
]
Weight = Annotated[float, Field(gt=0, allow_inf_nan=False, description="relative weight")]


# --------------------------------------------------------------------------- journey header


class EventEntry(Strict):
    """Entered when a customer event of this type arrives, or a rule's `journey_event`
    effect addresses this journey with this event name."""

    event: Name
    when: Condition | None = Field(None, description="on the event (event.<field>) and profile")


class SegmentEntry(Strict):
    """Customers matching a profile condition enter, on a schedule or once."""

    segment: Condition = Field(description="a condition on the profile (tags, tier, …)")
    schedule: str | None = Field(
        None, min_length=1, description="a cron expression: when the segment is evaluated"
    )
    once: bool = Field(False, description="true: evaluate the segment once, at deploy")
    timezone: str = Field("UTC", description="the time zone the schedule is read in")

    @model_validator(mode="after")
    def _when(self) -> SegmentEntry:
        if (self.schedule is None) == (not self.once):
            raise ValueError("a segment entry needs either a schedule or once: true (not both)")
        if self.schedule is not None:
            check_cron(self.schedule)
        check_timezone(self.timezone)
        return self


def _entry_kind(v: Any) -> str | None:
    if isinstance(v, str):
        return "rule"
    if isinstance(v, dict):
        if "segment" in v:
            return "segment"
        if "event" in v:
            return "event"
        return None
    if isinstance(v, EventEntry):
        return "event"
    if isinstance(v, SegmentEntry):
        return "segment"
    return None


Entry = Annotated[
    Annotated[
        Literal["rule"],
        Tag("rule"),
        Field(description="entered by a rule's enroll_journey effect"),
    ]
    | Annotated[EventEntry, Tag("event")]
    | Annotated[SegmentEntry, Tag("segment")],
    Discriminator(
        _entry_kind,
        custom_error_type="entry",
        custom_error_message="expected an entry: rule, {event: <type>, when: ...}, or "
        "{segment: <condition>, schedule: <cron>} / {segment: <condition>, once: true}",
    ),
]


class ReentryPolicy(Strict):
    """Re-entry after a cool-down and/or at most a number of times."""

    after_days: int | None = Field(
        None, ge=0, le=3650, description="days after the last enrollment ended"
    )
    max_times: int | None = Field(None, ge=1, le=1000, description="enrollments in all")

    @model_validator(mode="after")
    def _something(self) -> ReentryPolicy:
        if self.after_days is None and self.max_times is None:
            raise ValueError("give after_days, max_times, or both (or write reentry: never)")
        return self


class Goal(Strict):
    """A conversion: this event (matching `when`) within `within_days` of entering."""

    event: Name
    when: Condition | None = None
    within_days: int = Field(ge=1, le=3650)


# --------------------------------------------------------------------------- nodes


class Content(Strict):
    """Message parts, each a jinja2 template (html is autoescaped)."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None

    def parts(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (("subject", self.subject), ("text", self.text), ("html", self.html))
            if v is not None
        }


class Template(Content):
    """The default content and per-locale variants (each complete on its own)."""

    variants: dict[Locale, Content] = Field(
        default_factory=dict, description="per locale, e.g. zh-CN: {subject: ..., text: ...}"
    )


class _Node(Strict):
    description: str | None = None


class MessageNode(_Node):
    type: Literal["message"]
    channel: Channel
    template: Template
    next: NodeId


class DelayNode(_Node):
    """Wait a duration; or until a time of day on given weekdays; or until a date held in a
    customer attribute (yearly by default: birthdays, anniversaries) plus an offset."""

    type: Literal["delay"]
    duration: Duration | None = None
    until_local_time: LocalTime | None = None
    weekdays: Annotated[list[Weekday], Field(min_length=1)] | None = Field(
        None, description="with until_local_time: allowed days (default every day)"
    )
    until_attribute: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$",
        description="a customer attribute holding a date (YYYY-MM-DD)",
    )
    offset_days: int = Field(0, ge=-365, le=365, description="with until_attribute")
    at_local_time: LocalTime | None = Field(
        None, description="with until_attribute: time of day (default 00:00)"
    )
    repeat: Literal["yearly", "once"] = Field(
        "yearly", description="with until_attribute: yearly (birthday) or a one-off date"
    )
    if_missing: Literal["exit", "continue"] = Field(
        "exit", description="with until_attribute: when the customer has no such date"
    )
    next: NodeId

    @model_validator(mode="after")
    def _one_kind(self) -> DelayNode:
        kinds = [
            k
            for k in ("duration", "until_local_time", "until_attribute")
            if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "a delay needs exactly one of duration, until_local_time, until_attribute"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        given = self.model_fields_set
        if self.until_local_time is None and "weekdays" in given:
            raise ValueError("weekdays go with until_local_time")
        if self.until_attribute is None:
            extra = sorted(given & {"offset_days", "at_local_time", "repeat", "if_missing"})
            if extra:
                raise ValueError(f"{', '.join(extra)} go(es) with until_attribute")
        if self.weekdays is not None and len(set(self.weekdays)) != len(self.weekdays):
            raise ValueError("weekdays: a day is repeated")
        return self

    def kind(self) -> Literal["duration", "until_local_time", "until_attribute"]:
        if self.duration is not None:
            return "duration"
        return "until_local_time" if self.until_local_time is not None else "until_attribute"

    def delta(self) -> timedelta:
        """The duration of a `duration` delay."""
        assert self.duration is not None
        return parse_duration(self.duration)

    def days(self) -> list[str]:
        return list(self.weekdays) if self.weekdays else list(WEEKDAYS)


class WaitForNode(_Node):
    """Wait for an event (matching `when`) up to `timeout`; two ways on."""

    type: Literal["wait_for"]
    event: Name
    when: Condition | None = Field(None, description="on the event (event.<field>) and profile")
    timeout: Duration
    on_event: NodeId
    on_timeout: NodeId


class Case(Strict):
    when: Condition
    next: NodeId


class BranchNode(_Node):
    """The first case whose condition holds on the profile; otherwise `default`."""

    type: Literal["branch"]
    cases: list[Case] = Field(min_length=1)
    default: NodeId


class SplitVariant(Strict):
    name: Name
    weight: Weight
    next: NodeId


class Holdout(Strict):
    weight: Weight


class SplitNode(_Node):
    """Weighted variants, assigned stably per customer; the holdout gets nothing and ends."""

    type: Literal["split"]
    variants: list[SplitVariant] = Field(min_length=1)
    holdout: Holdout | None = None

    def total_weight(self) -> float:
        return math.fsum(v.weight for v in self.variants) + (
            self.holdout.weight if self.holdout else 0.0
        )


class UpdateNode(_Node):
    """Apply rules effects (tags, points, tier, …) to the customer."""

    type: Literal["update"]
    effects: list[Effect] = Field(min_length=1)
    next: NodeId


class ExitNode(_Node):
    type: Literal["exit"]


NODE_TYPES: dict[str, type[BaseModel]] = {
    "message": MessageNode,
    "delay": DelayNode,
    "wait_for": WaitForNode,
    "branch": BranchNode,
    "split": SplitNode,
    "update": UpdateNode,
    "exit": ExitNode,
}
WAITS = ("delay", "wait_for")


def _node_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        kind = v.get("type")
        return kind if isinstance(kind, str) and kind in NODE_TYPES else None
    if isinstance(v, BaseModel):
        kind = getattr(v, "type", None)
        return kind if isinstance(kind, str) else None
    return None


Node = Annotated[
    Annotated[MessageNode, Tag("message")]
    | Annotated[DelayNode, Tag("delay")]
    | Annotated[WaitForNode, Tag("wait_for")]
    | Annotated[BranchNode, Tag("branch")]
    | Annotated[SplitNode, Tag("split")]
    | Annotated[UpdateNode, Tag("update")]
    | Annotated[ExitNode, Tag("exit")],
    Discriminator(
        _node_kind,
        custom_error_type="node",
        custom_error_message="expected a node with type: " + ", ".join(NODE_TYPES),
    ),
]


def edges(node: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """The nodes `node` leads to, each with the path of the field that names it."""
    if isinstance(node, MessageNode | DelayNode | UpdateNode):
        return [(("next",), node.next)]
    if isinstance(node, WaitForNode):
        return [(("on_event",), node.on_event), (("on_timeout",), node.on_timeout)]
    if isinstance(node, BranchNode):
        return [(("cases", i, "next"), c.next) for i, c in enumerate(node.cases)] + [
            (("default",), node.default)
        ]
    if isinstance(node, SplitNode):
        return [(("variants", i, "next"), v.next) for i, v in enumerate(node.variants)]
    return []


# --------------------------------------------------------------------------- journey


class Journey(Strict):
    """A journey file."""

    journey: Name
    description: str | None = None
    entry: Entry
    reentry: Literal["never"] | ReentryPolicy = Field(
        "never", description="never, or {after_days: N} and/or {max_times: N}"
    )
    goal: Goal | None = None
    exit_on: list[Name] = Field(
        default_factory=list, description="events that take the customer out at once"
    )
    channels: list[Channel] = Field(
        default_factory=lambda: list(CHANNELS), description="channels this journey may send on"
    )
    frequency_cap_policy: Literal["skip", "defer", "exempt"] = Field(
        "skip",
        description=(
            "a message over the customer's frequency cap is skipped or deferred; `exempt` "
            "for transactional journeys (receipts, password resets): their messages are "
            "neither held back by the cap nor counted in it"
        ),
    )
    rate_limit_per_minute: int | None = Field(
        None, ge=1, le=1_000_000, description="sends per minute across all enrollments"
    )
    start: NodeId
    nodes: dict[NodeId, Node] = Field(min_length=1)

    @field_validator("channels")
    @classmethod
    def _channels_unique(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"channel {dup[0]!r} is repeated")
        return v

    def event_types(self) -> set[str]:
        """The event types this journey listens to: entry, goal, exits, waits."""
        types = set(self.exit_on)
        if isinstance(self.entry, EventEntry):
            types.add(self.entry.event)
        if self.goal is not None:
            types.add(self.goal.event)
        types.update(n.event for n in self.nodes.values() if isinstance(n, WaitForNode))
        return types

    def definition(self) -> dict[str, Any]:
        """The journey as plain JSON data that validates back to it (what is deployed and
        what an enrollment starts with): only the fields the file set."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def node(self, node_id: str) -> Any:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"journey {self.journey!r} has no node {node_id!r}") from None

    def entry_kind(self) -> Literal["rule", "event", "segment"]:
        if isinstance(self.entry, EventEntry):
            return "event"
        return "segment" if isinstance(self.entry, SegmentEntry) else "rule"
