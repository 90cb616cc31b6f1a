"""Token-bucket throttle, measured against a virtual clock (no real sleeping, exact numbers)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from patchcache.prefetch.throttle import MonotonicClock, Throttle, TokenBucket

MiB = 1 << 20


class VirtualClock:
    """Time stands still until every task sleeps; then it jumps to the earliest wake-up."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), future))
        await future

    async def run(self, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        tasks = [asyncio.create_task(c) for c in coros]
        for _ in range(10_000_000):
            for _ in range(5):
                await asyncio.sleep(0)  # let every runnable task reach its next sleep
            if all(task.done() for task in tasks):
                break
            assert self._sleepers, "a task is blocked on something other than the clock"
            wake, _, future = heapq.heappop(self._sleepers)
            self.t = max(self.t, wake)
            future.set_result(None)
        return [task.result() for task in tasks]


async def _reader(
    throttle: Throttle,
    clock: VirtualClock,
    class_name: str,
    total: int,
    piece: int,
    trace: list[tuple[float, int]] | None = None,
) -> float:
    """Read `total` bytes in `piece`s, paying for each; return when the last debt is paid."""
    done = 0
    while done < total:
        take = min(piece, total - done)
        done += take
        if trace is not None:
            trace.append((clock.now(), take))
        await throttle.pay(class_name, take)
    return clock.now()


def test_a_single_fill_runs_at_the_rate_within_a_tenth_of_a_percent() -> None:
    clock = VirtualClock()
    rate = 10 * MiB
    throttle = Throttle(None, {"wu": rate}, clock=clock)
    total = 200 * MiB
    (finished,) = asyncio.run(clock.run(_reader(throttle, clock, "wu", total, 64 * 1024)))
    burst = rate / 4
    ideal = (total - burst) / rate
    print(f"200 MiB at 10 MiB/s: {finished:.4f} s (ideal {ideal:.4f} s)")
    assert finished == pytest.approx(ideal, rel=1e-3)


@pytest.mark.parametrize("piece", [1000, 64 * 1024, 3 * MiB])
def test_no_interval_carries_more_than_rate_times_length_plus_burst(piece: int) -> None:
    clock = VirtualClock()
    rate = 4 * MiB
    throttle = Throttle(rate, {}, clock=clock)
    trace: list[tuple[float, int]] = []
    asyncio.run(clock.run(_reader(throttle, clock, "any", 40 * MiB, piece, trace)))
    burst = rate / 4
    # Bytes read in [start, end] for every pair of read instants (reads happen at trace times).
    times = [t for t, _ in trace]
    sizes = [n for _, n in trace]
    prefix = list(itertools.accumulate(sizes, initial=0))
    for i in range(0, len(trace), max(1, len(trace) // 50)):
        for j in range(i, len(trace), max(1, len(trace) // 50)):
            carried = prefix[j + 1] - prefix[i]
            # The piece read at times[j] is paid for after it is read: allow one piece.
            assert carried <= rate * (times[j] - times[i]) + burst + sizes[j] + 1e-6


def test_the_global_bucket_is_shared_and_class_buckets_cap_their_class() -> None:
    clock = VirtualClock()
    throttle = Throttle(6 * MiB, {"slow": 2 * MiB, "free": None}, clock=clock)
    total_slow, total_free = 20 * MiB, 40 * MiB
    slow_end, free_end = asyncio.run(
        clock.run(
            _reader(throttle, clock, "slow", total_slow, 64 * 1024),
            _reader(throttle, clock, "free", total_free, 64 * 1024),
        )
    )
    # Both share 6 MiB/s; "slow" is held to 2 MiB/s, so "free" gets the other 4 MiB/s until
    # "slow" ends at ~10 s, then all 6 MiB/s: 40 MiB done at ~ (40 - 4*10)/6 + 10 = 10 s.
    print(f"slow class done at {slow_end:.3f} s, free class at {free_end:.3f} s")
    assert slow_end == pytest.approx(10.0, rel=0.03)
    assert free_end == pytest.approx(10.0, rel=0.03)
    together = (total_slow + total_free) / max(slow_end, free_end)
    assert together <= 6 * MiB * 1.03


def test_two_fills_of_one_class_split_its_rate() -> None:
    clock = VirtualClock()
    throttle = Throttle(None, {"wu": 2 * MiB}, clock=clock)
    ends = asyncio.run(
        clock.run(*(_reader(throttle, clock, "wu", 10 * MiB, 64 * 1024) for _ in range(2)))
    )
    assert max(ends) == pytest.approx(10.0, rel=0.03)


def test_an_idle_bucket_saves_up_at_most_its_burst() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(1000, burst=500, clock=clock)
    assert bucket.take(500) == 0.0
    clock.t = 3600.0  # an hour idle
    assert bucket.available == 500
    assert bucket.take(1500) == pytest.approx(1.0)  # 1000 bytes of debt at 1000 B/s


def test_unlimited_classes_never_wait_and_read_big_pieces() -> None:
    clock = VirtualClock()
    throttle = Throttle(None, {"wu": None}, clock=clock)
    assert not throttle.limited("wu")
    assert throttle.charge("wu", 10**12) == 0.0
    assert throttle.piece_size("wu") == 64 * 1024


def test_piece_size_is_a_tenth_of_a_second_at_the_tightest_rate() -> None:
    clock = VirtualClock()
    throttle = Throttle(10 * MiB, {"slow": 100_000}, clock=clock)
    assert throttle.piece_size("slow") == 10_000
    assert throttle.piece_size("other") == 64 * 1024
    assert Throttle(5000, {}, clock=clock).piece_size("x") == 1024


@pytest.mark.parametrize("rate", [0, -5])
def test_a_bucket_needs_a_positive_rate(rate: int) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate, clock=VirtualClock())


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(10, clock=VirtualClock()).take(-1)


def test_the_real_clock_sleeps() -> None:
    clock = MonotonicClock()
    before = clock.now()
    asyncio.run(clock.sleep(0.01))
    assert clock.now() > before
