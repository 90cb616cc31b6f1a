"""Reading a throwaway Squid's logs, and waiting (bounded) for what they should show.

Squid writes access.log with ``stdio:`` in the testbed, a line after a transaction's last byte,
so a client may finish before its line appears: callers wait with `wait_until`. It is the one
bounded poll of the testbed, the tests and the benchmarks (`wait_until_async` inside an event
loop): given ``awaiting``, a timeout raises `WaitTimedOut` naming what was awaited and the last
value seen; without it, the last value is returned and the caller asserts on it (pytest then
shows a diff of, say, the access.log codes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

_T = TypeVar("_T")


_SHOWN_CHARS = 2000  # of the last value's repr in a timeout message: a log can be long


class WaitTimedOut(AssertionError):
    """A bounded wait ran out: the message names what was awaited and the last value seen.

    An AssertionError, as an expectation of the test (or check) failed, not the code."""


def wait_until(
    probe: Callable[[], _T],
    done: Callable[[_T], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    awaiting: str | None = None,
    context: Callable[[], str] | None = None,
) -> _T:
    """Call ``probe`` every ``interval`` seconds until ``done(value)``; return that value.

    At the deadline (``timeout`` seconds): with ``awaiting`` (what is waited for, e.g. "three
    notes.log lines"), raise `WaitTimedOut` naming it and the last value, plus ``context()``
    (e.g. a log tail) when given; without ``awaiting``, return the last value. ``probe`` may
    raise to end the wait early (a process that died while awaited).
    """
    poll = _Poll(probe, done, timeout, awaiting, context)
    while not poll.over():
        time.sleep(interval)
    return poll.outcome()


async def wait_until_async(
    probe: Callable[[], _T],
    done: Callable[[_T], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    awaiting: str | None = None,
    context: Callable[[], str] | None = None,
) -> _T:
    """`wait_until` inside an event loop: sleeps with asyncio, so the awaited tasks run."""
    poll = _Poll(probe, done, timeout, awaiting, context)
    while not poll.over():
        await asyncio.sleep(interval)
    return poll.outcome()


class _Poll(Generic[_T]):
    """One bounded wait, less its sleeps (which differ in and out of an event loop)."""

    def __init__(
        self,
        probe: Callable[[], _T],
        done: Callable[[_T], bool],
        timeout: float,
        awaiting: str | None,
        context: Callable[[], str] | None,
    ) -> None:
        self._probe, self._done = probe, done
        self._timeout, self._awaiting, self._context = timeout, awaiting, context
        self._deadline = time.monotonic() + timeout
        self._satisfied = False

    def over(self) -> bool:
        """Probe once: True when the value is the awaited one or the deadline has passed."""
        self._value = self._probe()
        self._satisfied = self._done(self._value)
        return self._satisfied or time.monotonic() >= self._deadline

    def outcome(self) -> _T:
        """The last value, or `WaitTimedOut` if it is not the awaited one and ``awaiting``."""
        if self._satisfied or self._awaiting is None:
            return self._value
        shown = repr(self._value)
        if len(shown) > _SHOWN_CHARS:
            shown = shown[:_SHOWN_CHARS] + f"... ({len(shown)} characters)"
        message = (
            f"timed out after {self._timeout:g} s awaiting {self._awaiting}; last seen: {shown}"
        )
        if self._context is not None:
            message += "\n" + self._context()
        raise WaitTimedOut(message)


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One line of Squid's native access.log format."""

    timestamp: float
    elapsed_ms: int
    client: str
    result: str  # e.g. TCP_HIT, TCP_MISS, TCP_CF_MISS
    status: int  # HTTP status sent to the client, e.g. 206
    bytes: int
    method: str
    url: str
    hierarchy: str  # e.g. HIER_DIRECT/127.0.0.1, HIER_NONE/-
    content_type: str

    @property
    def code(self) -> str:
        """``RESULT/STATUS`` as printed, e.g. ``TCP_HIT/206``."""
        return f"{self.result}/{self.status}"


def parse_access_line(line: str) -> AccessLogEntry | None:
    """Parse a native-format access.log line; None when it has another shape."""
    fields = line.split()
    if len(fields) < 10 or "/" not in fields[3]:
        return None
    result, _, status = fields[3].partition("/")
    try:
        return AccessLogEntry(
            timestamp=float(fields[0]),
            elapsed_ms=int(fields[1]),
            client=fields[2],
            result=result,
            status=int(status),
            bytes=int(fields[4]),
            method=fields[5],
            url=fields[6],
            hierarchy=fields[8],
            content_type=fields[9],
        )
    except ValueError:
        return None


def read_text(path: Path) -> str:
    """A log's text so far; empty before Squid created it."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def read_lines(path: Path) -> list[str]:
    """A log's non-blank lines so far."""
    return [line for line in read_text(path).splitlines() if line.strip()]


def wait_for_lines(path: Path, count: int, *, timeout: float) -> list[str]:
    """The log's non-blank lines once there are ``count`` of them (or more); `WaitTimedOut`
    if they are not there within ``timeout`` seconds. Squid writes each log's line for a
    transaction in turn, so one log's line may land a moment after another's."""
    return wait_until(
        lambda: read_lines(path),
        lambda lines: len(lines) >= count,
        timeout=timeout,
        awaiting=f"{count} lines in {path}",
    )


def access_log_entries(path: Path) -> list[AccessLogEntry]:
    """The parsed native-format lines of the access.log at ``path`` (others skipped)."""
    entries = (parse_access_line(line) for line in read_lines(path))
    return [entry for entry in entries if entry is not None]
