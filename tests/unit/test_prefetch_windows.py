"""Off-peak windows: open/closed, time until open, midnight wrap, 24:00, bad syntax."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchcache.errors import ConfigError
from patchcache.prefetch.windows import DAY, Schedule, Window, now_in_day


def hm(text: str) -> float:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


@pytest.mark.parametrize(
    ("window", "at", "is_open", "wait"),
    [
        # plain daytime window: start included, end excluded
        ("09:00-17:00", "08:59", False, 60),
        ("09:00-17:00", "09:00", True, 0),
        ("09:00-17:00", "16:59", True, 0),
        ("09:00-17:00", "17:00", False, hm("16:00")),
        ("09:00-17:00", "23:30", False, hm("09:30")),
        # wraps past midnight
        ("22:00-06:00", "21:59", False, 60),
        ("22:00-06:00", "22:00", True, 0),
        ("22:00-06:00", "23:59", True, 0),
        ("22:00-06:00", "00:00", True, 0),
        ("22:00-06:00", "05:59", True, 0),
        ("22:00-06:00", "06:00", False, hm("16:00")),
        ("22:00-06:00", "12:00", False, hm("10:00")),
        # 24:00 is the end of the day
        ("18:00-24:00", "23:59", True, 0),
        ("18:00-24:00", "00:00", False, hm("18:00")),
        ("00:00-24:00", "00:00", True, 0),
        ("00:00-24:00", "13:37", True, 0),
        # start == end: all day
        ("06:00-06:00", "05:00", True, 0),
        # a window starting at midnight
        ("00:00-02:00", "23:00", False, hm("01:00")),
    ],
)
def test_window_open_and_wait(window: str, at: str, is_open: bool, wait: float) -> None:
    parsed = Window.parse(window)
    assert parsed.contains(hm(at)) is is_open
    assert parsed.seconds_until_open(hm(at)) == wait
    schedule = Schedule.parse([window])
    assert schedule.is_open(hm(at)) is is_open
    assert schedule.seconds_until_open(hm(at)) == wait


def test_a_schedule_opens_at_the_nearest_window() -> None:
    schedule = Schedule.parse(["01:00-03:00", "12:00-13:00", "22:00-23:00"])
    assert schedule.seconds_until_open(hm("11:00")) == hm("01:00")
    assert schedule.seconds_until_open(hm("13:00")) == hm("09:00")
    assert schedule.seconds_until_open(hm("23:30")) == hm("01:30")
    assert schedule.is_open(hm("12:30"))


def test_no_windows_means_always_open() -> None:
    schedule = Schedule.parse([])
    assert schedule.always_open
    assert schedule.is_open(hm("03:00"))
    assert schedule.seconds_until_open(hm("03:00")) == 0


def test_seconds_within_the_minute_count() -> None:
    window = Window.parse("22:00-06:00")
    assert window.seconds_until_open(hm("21:59") + 30.5) == pytest.approx(29.5)
    assert window.contains(hm("05:59") + 59.999)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "22:00",
        "22-06",
        "25:00-06:00",
        "22:60-06:00",
        "24:00-06:00",
        "24:01-23:00",
        "7:00-9:00",
        "ab:cd-ef:gh",
        "22:00-06:00-07:00",
    ],
)
def test_bad_windows_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="window"):
        Window.parse(text)


@given(
    start=st.integers(0, 24 * 60 - 1),
    end=st.integers(0, 24 * 60),
    second=st.floats(0, DAY, exclude_max=True),
)
def test_waiting_the_announced_time_lands_inside_the_window(
    start: int, end: int, second: float
) -> None:
    window = Window(start * 60, end * 60)
    wait = window.seconds_until_open(second)
    assert 0 <= wait < DAY
    assert window.contains((second + wait) % DAY)
    if wait > 1:
        # and it was closed just before
        assert not window.contains((second + wait - 0.5) % DAY)


def test_now_in_day_reads_local_wall_clock() -> None:
    assert now_in_day(dt.datetime(2024, 5, 1, 22, 30, 15, 500000)) == pytest.approx(
        22 * 3600 + 30 * 60 + 15.5
    )
    aware = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    local = aware.astimezone().replace(tzinfo=None)
    assert now_in_day(aware) == pytest.approx(now_in_day(local))
    assert 0 <= now_in_day() < DAY
