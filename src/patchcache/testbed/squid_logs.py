"""Reading a throwaway Squid's logs, and waiting (bounded) for what they should show.

Squid writes access.log with ``stdio:`` in the testbed, a line after a transaction's last byte,
so a client may finish before its line appears: callers wait with `wait_until`, which returns
what it saw at the deadline and leaves the assertion to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def wait_until(
    probe: Callable[[], _T],
    done: Callable[[_T], bool],
    *,
    timeout: float,
    interval: float = 0.05,
) -> _T:
    """Call ``probe`` every ``interval`` seconds until ``done(value)`` or ``timeout`` seconds
    have passed; return the last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


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


def access_log_entries(path: Path) -> list[AccessLogEntry]:
    """The parsed native-format lines of the access.log at ``path`` (others skipped)."""
    entries = (parse_access_line(line) for line in read_lines(path))
    return [entry for entry in entries if entry is not None]
