"""Bandwidth limits for prefetch fills on the prefetcher's side: token buckets, one global and
one per class.

Two layers hold a fill to its rate. On the WAN, only Squid can: an expanded fetch is decoupled
from its reader (that is what makes it survive the reader's death), so Squid reads the origin as
fast as it can whatever pace the prefetcher reads at (measured: 25x the reader's rate). The
generated delay pools (`patchcache.squidconf.delay_pools`) do that job. This module paces the
prefetcher's own reading at the same rates: the fill's progress and duration then match what the
WAN sees, the global rate is kept across all of this prefetcher's fills, and a Squid without the
delay pools still gets no more than the limit asked of it by this reader (useful on a LAN link
between a remote prefetcher and Squid).

Theory of operation: a fill reads a piece from the proxy socket, then *pays* for it. Paying takes
the piece's size out of every bucket that applies (the global one and the class's one) at once,
even if that drives a bucket into debt, and then sleeps until the deepest debt is repaid at that
bucket's rate. Paying after the fact (debt) instead of waiting before a read keeps the arithmetic
exact for any piece size: over any interval of T seconds a bucket lets through at most
`rate * T + burst` bytes, and several fills sharing the global bucket queue up behind its debt in
the order they paid.

Time comes from a `Clock`, so tests drive a fake one and measure accuracy without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol


class Clock(Protocol):
    """Monotonic time and a way to wait on it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TokenBucket:
    """`rate` bytes per second, up to `burst` bytes saved up while idle.

    The bucket starts full. `burst` defaults to a quarter second of traffic (at least 16 KiB): big
    enough that a reader paying in 64 KiB pieces is not slowed by rounding, small enough that an
    idle bucket cannot release a noticeable spike.
    """

    def __init__(self, rate: float, *, burst: float | None = None, clock: Clock) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(rate / 4, 16 * 1024)
        if self.burst <= 0:
            raise ValueError(f"burst must be positive, got {burst}")
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock.now()

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    def take(self, amount: int) -> float:
        """Spend `amount` bytes now; return how long the payer must wait to clear any debt."""
        if amount < 0:
            raise ValueError(f"amount must not be negative, got {amount}")
        self._refill()
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    @property
    def available(self) -> float:
        """Tokens now (negative while in debt)."""
        self._refill()
        return self._tokens


class Throttle:
    """The global bucket (if any) plus one bucket per class that has a rate.

    `pay(class_name, n)` charges every applicable bucket and sleeps for the longest debt.
    A class without its own rate is limited by the global bucket only; without any rate at all,
    `pay` returns at once.
    """

    def __init__(
        self,
        global_rate: int | None,
        class_rates: Mapping[str, int | None],
        *,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._global = (
            TokenBucket(global_rate, clock=self._clock) if global_rate is not None else None
        )
        self._classes = {
            name: TokenBucket(rate, clock=self._clock)
            for name, rate in class_rates.items()
            if rate is not None
        }

    @property
    def clock(self) -> Clock:
        return self._clock

    def limited(self, class_name: str) -> bool:
        """True when fills of `class_name` are rate-limited at all."""
        return self._global is not None or class_name in self._classes

    def piece_size(self, class_name: str, default: int = 64 * 1024) -> int:
        """How many bytes to read at a time: small enough that one piece is well under a tenth
        of a second at the tightest rate, so the rate is smooth at the scale of a TCP window."""
        rates = [b.rate for b in (self._global, self._classes.get(class_name)) if b is not None]
        if not rates:
            return default
        return max(1024, min(default, int(min(rates) / 10)))

    def charge(self, class_name: str, amount: int) -> float:
        """Spend `amount` in every bucket of `class_name`; the wait owed (seconds)."""
        wait = 0.0
        for bucket in (self._global, self._classes.get(class_name)):
            if bucket is not None:
                wait = max(wait, bucket.take(amount))
        return wait

    async def pay(self, class_name: str, amount: int) -> None:
        """Charge `amount` bytes read for a fill of `class_name`, then wait off the debt."""
        wait = self.charge(class_name, amount)
        if wait > 0:
            await self._clock.sleep(wait)
