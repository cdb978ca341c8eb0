"""Cron expressions read the way Temporal Schedules read them: five fields (minute, hour,
day of month, month, day of week) or an @-macro, in a named time zone. croniter checks them
and previews the next runs; the same checks serve journeys' segment schedules."""

from __future__ import annotations

from datetime import datetime
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
