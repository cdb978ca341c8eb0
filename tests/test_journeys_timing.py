"""Journey time arithmetic: durations, quiet hours, local times of day and yearly dates,
across midnight and across daylight-saving changes (New York, London; Shanghai has none).

DST changes used below:
- America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
- Europe/London: 2024-03-31 01:00 GMT -> 02:00 BST; 2024-10-27 02:00 BST -> 01:00 GMT.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journeys.timing import (
    WEEKDAYS,
    delay_until_local_time,
    in_quiet_hours,
    local_instants,
    next_attribute_date,
    next_send_time,
    parse_clock,
    parse_duration,
)

NY = "America/New_York"
LONDON = "Europe/London"
SHANGHAI = "Asia/Shanghai"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(instant: datetime, tz: str) -> str:
    """The wall-clock reading with its offset, e.g. 2024-03-10T03:00-04:00."""
    return instant.astimezone(ZoneInfo(tz)).isoformat(timespec="minutes")


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3d", timedelta(days=3)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("3D", timedelta(days=3)),
        ("P3D", timedelta(days=3)),
        ("PT12H", timedelta(hours=12)),
        ("PT1H30M", timedelta(minutes=90)),
        ("P1DT6H", timedelta(days=1, hours=6)),
        ("P2W", timedelta(weeks=2)),
        ("PT30S", timedelta(seconds=30)),
        ("p3d", timedelta(days=3)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a duration"),
        ("3", "is not a duration"),
        ("3 days", "is not a duration"),
        ("3x", "is not a duration"),
        ("d", "is not a duration"),
        ("-3d", "is not a duration"),
        ("1.5d", "is not a duration"),
        ("12h3d", "is not a duration"),
        ("P", "is not a duration"),
        ("PT", "is not a duration"),
        ("P1DT", "is not a duration"),
        ("P1M", "months and years have no fixed length"),
        ("P1Y", "months and years have no fixed length"),
        ("0d", "longer than zero"),
        ("PT0S", "longer than zero"),
        ("3651d", "at most 3650 days"),
    ],
)
def test_bad_durations_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_duration_errors_show_the_accepted_forms() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("3 days")
    assert "3d" in str(info.value) and "P3D" in str(info.value)


@pytest.mark.parametrize("text", ["9:30", "24:00", "09:60", "0930", "09:30:00", ""])
def test_bad_clock_times(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_clock(text)


def test_clock_times() -> None:
    assert parse_clock("00:00") == time(0, 0)
    assert parse_clock("23:59") == time(23, 59)


# --------------------------------------------------------------------------- local instants


def test_an_ordinary_local_time_is_one_instant() -> None:
    assert local_instants(date(2024, 6, 1), time(9, 30), ZoneInfo(NY)) == [utc(2024, 6, 1, 13, 30)]


def test_a_skipped_local_time_is_the_moment_of_the_jump() -> None:
    # 02:30 never shows in New York on 2024-03-10: the clocks jump 02:00 -> 03:00 EDT
    [jump] = local_instants(date(2024, 3, 10), time(2, 30), ZoneInfo(NY))
    assert jump == utc(2024, 3, 10, 7, 0)
    assert local(jump, NY) == "2024-03-10T03:00-04:00"


def test_a_repeated_local_time_is_two_instants() -> None:
    first, second = local_instants(date(2024, 11, 3), time(1, 30), ZoneInfo(NY))
    assert (first, second) == (utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30))
    first, second = local_instants(date(2024, 10, 27), time(1, 30), ZoneInfo(LONDON))
    assert (first, second) == (utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30))


# --------------------------------------------------------------------------- quiet hours


def test_outside_quiet_hours_sends_now() -> None:
    now = utc(2024, 6, 3, 15, 0)  # 11:00 in New York
    assert next_send_time(now, NY, "21:00", "08:00") == now


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2024, 6, 4, 3, 0), "2024-06-04T08:00-04:00"),  # 23:00: to tomorrow's 08:00
        (utc(2024, 6, 4, 7, 0), "2024-06-04T08:00-04:00"),  # 03:00: to today's 08:00
        (utc(2024, 6, 4, 1, 0), "2024-06-04T08:00-04:00"),  # 21:00 sharp is quiet
        (utc(2024, 6, 4, 11, 59), "2024-06-04T08:00-04:00"),  # 07:59
    ],
)
def test_quiet_hours_across_midnight(now: datetime, expected: str) -> None:
    assert local(next_send_time(now, NY, "21:00", "08:00"), NY) == expected


def test_quiet_hours_end_is_not_quiet() -> None:
    now = utc(2024, 6, 4, 12, 0)  # 08:00 sharp
    assert next_send_time(now, NY, "21:00", "08:00") == now


def test_quiet_hours_within_a_day() -> None:
    now = utc(2024, 6, 4, 5, 0)  # 13:00 in Shanghai
    assert local(next_send_time(now, SHANGHAI, "12:00", "14:00"), SHANGHAI) == (
        "2024-06-04T14:00+08:00"
    )
    assert next_send_time(utc(2024, 6, 4, 7, 0), SHANGHAI, "12:00", "14:00") == utc(2024, 6, 4, 7)


def test_equal_start_and_end_means_no_quiet_hours() -> None:
    now = utc(2024, 6, 4, 3, 0)
    assert next_send_time(now, NY, "22:00", "22:00") == now
    assert not in_quiet_hours(now, NY, "22:00", "22:00")


def test_shanghai_has_no_daylight_saving() -> None:
    # 23:00 CST on the night New York springs forward: 9 hours later, 08:00 CST
    now = utc(2024, 3, 10, 15, 0)
    assert next_send_time(now, SHANGHAI, "22:00", "08:00") == utc(2024, 3, 11, 0, 0)
    # and in November the same
    assert next_send_time(utc(2024, 11, 3, 15), SHANGHAI, "22:00", "08:00") == utc(2024, 11, 4)


def test_new_york_spring_forward_night_is_an_hour_shorter() -> None:
    now = utc(2024, 3, 10, 4, 0)  # 23:00 EST on Saturday 9 March
    send = next_send_time(now, NY, "21:00", "08:00")
    assert local(send, NY) == "2024-03-10T08:00-04:00"
    assert send - now == timedelta(hours=8)


def test_new_york_quiet_hours_ending_in_the_skipped_hour() -> None:
    now = utc(2024, 3, 10, 6, 30)  # 01:30 EST; quiet until 02:30, which never shows
    send = next_send_time(now, NY, "22:00", "02:30")
    assert send == utc(2024, 3, 10, 7, 0)
    assert local(send, NY) == "2024-03-10T03:00-04:00"


def test_clocks_going_back_can_end_quiet_hours() -> None:
    # quiet 01:30-08:00; at 01:45 EDT the clocks go back (at 02:00 EDT) to 01:00 EST,
    # which is outside quiet hours until 01:30 EST
    now = utc(2024, 11, 3, 5, 45)
    send = next_send_time(now, NY, "01:30", "08:00")
    assert send == utc(2024, 11, 3, 6, 0)
    assert local(send, NY) == "2024-11-03T01:00-05:00"


def test_clocks_going_forward_can_skip_the_gap_between_quiet_hours() -> None:
    # quiet every day except 02:00-02:15, which New York skips on 2024-03-10
    now = utc(2024, 3, 10, 6, 30)  # 01:30 EST
    send = next_send_time(now, NY, "02:15", "02:00")
    assert local(send, NY) == "2024-03-11T02:00-04:00"


def test_new_york_fall_back_night_is_an_hour_longer() -> None:
    now = utc(2024, 11, 3, 3, 0)  # 23:00 EDT on Saturday 2 November
    send = next_send_time(now, NY, "21:00", "08:00")
    assert local(send, NY) == "2024-11-03T08:00-05:00"
    assert send - now == timedelta(hours=10)


def test_new_york_quiet_hours_ending_in_the_repeated_hour() -> None:
    # quiet until 01:30; 01:00-02:00 shows twice on 2024-11-03
    first_pass = utc(2024, 11, 3, 5, 10)  # 01:10 EDT
    assert next_send_time(first_pass, NY, "21:00", "01:30") == utc(2024, 11, 3, 5, 30)
    between = utc(2024, 11, 3, 5, 40)  # 01:40 EDT: quiet hours are over
    assert next_send_time(between, NY, "21:00", "01:30") == between
    second_pass = utc(2024, 11, 3, 6, 10)  # 01:10 EST: the clock says quiet again
    send = next_send_time(second_pass, NY, "21:00", "01:30")
    assert send == utc(2024, 11, 3, 6, 30)
    assert local(send, NY) == "2024-11-03T01:30-05:00"


def test_london_spring_forward() -> None:
    now = utc(2024, 3, 30, 22, 0)  # 22:00 GMT
    send = next_send_time(now, LONDON, "21:00", "08:00")
    assert local(send, LONDON) == "2024-03-31T08:00+01:00"
    assert send - now == timedelta(hours=9)
    # quiet hours ending at 01:30, which London skips that night (01:00 GMT -> 02:00 BST)
    early = utc(2024, 3, 31, 0, 45)
    send = next_send_time(early, LONDON, "23:00", "01:30")
    assert send == utc(2024, 3, 31, 1, 0)
    assert local(send, LONDON) == "2024-03-31T02:00+01:00"


def test_london_fall_back() -> None:
    now = utc(2024, 10, 26, 21, 0)  # 22:00 BST
    send = next_send_time(now, LONDON, "21:00", "08:00")
    assert local(send, LONDON) == "2024-10-27T08:00+00:00"
    assert send - now == timedelta(hours=11)
    assert next_send_time(utc(2024, 10, 27, 0, 10), LONDON, "21:00", "01:30") == utc(
        2024, 10, 27, 0, 30
    )
    assert next_send_time(utc(2024, 10, 27, 1, 10), LONDON, "21:00", "01:30") == utc(
        2024, 10, 27, 1, 30
    )


def test_quiet_hours_need_an_aware_instant_and_a_real_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_send_time(datetime(2024, 1, 1, 12), NY, "21:00", "08:00")
    with pytest.raises(ValueError, match="unknown timezone"):
        next_send_time(utc(2024, 1, 1, 12), "Mars/Olympus_Mons", "21:00", "08:00")
    with pytest.raises(ValueError, match="HH:MM"):
        next_send_time(utc(2024, 1, 1, 12), NY, "9pm", "08:00")


def test_a_non_utc_now_is_fine() -> None:
    now = datetime(2024, 6, 4, 23, 0, tzinfo=ZoneInfo(NY))
    assert local(next_send_time(now, NY, "21:00", "08:00"), NY) == "2024-06-05T08:00-04:00"


_2024 = utc(2024, 1, 1)
instants_2024 = st.integers(0, 366 * 24 * 60 - 1).map(lambda m: _2024 + timedelta(minutes=m))
clocks = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 59]))
# nights when the clocks change, where mistakes happen
dst_nights = st.sampled_from(
    [utc(2024, 3, 9, 20), utc(2024, 11, 2, 20), utc(2024, 3, 30, 18), utc(2024, 10, 26, 18)]
).flatmap(lambda base: st.integers(0, 14 * 60).map(lambda m: base + timedelta(minutes=m)))


@settings(max_examples=300, deadline=None, database=None)
@given(
    now=st.one_of(instants_2024, dst_nights),
    tz=st.sampled_from([NY, LONDON, SHANGHAI]),
    start=clocks,
    end=clocks,
)
def test_next_send_time_is_the_first_instant_outside_quiet_hours(
    now: datetime, tz: str, start: time, end: time
) -> None:
    send = next_send_time(now, tz, start, end)
    quiet_now = in_quiet_hours(now, tz, start, end)
    assert send >= now
    assert (send == now) == (not quiet_now)
    assert not in_quiet_hours(send, tz, start, end)
    if send > now:
        assert in_quiet_hours(send - timedelta(seconds=1), tz, start, end)
        # quiet all the way: check every 7 minutes in between
        t = now
        while t < send:
            assert in_quiet_hours(t, tz, start, end), (t, send)
            t += timedelta(minutes=7)
        assert send - now <= timedelta(hours=25)


# --------------------------------------------------------------------------- time of day


def test_delay_until_later_today() -> None:
    now = utc(2024, 5, 15, 0, 0)  # Wednesday 08:00 in Shanghai
    assert local(delay_until_local_time(now, SHANGHAI, "09:30"), SHANGHAI) == (
        "2024-05-15T09:30+08:00"
    )


def test_delay_until_tomorrow_when_the_time_has_passed() -> None:
    now = utc(2024, 5, 15, 2, 0)  # Wednesday 10:00
    assert local(delay_until_local_time(now, SHANGHAI, "09:30"), SHANGHAI) == (
        "2024-05-16T09:30+08:00"
    )


def test_delay_at_the_exact_time_goes_on_now() -> None:
    now = utc(2024, 5, 15, 1, 30)  # Wednesday 09:30 sharp
    assert delay_until_local_time(now, SHANGHAI, "09:30") == now


def test_delay_until_an_allowed_weekday() -> None:
    wednesday = utc(2024, 5, 15, 0, 0)
    send = delay_until_local_time(wednesday, SHANGHAI, "09:30", ["mon", "fri"])
    assert local(send, SHANGHAI) == "2024-05-17T09:30+08:00"  # Friday
    saturday = utc(2024, 5, 18, 3, 0)
    send = delay_until_local_time(saturday, SHANGHAI, "10:00", ["mon", "tue", "wed", "thu", "fri"])
    assert local(send, SHANGHAI) == "2024-05-20T10:00+08:00"  # Monday
    monday_late = utc(2024, 5, 20, 12, 0)  # Monday 20:00: next Monday
    send = delay_until_local_time(monday_late, SHANGHAI, "10:00", ["mon"])
    assert local(send, SHANGHAI) == "2024-05-27T10:00+08:00"


def test_the_weekday_is_the_customers_own() -> None:
    # Friday 23:00 UTC is already Saturday 07:00 in Shanghai, still Friday in New York
    now = utc(2024, 5, 17, 23, 0)
    weekdays = ["mon", "tue", "wed", "thu", "fri"]
    assert local(delay_until_local_time(now, SHANGHAI, "10:00", weekdays), SHANGHAI) == (
        "2024-05-20T10:00+08:00"
    )
    assert (
        local(
            delay_until_local_time(now, "Pacific/Honolulu", "14:00", weekdays), ("Pacific/Honolulu")
        )
        == "2024-05-17T14:00-10:00"
    )


def test_delay_until_a_time_across_the_spring_change() -> None:
    now = utc(2024, 3, 9, 17, 0)  # Saturday 12:00 EST
    send = delay_until_local_time(now, NY, "10:00")
    assert local(send, NY) == "2024-03-10T10:00-04:00"
    assert send - now == timedelta(hours=21)
    send = delay_until_local_time(now, LONDON, "10:00")  # London changes three weeks later
    assert local(send, LONDON) == "2024-03-10T10:00+00:00"


def test_delay_until_a_skipped_time() -> None:
    now = utc(2024, 3, 9, 17, 0)
    send = delay_until_local_time(now, NY, "02:30")
    assert local(send, NY) == "2024-03-10T03:00-04:00"  # 02:30 never shows: the jump
    after = delay_until_local_time(send + timedelta(minutes=1), NY, "02:30")
    assert local(after, NY) == "2024-03-11T02:30-04:00"


def test_delay_until_a_repeated_time_takes_its_first_occurrence() -> None:
    send = delay_until_local_time(utc(2024, 11, 3, 4, 0), NY, "01:30")  # 00:00 EDT
    assert send == utc(2024, 11, 3, 5, 30)  # 01:30 EDT
    # between the two 01:30s the next one counted is tomorrow's, not the repeat
    send = delay_until_local_time(utc(2024, 11, 3, 5, 40), NY, "01:30")
    assert local(send, NY) == "2024-11-04T01:30-05:00"


def test_delay_until_across_london_autumn_change() -> None:
    now = utc(2024, 10, 26, 12, 0)  # Saturday 13:00 BST
    send = delay_until_local_time(now, LONDON, "09:00", ["sun"])
    assert local(send, LONDON) == "2024-10-27T09:00+00:00"
    assert send - now == timedelta(hours=21)


def test_unknown_weekday() -> None:
    with pytest.raises(ValueError, match="unknown weekday 'monday'"):
        delay_until_local_time(utc(2024, 1, 1), NY, "09:00", ["monday"])


@settings(max_examples=200, deadline=None, database=None)
@given(
    now=st.one_of(instants_2024, dst_nights),
    tz=st.sampled_from([NY, LONDON, SHANGHAI]),
    at=clocks,
    days=st.sets(st.sampled_from(WEEKDAYS), min_size=1),
)
def test_delay_until_local_time_properties(
    now: datetime, tz: str, at: time, days: set[str]
) -> None:
    send = delay_until_local_time(now, tz, at, sorted(days))
    wall = send.astimezone(ZoneInfo(tz))
    assert now <= send <= now + timedelta(days=8)
    assert WEEKDAYS[wall.weekday()] in days
    if wall.time().replace(second=0) != at:
        # only when `at` does not exist that day: we land on the jump, just after it
        assert local_instants(wall.date(), at, ZoneInfo(tz)) == [send]


# --------------------------------------------------------------------------- yearly dates


def test_birthday_later_this_year() -> None:
    send = next_attribute_date(utc(2026, 4, 1), SHANGHAI, "1990-05-01", 0, "09:00")
    assert local(send, SHANGHAI) == "2026-05-01T09:00+08:00"


def test_birthday_already_past_is_next_year() -> None:
    now = utc(2026, 5, 1, 2, 0)  # 10:00 on the birthday: 09:00 has passed
    send = next_attribute_date(now, SHANGHAI, "1990-05-01", 0, "09:00")
    assert local(send, SHANGHAI) == "2027-05-01T09:00+08:00"


def test_birthday_at_the_exact_moment_is_now() -> None:
    now = utc(2026, 5, 1, 1, 0)
    assert next_attribute_date(now, SHANGHAI, "1990-05-01", 0, "09:00") == now


def test_birthday_with_an_offset() -> None:
    week_before = next_attribute_date(utc(2026, 4, 1), SHANGHAI, "1990-05-01", -7, "10:00")
    assert local(week_before, SHANGHAI) == "2026-04-24T10:00+08:00"
    # a week before has passed this year (it is 26 April), so next year's
    late = next_attribute_date(utc(2026, 4, 26), SHANGHAI, "1990-05-01", -7, "10:00")
    assert local(late, SHANGHAI) == "2027-04-24T10:00+08:00"
    new_year = next_attribute_date(utc(2026, 6, 1), SHANGHAI, "1990-12-31", 1)
    assert local(new_year, SHANGHAI) == "2027-01-01T00:00+08:00"


def test_default_time_is_midnight_on_the_customers_clock() -> None:
    send = next_attribute_date(utc(2026, 4, 1), NY, "1990-05-01")
    assert local(send, NY) == "2026-05-01T00:00-04:00"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2025, 1, 10), "2025-02-28T09:00+08:00"),  # 2025 has no 29 February
        (utc(2025, 3, 1), "2026-02-28T09:00+08:00"),
        (utc(2027, 3, 1), "2028-02-29T09:00+08:00"),  # 2028 has
        (utc(2028, 2, 28, 12), "2028-02-29T09:00+08:00"),
    ],
)
def test_29_february(now: datetime, expected: str) -> None:
    assert local(next_attribute_date(now, SHANGHAI, "2000-02-29", 0, "09:00"), SHANGHAI) == (
        expected
    )


def test_29_february_with_an_offset_counts_from_the_28th_in_other_years() -> None:
    send = next_attribute_date(utc(2025, 1, 1), SHANGHAI, "2000-02-29", 1)
    assert local(send, SHANGHAI) == "2025-03-01T00:00+08:00"


def test_birthday_on_a_skipped_time() -> None:
    send = next_attribute_date(utc(2024, 1, 1), NY, "1990-03-10", 0, "02:30")
    assert local(send, NY) == "2024-03-10T03:00-04:00"


def test_date_values_in_several_forms() -> None:
    now = utc(2026, 4, 1)
    expected = next_attribute_date(now, SHANGHAI, "1990-05-01")
    assert next_attribute_date(now, SHANGHAI, "1990-05-01T08:00:00Z") == expected
    assert next_attribute_date(now, SHANGHAI, date(1990, 5, 1)) == expected
    assert next_attribute_date(now, SHANGHAI, datetime(1990, 5, 1, 8)) == expected
    with pytest.raises(ValueError, match="is not a date"):
        next_attribute_date(now, SHANGHAI, "1 May 1990")
    with pytest.raises(ValueError, match="is not a date"):
        next_attribute_date(now, SHANGHAI, "1990-02-30")


def test_a_one_off_date_does_not_recur() -> None:
    expiry = next_attribute_date(utc(2026, 4, 1), SHANGHAI, "2026-12-31", -7, "10:00", yearly=False)
    assert local(expiry, SHANGHAI) == "2026-12-24T10:00+08:00"
    past = next_attribute_date(utc(2027, 4, 1), SHANGHAI, "2026-12-31", 0, yearly=False)
    assert past < utc(2027, 4, 1)  # returned as it is: the caller goes on at once


@settings(max_examples=200, deadline=None, database=None)
@given(
    now=instants_2024,
    tz=st.sampled_from([NY, LONDON, SHANGHAI]),
    born=st.dates(date(1950, 1, 1), date(2010, 12, 31)),
    offset=st.integers(-365, 365),
)
def test_next_attribute_date_is_the_first_occurrence_not_before_now(
    now: datetime, tz: str, born: date, offset: int
) -> None:
    send = next_attribute_date(now, tz, born, offset)
    assert send >= now
    assert send - now <= timedelta(days=367)
    wall = send.astimezone(ZoneInfo(tz))
    day = wall.date() - timedelta(days=offset)
    if (born.month, born.day) == (2, 29):
        assert (day.month, day.day) in ((2, 28), (2, 29))
    else:
        assert (day.month, day.day) == (born.month, born.day)
