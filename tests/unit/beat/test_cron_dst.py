"""Cron slots in a zone, DST-exact: both Europe/Stockholm transitions for hourly, every-30-minute
and 02:30-daily entries, month ends, the leap day, the year boundary, and backward iteration
agreeing with forward iteration everywhere."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utilitarian.beat.cron import CronSchedule, check_cron

UTC = dt.timezone.utc
STHLM = "Europe/Stockholm"


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def local_day(day: dt.date, tz: str = STHLM) -> tuple[dt.datetime, dt.datetime]:
    """The UTC bounds of one local calendar day: (start - 1 µs, end - 1 µs] contains its slots."""
    import zoneinfo

    z = zoneinfo.ZoneInfo(tz)
    start = dt.datetime.combine(day, dt.time(), z).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), z).astimezone(UTC)
    eps = dt.timedelta(microseconds=1)
    return start - eps, end - eps


def day_slots(expr: str, day: dt.date) -> list[dt.datetime]:
    after, until = local_day(day)
    return CronSchedule(expr, STHLM).slots_between(after, until)


SPRING = dt.date(2024, 3, 31)  # 02:00 CET -> 03:00 CEST (01:00 UTC)
AUTUMN = dt.date(2024, 10, 27)  # 03:00 CEST -> 02:00 CET (01:00 UTC)


def test_hourly_spring_forward_fires_23_times_without_a_gap():
    slots = day_slots("0 * * * *", SPRING)
    assert len(slots) == 23
    # 02:00 does not exist: it fires at the first instant after the gap, which is 03:00 CEST,
    # itself a slot; the two are one fire, so UTC sees one fire every hour.
    assert slots[0] == utc(2024, 3, 30, 23) and slots[-1] == utc(2024, 3, 31, 21)
    assert all(b - a == dt.timedelta(hours=1) for a, b in zip(slots, slots[1:]))


def test_hourly_fall_back_fires_the_repeated_hour_once():
    slots = day_slots("0 * * * *", AUTUMN)
    assert len(slots) == 24  # 25 real hours, 24 wall-clock slots
    assert utc(2024, 10, 27, 0) in slots  # 02:00 CEST, the first 02:00
    assert utc(2024, 10, 27, 1) not in slots  # 02:00 CET, the repeat, does not fire
    assert utc(2024, 10, 27, 2) in slots  # 03:00 CET


def test_every_30_minutes_spring_forward():
    slots = day_slots("*/30 * * * *", SPRING)
    assert len(slots) == 46  # 02:00 and 02:30 swallowed: both fire with 03:00 CEST as one
    assert utc(2024, 3, 31, 1, 0) in slots and utc(2024, 3, 31, 0, 30) in slots
    assert all(b - a == dt.timedelta(minutes=30) for a, b in zip(slots, slots[1:]))


def test_every_30_minutes_fall_back():
    slots = day_slots("*/30 * * * *", AUTUMN)
    assert len(slots) == 48
    assert [s for s in slots if utc(2024, 10, 27, 0) <= s <= utc(2024, 10, 27, 2)] == [
        utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 2, 0)]


def test_0230_daily_across_both_transitions():
    spring = CronSchedule("30 2 * * *", STHLM).slots_between(utc(2024, 3, 29), utc(2024, 4, 2))
    assert spring == [utc(2024, 3, 29, 1, 30), utc(2024, 3, 30, 1, 30),
                      utc(2024, 3, 31, 1, 0),  # 02:30 does not exist: 03:00 CEST, first instant after
                      utc(2024, 4, 1, 0, 30)]
    autumn = CronSchedule("30 2 * * *", STHLM).slots_between(utc(2024, 10, 25), utc(2024, 10, 29))
    assert autumn == [utc(2024, 10, 25, 0, 30), utc(2024, 10, 26, 0, 30),
                      utc(2024, 10, 27, 0, 30),  # first 02:30 (CEST) only
                      utc(2024, 10, 28, 1, 30)]


def test_month_ends():
    days = CronSchedule("0 0 31 * *").slots_between(utc(2024, 1, 1), utc(2025, 1, 1))
    assert [d.month for d in days] == [1, 3, 5, 7, 8, 10, 12]
    last = CronSchedule("0 0 L * *").slots_between(utc(2023, 1, 15), utc(2024, 3, 15))
    assert utc(2023, 2, 28) in last and utc(2024, 2, 29) in last and utc(2023, 4, 30) in last


def test_leap_day_fires_every_four_years():
    cron = CronSchedule("0 0 29 2 *")
    assert cron.next_after(utc(2024, 3, 1)) == utc(2028, 2, 29)
    assert cron.slots_before(utc(2028, 3, 1), utc(2020, 3, 1)) == [utc(2024, 2, 29), utc(2028, 2, 29)]


def test_yearly_across_the_year_boundary():
    assert CronSchedule("0 0 1 1 *").next_after(utc(2024, 12, 31, 23, 59, 59)) == utc(2025, 1, 1)
    assert CronSchedule("0 0 1 1 *").slots_before(utc(2025, 1, 1, 0, 0, 0, 1), utc(2024, 1, 1)) == [utc(2025, 1, 1)]
    # Midnight on 1 January in Stockholm is 23:00 UTC the day before.
    assert CronSchedule("0 0 1 1 *", STHLM).next_after(utc(2024, 6, 1)) == utc(2024, 12, 31, 23)


def test_seconds_field_and_aliases():
    assert check_cron("*/5 * * * * *") is None
    assert CronSchedule("* * * * * */20").slots_between(utc(2024, 1, 1), utc(2024, 1, 1, 0, 1)) == [
        utc(2024, 1, 1, 0, 0, 20), utc(2024, 1, 1, 0, 0, 40), utc(2024, 1, 1, 0, 1)]
    assert CronSchedule("@hourly").expr == "0 * * * *"
    assert check_cron("@fortnightly") and check_cron("0 25 * * *") and check_cron("0 0 30 2 *")
    assert check_cron("* * * *")  # 4 fields


EXPRESSIONS = ["0 * * * *", "*/30 * * * *", "30 2 * * *", "15,45 1-3 * * *", "*/7 * * * *", "0 0 * * 0"]
ZONES = ["UTC", STHLM, "America/New_York", "Australia/Lord_Howe"]


@settings(max_examples=150, deadline=None)
@given(expr=st.sampled_from(EXPRESSIONS), zone=st.sampled_from(ZONES),
       start=st.datetimes(min_value=dt.datetime(2024, 3, 29), max_value=dt.datetime(2024, 4, 2)) |
       st.datetimes(min_value=dt.datetime(2024, 10, 25), max_value=dt.datetime(2024, 10, 29)) |
       st.datetimes(min_value=dt.datetime(2024, 11, 1), max_value=dt.datetime(2024, 11, 5)),
       hours=st.floats(min_value=0.01, max_value=30))
def test_backward_iteration_agrees_with_forward(expr, zone, start, hours):
    cron = CronSchedule(expr, zone)
    after = start.replace(tzinfo=UTC)
    until = after + dt.timedelta(hours=hours)
    forward = cron.slots_between(after, until)
    assert cron.slots_before(until, after) == forward
    assert cron.slots_before(until, after, limit=2) == forward[-2:]
    assert all(a < b for a, b in zip(forward, forward[1:]))


@pytest.mark.parametrize("zone", ZONES)
def test_every_wall_clock_slot_maps_to_one_instant(zone):
    """Over a whole year, each distinct wall time of an hourly cron fires once, in order."""
    import zoneinfo

    cron = CronSchedule("0 * * * *", zone)
    slots = cron.slots_between(utc(2024, 1, 1), utc(2025, 1, 1))
    walls = [s.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None) for s in slots]
    assert len(set(slots)) == len(slots)
    # A wall time appears once (the repeated hour is not fired twice).
    assert len(set(walls)) == len(walls)
