"""The journey interpreter's pure decisions: which node comes next, which split variant a
customer is in, and what a message says.

The workflow does the waiting and the I/O; it asks these functions what to do, passing
what happened (an event arrived or the wait timed out, the profile's facts, the variant).
They read no clock and draw no random numbers, so they are deterministic under replay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from journeys.conditions import evaluate
from journeys.models import (
    HOLDOUT,
    BranchNode,
    DelayNode,
    ExitNode,
    Journey,
    MessageNode,
    SplitNode,
    UpdateNode,
    WaitForNode,
)
from journeys.templates import RenderedMessage, render_message
from journeys.timing import delay_until_local_time, next_attribute_date

__all__ = [
    "HOLDOUT",
    "RenderedMessage",
    "WaitOutcome",
    "assign_variant",
    "calendar_delay_until",
    "choose_case",
    "next_node",
    "render_message",
    "split_point",
]

WaitOutcome = Literal["event", "timeout"]


def choose_case(node: BranchNode, facts: Mapping[str, Any]) -> str:
    """The node a branch leads to: the first case whose condition holds, else `default`."""
    for case in node.cases:
        if evaluate(case.when, facts):
            return case.next
    return node.default


def calendar_delay_until(
    node: DelayNode, now: datetime, timezone: str | None, attributes: Mapping[str, Any]
) -> datetime | None:
    """When a delay on the customer's calendar ends: the next `until_local_time` in their
    zone, or the next date from their `until_attribute` (None: they have no such date, or
    it is not a date). A `duration` delay is `now + node.delta()` and needs no customer."""
    tz = timezone or "UTC"
    if node.kind() == "until_local_time":
        assert node.until_local_time is not None
        return delay_until_local_time(now, tz, node.until_local_time, node.days())
    value = attributes.get(node.until_attribute or "")
    if value is None:
        return None
    try:
        return next_attribute_date(
            now, tz, value, node.offset_days, node.at_local_time, yearly=node.repeat == "yearly"
        )
    except ValueError:
        return None


def next_node(
    journey: Journey,
    node_id: str,
    outcome: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> str | None:
    """The node after `node_id`, or None when the enrollment ends there.

    `outcome` says what happened where a node has several ways on: "event" or "timeout" for
    a `wait_for`; the variant name (from `assign_variant`) for a `split`, where the holdout
    ends. A `branch` chooses with `facts` (the customer's facts, as the rules build them).
    """
    node = journey.node(node_id)
    if isinstance(node, ExitNode):
        return None
    if isinstance(node, MessageNode | DelayNode | UpdateNode):
        return node.next
    if isinstance(node, WaitForNode):
        if outcome == "event":
            return node.on_event
        if outcome == "timeout":
            return node.on_timeout
        raise ValueError(f"wait_for node {node_id!r}: outcome must be 'event' or 'timeout'")
    if isinstance(node, BranchNode):
        return choose_case(node, facts or {})
    if isinstance(node, SplitNode):
        if outcome == HOLDOUT and node.holdout is not None:
            return None
        for variant in node.variants:
            if variant.name == outcome:
                return variant.next
        names = [v.name for v in node.variants] + [HOLDOUT] * (node.holdout is not None)
        raise ValueError(
            f"split node {node_id!r}: outcome must be a variant name ({', '.join(names)}), "
            f"not {outcome!r}"
        )
    raise TypeError(f"node {node_id!r} is not a journey node: {node!r}")


def split_point(journey_name: str, node_id: str, customer_id: str) -> float:
    """A number in [0, 1), uniform over customers and fixed for (journey, node, customer)."""
    key = f"{journey_name}:{node_id}:{customer_id}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_variant(journey_name: str, customer_id: str, split: SplitNode, node_id: str) -> str:
    """The variant name for this customer at this split (or `HOLDOUT`).

    Stable: the same customer always lands in the same group of the same split, in every
    enrollment and on every worker, without storing anything. Groups take slices of [0, 1)
    by weight, variants in file order, the holdout last."""
    u = split_point(journey_name, node_id, customer_id) * split.total_weight()
    edge = 0.0
    for variant in split.variants:
        edge += variant.weight
        if u < edge:
            return variant.name
    if split.holdout is not None:
        return HOLDOUT
    return split.variants[-1].name  # rounding at the very top of the range
