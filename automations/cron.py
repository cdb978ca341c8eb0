"""Cron expressions read the way Temporal Schedules read them: five fields (minute, hour,
day of month, month, day of week) or an @-macro, in a named time zone. croniter checks them
and previews the next runs; the same checks serve journeys' segment schedules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"})
CRON_HELP = (
    "expected five fields 'minute hour day-of-month month day-of-week' such as '0 2 * * *' "
    "(02:00 every day) or one of " + ", ".join(sorted(MACROS))
)


def cron_problem(expr: str) -> str | None:
    """Why `expr` is no cron expression Temporal would take, or None when it is one."""
    text = expr.strip()
    if text in MACROS:
        return None
    fields = text.split()
    if len(fields) != 5:
        return f"{expr!r} is not a cron expression: it has {len(fields)} field(s); {CRON_HELP}"
    try:
        itr = croniter(text, datetime(2000, 1, 1))
    except (CroniterBadCronError, ValueError) as exc:
        return f"{expr!r} is not a cron expression ({exc}); {CRON_HELP}"
    try:
        itr.get_next(datetime)
    except CroniterBadDateError:
        return f"{expr!r} is not a cron expression that ever fires (no such date); {CRON_HELP}"
    return None


def check_cron(expr: str) -> str:
    """`expr` if it is a cron expression; ValueError with the reason if not."""
    problem = cron_problem(expr)
    if problem:
        raise ValueError(problem)
    return expr.strip()


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (KeyError, ValueError):
        raise ValueError(
            f"timezone {name!r} is not a time zone; expected e.g. Asia/Shanghai"
        ) from None
    return name


def next_runs(expr: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    """The next `count` times `expr` fires after `after`, as aware times in `timezone`
    (croniter follows the zone's daylight-saving shifts)."""
    zone = ZoneInfo(timezone)
    itr = croniter(expr.strip(), after.astimezone(zone))
    return [itr.get_next(datetime).astimezone(zone) for _ in range(count)]


# --------------------------------------------------------------------------- daylight saving

# What the Temporal server does (the ScheduleSpec documentation of temporalio's API
# protos, temporal/api/schedule/v1): "Calendar spec matching is based on literal matching
# of the clock time with no special handling of DST: if you write a calendar spec that
# fires at 2:30am and specify a time zone that follows DST, that action will not be
# triggered on the day that has no 2:30am. Similarly, an action that fires at 1:30am will
# be triggered twice on the day that has two 1:30s." tests/test_schedules_dst.py checks it
# against the dev server's own matching times.
SERVER_SKIPS = "the Temporal server does not run it that day (it matches the clock time as written)"
SERVER_TWICE = "the Temporal server runs it twice that day, at each of the two clock times"


@dataclass(frozen=True)
class ClockShift:
    """A daylight-saving change: on `day`, local clock times in [start, end) either do not
    exist (`gap`: clocks jump forward) or happen twice (`fold`: clocks go back)."""

    day: date
    kind: str  # gap or fold
    start: datetime  # naive local wall-clock times
    end: datetime


@dataclass(frozen=True)
class DstWarning:
    kind: str  # missing or repeated
    day: date
    at: datetime  # the naive local clock time the cron names
    shift: ClockShift

    def message(self, expr: str, timezone: str) -> str:
        t = f"{self.at:%H:%M}"
        span = f"{self.shift.start:%H:%M} to {self.shift.end:%H:%M}"
        if self.kind == "missing":
            return (
                f"cron {expr!r} in {timezone}: {t} does not exist on {self.day} (the clocks "
                f"jump forward over {span}): {SERVER_SKIPS}"
            )
        return (
            f"cron {expr!r} in {timezone}: {t} happens twice on {self.day} (the clocks go "
            f"back over {span}): {SERVER_TWICE}"
        )


def _offset(zone: ZoneInfo, at: datetime) -> timedelta:
    return at.astimezone(zone).utcoffset() or timedelta(0)


def clock_shifts(timezone: str, first: date, last: date) -> list[ClockShift]:
    """The zone's daylight-saving changes (any change of its UTC offset) from `first` to
    `last`, with the local clock times each one skips or repeats."""
    zone = ZoneInfo(timezone)
    out: list[ClockShift] = []
    day = first
    while day <= last:
        lo = datetime.combine(day, time(0), zone).astimezone(UTC)
        hi = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
        before, after = _offset(zone, lo), _offset(zone, hi)
        if before != after:
            # the instant of the change, to the second
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if _offset(zone, mid) == before:
                    lo = mid
                else:
                    hi = mid
            instant = hi.replace(microsecond=0)
            wall_before = (instant + before).replace(tzinfo=None)
            wall_after = (instant + after).replace(tzinfo=None)
            if after > before:
                out.append(ClockShift(day, "gap", wall_before, wall_after))
            else:
                out.append(ClockShift(day, "fold", wall_after, wall_before))
        day += timedelta(days=1)
    return out


def dst_warnings(expr: str, timezone: str, first: date, days: int = 731) -> list[DstWarning]:
    """The times `expr` names that do not exist, or happen twice, in `timezone` on some day
    from `first` on (`days` of them: two years by default, a spring and an autumn change of
    each year)."""
    found: list[DstWarning] = []
    text = expr.strip()
    for shift in clock_shifts(timezone, first, first + timedelta(days=days)):
        # croniter on naive times matches wall-clock fields, as the server does
        itr = croniter(text, shift.start - timedelta(microseconds=1))
        at = itr.get_next(datetime)
        while at < shift.end:
            kind = "missing" if shift.kind == "gap" else "repeated"
            found.append(DstWarning(kind, shift.day, at, shift))
            at = itr.get_next(datetime)
    return found
