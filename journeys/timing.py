"""Time arithmetic for journeys, pure: durations, quiet hours, local times of day, yearly dates.

Every function takes the current instant (timezone-aware, normally UTC) and the customer's
IANA timezone and returns an aware UTC instant; nothing reads the clock, so a workflow can
pass `workflow.now()` and a test any instant it likes.

Local wall-clock times are resolved the way a person reading the customer's clock would
expect, across daylight-saving changes:
- a time that does not exist that day (the hour skipped when clocks go forward) resolves to
  the moment the clocks jump, the first instant after that time on the wall;
- a time that happens twice (the hour repeated when clocks go back) is its first occurrence,
  except where the second one is needed (quiet hours that are still running on the second
  pass end at the second occurrence).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_DURATION = timedelta(days=3650)

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SHORT = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_ISO = re.compile(
    r"^P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

DURATION_HELP = "expected a duration such as 3d, 12h, 90m, 2w, 1d12h or ISO-8601 P3D, PT12H, P1DT6H"


def parse_duration(text: str) -> timedelta:
    """A duration: "3d", "12h", "90m", "45s", "2w", "1d12h", or ISO-8601 "P3D", "PT1H30M".

    Months and years have no fixed length and are refused; the result is positive and at
    most ten years. Raises ValueError with a message a marketer can act on."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; {DURATION_HELP}")
    raw = text.strip()
    seconds: int
    if raw[:1] in ("P", "p"):
        m = _ISO.match(raw.upper())
        if not m or raw.upper() in ("P", "PT") or raw.upper().endswith("T"):
            raise ValueError(f"{text!r} is not a duration; {DURATION_HELP}")
        if m.group("y") or m.group("mo"):
            raise ValueError(
                f"{text!r}: months and years have no fixed length; give days or weeks (P30D)"
            )
        parts = {k: int(v) for k, v in m.groupdict().items() if v}
        seconds = (
            parts.get("w", 0) * 604800
            + parts.get("d", 0) * 86400
            + parts.get("h", 0) * 3600
            + parts.get("mi", 0) * 60
            + parts.get("s", 0)
        )
    else:
        m = _SHORT.match(raw.lower())
        if not raw or not m:
            raise ValueError(f"{text!r} is not a duration; {DURATION_HELP}")
        seconds = sum(
            int(v) * _UNITS[u] for v, u in zip(m.groups(), _UNITS, strict=True) if v is not None
        )
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    delta = timedelta(seconds=seconds)
    if delta > MAX_DURATION:
        raise ValueError(f"{text!r}: a duration may be at most {MAX_DURATION.days} days")
    return delta


def parse_clock(text: str | time) -> time:
    """A time of day "HH:MM" (24-hour)."""
    if isinstance(text, time):
        return text
    m = _CLOCK.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a time of day; expected HH:MM (24-hour), such as 09:30")
    return time(int(m.group(1)), int(m.group(2)))


def zone(tz: str | tzinfo) -> tzinfo:
    """The timezone named `tz` (an IANA name such as Asia/Shanghai)."""
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown timezone {tz!r}; expected an IANA name such as Asia/Shanghai"
        ) from exc


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("the current instant must be timezone-aware (UTC)")
    return now.astimezone(UTC)


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None, fold=0)


def local_instants(day: date, at: time, tz: tzinfo) -> list[datetime]:
    """The UTC instants at which the wall clock in `tz` shows `day` `at`, earliest first.

    One instant normally; two when the clocks go back over that time; when the clocks go
    forward over it (the time never shows), the moment of the jump."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    found = sorted({u for u in (first, second) if _wall(u, tz) == naive})
    if found:
        return found
    # In a gap: the wall clock jumps from before `naive` to after it. Find the jump.
    lo, hi = min(first, second), max(first, second)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if _wall(mid, tz) < naive:
            lo = mid
        else:
            hi = mid
    jump = hi.replace(microsecond=0)
    while _wall(jump - timedelta(seconds=1), tz) >= naive:  # land on the exact second
        jump -= timedelta(seconds=1)
    while _wall(jump, tz) < naive:
        jump += timedelta(seconds=1)
    return [jump]


def _in_window(t: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= t < end
    return t >= start or t < end


def in_quiet_hours(
    now_utc: datetime, tz: str | tzinfo, quiet_start: str | time, quiet_end: str | time
) -> bool:
    """Whether the customer's wall clock shows a time in [quiet_start, quiet_end)."""
    local = _wall(_aware(now_utc), zone(tz))
    return _in_window(local.time(), parse_clock(quiet_start), parse_clock(quiet_end))


def next_send_time(
    now_utc: datetime, tz: str | tzinfo, quiet_start: str | time, quiet_end: str | time
) -> datetime:
    """`now_utc` when it is outside quiet hours in `tz`; otherwise the instant they end.

    Quiet hours are [quiet_start, quiet_end) on the customer's wall clock and may run over
    midnight (21:00 to 08:00). Equal start and end mean no quiet hours. When the end does not
    exist that day (clocks go forward over it) the send time is the moment of the jump."""
    now = _aware(now_utc)
    tzi = zone(tz)
    start, end = parse_clock(quiet_start), parse_clock(quiet_end)
    local = _wall(now, tzi)
    if not _in_window(local.time(), start, end):
        return now
    # Quiet hours end where the wall clock reaches `end`, or where the clocks jump out of
    # them (forward over `end`, or back to before `start`): the first such instant that is
    # not itself in quiet hours (a jump may also land back inside them).
    candidates = [
        u
        for offset in (-1, 0, 1, 2)
        for u in local_instants(local.date() + timedelta(days=offset), end, tzi)
    ]
    candidates += transitions(now, now + timedelta(hours=50), tzi)
    return min(
        u for u in candidates if u > now and not _in_window(_wall(u, tzi).time(), start, end)
    )


def transitions(since: datetime, until: datetime, tz: tzinfo) -> list[datetime]:
    """The instants in (since, until] at which the UTC offset of `tz` changes."""
    found: list[datetime] = []
    step = timedelta(hours=1)
    t = since
    while t < until:
        u = min(t + step, until)
        if t.astimezone(tz).utcoffset() != u.astimezone(tz).utcoffset():
            lo, hi = t, u
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset():
                    lo = mid
                else:
                    hi = mid
            before = lo.astimezone(tz).utcoffset()
            jump = lo.replace(microsecond=0) + timedelta(seconds=1)
            if jump.astimezone(tz).utcoffset() == before:
                jump += timedelta(seconds=1)
            found.append(jump)
        t = u
    return found


def _first_local(
    now: datetime, tzi: tzinfo, at: time, days: Iterable[date], allowed: set[int] | None = None
) -> datetime | None:
    for day in days:
        if allowed is not None and day.weekday() not in allowed:
            continue
        first = local_instants(day, at, tzi)[0]
        if first >= now:
            return first
    return None


def delay_until_local_time(
    now_utc: datetime,
    tz: str | tzinfo,
    at: str | time,
    weekdays: Sequence[str] | None = None,
) -> datetime:
    """The first instant at or after `now_utc` when the wall clock in `tz` shows `at` on one
    of `weekdays` ("mon" … "sun"; default every day). A time repeated by a change back from
    daylight saving counts once, at its first occurrence."""
    now = _aware(now_utc)
    tzi = zone(tz)
    clock = parse_clock(at)
    days = list(weekdays) if weekdays else list(WEEKDAYS)
    unknown = [d for d in days if d not in WEEKDAYS]
    if unknown:
        raise ValueError(f"unknown weekday {unknown[0]!r}; expected {', '.join(WEEKDAYS)}")
    allowed = {WEEKDAYS.index(d) for d in days}
    today = _wall(now, tzi).date()
    found = _first_local(
        now, tzi, clock, (today + timedelta(days=n) for n in range(-1, 9)), allowed
    )
    assert found is not None, "a week always holds an allowed day"
    return found


def parse_date(value: str | date | datetime) -> date:
    """A calendar date from an attribute: a date, or text starting YYYY-MM-DD."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a date; expected YYYY-MM-DD")


def anniversary(born: date, year: int) -> date:
    """`born`'s month and day in `year`; 29 February is 28 February in other years."""
    if born.month == 2 and born.day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return born.replace(year=year)


def next_attribute_date(
    now_utc: datetime,
    tz: str | tzinfo,
    value: str | date | datetime,
    offset_days: int = 0,
    at_local_time: str | time | None = None,
    *,
    yearly: bool = True,
) -> datetime:
    """When a date held in a customer attribute (plus `offset_days`) next comes round.

    Yearly dates (birthdays, membership anniversaries) recur: the result is the first
    occurrence at or after `now_utc`, at `at_local_time` (default midnight) on the customer's
    wall clock, 29 February falling on 28 February in other years. A one-off date
    (`yearly=False`, such as a points expiry) is returned as it is, even when already past:
    the caller goes on at once."""
    now = _aware(now_utc)
    tzi = zone(tz)
    base = parse_date(value)
    clock = parse_clock(at_local_time) if at_local_time is not None else time(0, 0)
    shift = timedelta(days=offset_days)
    if not yearly:
        return local_instants(base + shift, clock, tzi)[0]
    year = _wall(now, tzi).year
    days = (anniversary(base, y) + shift for y in range(year - 2, year + 3))
    found = _first_local(now, tzi, clock, days)
    assert found is not None, "an offset of at most a year always lands within two years"
    return found
