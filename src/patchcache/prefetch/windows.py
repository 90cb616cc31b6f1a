"""Off-peak windows: when a class's prefetches may start.

A window is `'HH:MM-HH:MM'` in local wall-clock time (the rules validate the syntax). The start
is included, the end excluded. An end at or before the start wraps past midnight
(`'22:00-06:00'` is open from 22:00 until 06:00 the next morning); `'24:00'` is the end of the
day, so `'00:00-24:00'` is always open, and an end equal to the start means the whole day too.
A class with no windows may prefetch at any time.

Windows decide only when a fill may *start*. A fill that is running when its window closes is
finished: Squid keeps fetching an expanded object after its reader goes away (see
docs/squid-behaviour.md), so stopping the reader would save no WAN traffic.

The arithmetic works on seconds since local midnight and is pure; `now_in_day` and
`seconds_until_open` do the wall-clock conversion at the edge.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from patchcache.errors import ConfigError

DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class Window:
    """`start` and `end` in seconds since local midnight; `end` may be 86400 (24:00)."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        try:
            first, last = text.strip().split("-")
            start, end = _clock_seconds(first), _clock_seconds(last)
        except ValueError:
            raise ConfigError(f"window {text!r} must look like '22:00-06:00'") from None
        if start >= DAY:
            raise ConfigError(f"window {text!r} cannot start at 24:00")
        return cls(start, end)

    def contains(self, second: float) -> bool:
        """Is `second` (seconds since midnight, 0 <= second < 86400) inside the window?"""
        if self.start == self.end % DAY:
            return True  # 00:00-24:00, or start == end: all day
        if self.start < self.end:
            return self.start <= second < self.end
        return second >= self.start or second < self.end  # wraps past midnight

    def seconds_until_open(self, second: float) -> float:
        """0 if open at `second`, else how long until the window next opens."""
        if self.contains(second):
            return 0.0
        return (self.start - second) % DAY


def _clock_seconds(text: str) -> int:
    hours, minutes = text.strip().split(":")
    if len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
        raise ValueError(text)
    h, m = int(hours), int(minutes)
    if h > 24 or m > 59 or (h == 24 and m != 0):
        raise ValueError(text)
    return h * 3600 + m * 60


@dataclass(frozen=True, slots=True)
class Schedule:
    """The windows of one class. Empty means always open."""

    windows: tuple[Window, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Schedule:
        return cls(tuple(Window.parse(text) for text in texts))

    @property
    def always_open(self) -> bool:
        return not self.windows

    def is_open(self, second: float) -> bool:
        return self.always_open or any(w.contains(second) for w in self.windows)

    def seconds_until_open(self, second: float) -> float:
        """0 when open at `second` (seconds since local midnight), else the wait to the next
        opening of any window."""
        if self.always_open:
            return 0.0
        return min(w.seconds_until_open(second) for w in self.windows)


def now_in_day(when: dt.datetime | None = None) -> float:
    """Seconds since local midnight of `when` (naive = local time; default: now)."""
    moment = dt.datetime.now() if when is None else when
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
