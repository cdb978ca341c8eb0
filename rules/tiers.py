"""Tier maths, pure: which tier a member qualifies for, and what the programme's tier policy
decides at a periodic review (upgrade at once; downgrade after a grace period or on the
membership anniversary)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from journeys.timing import anniversary
from rules.models import Anniversary, GracePeriod, Program

# The tag a member carries while below their tier's threshold under a grace-period policy;
# its creation time is when the grace period started.
GRACE_TAG = "tier-grace"

Action = Literal["keep", "upgrade", "downgrade", "grace_start", "grace_end"]


def qualified_for(program: Program, spend: float, points_earned: float) -> str:
    """The highest tier whose threshold the member's qualifying metric (spend or points
    earned over the policy's window) reaches."""
    best = program.welcome_tier
    for tier in program.ordered_tiers():
        value = spend if tier.qualify.metric == "spend" else points_earned
        if value >= tier.qualify.threshold:
            best = tier.name
    return best


@dataclass(frozen=True)
class TierStanding:
    """What a review knows of one member."""

    tier: str | None
    spend: float  # over the policy's window
    points_earned: float  # over the policy's window
    grace_since: datetime | None = None  # when the member fell below the tier (GRACE_TAG)
    tier_since: datetime | None = None  # the last tier change (or the profile's creation)
    anniversary: date | None = None  # membership start, for the anniversary policy


@dataclass(frozen=True)
class TierDecision:
    action: Action
    from_tier: str
    to_tier: str
    reason: str


def _rank(program: Program, name: str) -> int:
    tier = program.tier(name)
    return tier.rank if tier else 0


def _anniversary_between(start: date, after: date, until: date) -> date | None:
    """The latest anniversary of `start` in (after, until], if any."""
    for year in range(until.year, after.year - 1, -1):
        day = anniversary(start, year)
        if after < day <= until:
            return day
    return None


def review_tier(program: Program, s: TierStanding, as_of: datetime, today: date) -> TierDecision:
    """The policy's decision for one member at `as_of` (`today`: its local date)."""
    current = s.tier if s.tier and program.tier(s.tier) else program.welcome_tier
    target = qualified_for(program, s.spend, s.points_earned)
    have, want = _rank(program, current), _rank(program, target)
    metric = f"spend {s.spend:g}, points earned {s.points_earned:g}"
    window = f"over {program.tier_policy.window_days} days"
    if want > have:
        return TierDecision(
            "upgrade", current, target, f"qualifies for {target}: {metric} {window}"
        )
    if want == have:
        if s.grace_since is not None:
            return TierDecision("grace_end", current, current, f"back above {current}: {metric}")
        return TierDecision("keep", current, current, f"still qualifies: {metric}")
    policy = program.tier_policy.downgrade
    below = f"below {current}, qualifies for {target}: {metric} {window}"
    if isinstance(policy, GracePeriod):
        if s.grace_since is None and policy.grace_days > 0:
            ends = (as_of + timedelta(days=policy.grace_days)).date().isoformat()
            return TierDecision("grace_start", current, current, f"{below}; grace until {ends}")
        started = s.grace_since or as_of
        if as_of - started >= timedelta(days=policy.grace_days):
            return TierDecision(
                "downgrade", current, target, f"{below}; {policy.grace_days}-day grace over"
            )
        ends = (started + timedelta(days=policy.grace_days)).date().isoformat()
        return TierDecision("keep", current, current, f"{below}; in grace until {ends}")
    assert isinstance(policy, Anniversary)
    if s.anniversary is None:
        return TierDecision("keep", current, current, f"{below}; no membership date known")
    since = (s.tier_since.date() if s.tier_since else s.anniversary) or s.anniversary
    day = _anniversary_between(s.anniversary, since, today)
    if day is None:
        return TierDecision("keep", current, current, f"{below}; kept until the anniversary")
    return TierDecision("downgrade", current, target, f"{below}; anniversary {day.isoformat()}")
