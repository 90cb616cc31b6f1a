"""Overloading Squid's helper pool on purpose: a slow stand-in helper and a closed-loop load.

Squid queues helper lookups when every helper is busy; past the pool's `queue-size` the pool
counts as overloaded, and an overload lasting 3 minutes triggers `on-persistent-overload`
(Squid 5: `die` by default, which stops the worker). The load test and
`bench/helper_overload.py` run the configuration `patchcache squid-conf` generates with
:func:`write_slow_helper` in place of the patchcache program, so only the helper's speed
differs from production, and drive it with :func:`closed_loop`: `clients` threads, each sending
its next request as soon as the last one is answered. With more clients than the pool holds
(running plus queued) the queue stays over its limit for as long as the load lasts.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_HELPER = """#!/usr/bin/python3
# Stand-in for `patchcache store-id`: answers every lookup ERR after {delay} s, one at a time.
import sys
import time

for line in sys.stdin:
    channel = line.split(" ", 1)[0] if {concurrent} else ""
    time.sleep({delay})
    sys.stdout.write((channel + " ERR\\n").lstrip())
    sys.stdout.flush()
"""


def write_slow_helper(path: Path, *, delay: float, concurrent: bool = True) -> Path:
    """Write an executable helper program answering `ERR` after `delay` seconds per line.

    `concurrent`: Squid sends a channel ID first (any `concurrency=` above 0), repeated in
    the answer. The program accepts and ignores any arguments (`store-id --rules ...`).
    """
    path.write_text(_HELPER.format(delay=float(delay), concurrent=bool(concurrent)))
    path.chmod(0o755)
    return path


@dataclass(slots=True)
class LoadResult:
    """What the clients saw."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


def closed_loop(
    proxy_url: str,
    urls: Sequence[str],
    *,
    clients: int,
    seconds: float,
    timeout: float = 60.0,
) -> LoadResult:
    """`clients` threads GET `urls` (round robin) through the proxy for `seconds`, each
    request sent when the previous one of its thread was answered (or failed). Every request
    started is finished or failed before this returns (bounded by `timeout` per request)."""
    proxy = urlsplit(proxy_url)
    assert proxy.hostname is not None and proxy.port is not None
    host, port = proxy.hostname, proxy.port
    result = LoadResult()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run(index: int) -> None:
        count = index
        conn: http.client.HTTPConnection | None = None
        while time.monotonic() < stop_at:
            url = urls[count % len(urls)]
            count += 1
            began = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.request("GET", url)
                response = conn.getresponse()
                response.read()
                status, error = response.status, None
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status, error = None, type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            took = time.monotonic() - began
            if error is not None:
                time.sleep(0.05)  # a proxy that went away: no busy loop of refused connections
            with lock:
                result.sent += 1
                result.slowest = max(result.slowest, took)
                if status is not None:
                    result.statuses[status] += 1
                if error is not None:
                    result.errors[error] += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 10)
    return result
