"""How exactly the prefetcher holds a fill to its bandwidth limit.

Three measurements, printed as achieved rate / limit:

1. `virtual`: the token buckets alone against a virtual clock (pure arithmetic: any error here is
   a bug, not noise), for several rates, piece sizes and numbers of concurrent fills, with a
   global and a class bucket.
2. `asyncio`: the same buckets with real `asyncio.sleep`, reading from nothing: the event loop's
   timer accuracy.
3. `squid`: a real fill through a throwaway Squid 5.7 with the generated patchcache config, from
   the byte-counting testbed origin, once with the prefetcher's reader throttle alone and once
   with the generated delay pools. The rates are reported at the prefetcher (whole fill) and at
   the origin (first to last body byte): the origin's is what the WAN sees.

    python bench/prefetch_throttle.py [--quick] [--skip-squid]

Run as root (Squid switches to user proxy; its helpers must reach this Python).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import os
import pwd
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from patchcache.installation import check_runnable, console_script
from patchcache.prefetch.fetch import Proxy
from patchcache.prefetch.throttle import MonotonicClock, Throttle
from patchcache.prefetch.worker import Prefetcher, WorkerSettings
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.squidconf.delay_pools import render_delay_pools
from patchcache.state import StateStore
from patchcache.testbed import Origin, SquidInstance

MiB = 1 << 20


class VirtualClock:
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
        while not all(t.done() for t in tasks):
            for _ in range(5):
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                break
            wake, _, future = heapq.heappop(self._sleepers)
            self.t = max(self.t, wake)
            future.set_result(None)
        return [t.result() for t in tasks]


async def _read(throttle: Throttle, clock: Any, cls: str, total: int, piece: int) -> float:
    done = 0
    while done < total:
        take = min(piece, total - done)
        done += take
        await throttle.pay(cls, take)
    return float(clock.now())


def bench_virtual(quick: bool) -> None:
    print("== virtual clock: token buckets alone (achieved / limit over the whole transfer)")
    print(f"{'limit':>10} {'piece':>9} {'fills':>5} {'seconds':>8} {'ratio':>7}  burst-free ratio")
    seconds = 30 if quick else 120
    for rate in (1 * MiB, 10 * MiB, 100 * MiB):
        for piece in (1024, 64 * 1024, 1 * MiB):
            for fills in (1, 4):
                clock = VirtualClock()
                throttle = Throttle(rate, {"c": rate}, clock=clock)
                total = rate * seconds // fills
                ends = asyncio.run(
                    clock.run(*(_read(throttle, clock, "c", total, piece) for _ in range(fills)))
                )
                elapsed = max(ends)
                achieved = total * fills / elapsed
                burst = rate / 4
                steady = (total * fills - burst) / elapsed
                print(
                    f"{rate / MiB:>6.0f}MiB/s {piece:>9} {fills:>5} {elapsed:>8.2f} "
                    f"{achieved / rate:>7.4f}  {steady / rate:.4f}"
                )


def bench_asyncio(quick: bool) -> None:
    print("== real clock: asyncio.sleep timer accuracy (3 s per line)")
    for rate, piece in ((1 * MiB, 16 * 1024), (8 * MiB, 64 * 1024), (64 * MiB, 64 * 1024)):
        clock = MonotonicClock()
        throttle = Throttle(None, {"c": rate}, clock=clock)
        total = rate * (2 if quick else 3)
        began = time.monotonic()
        asyncio.run(_read(throttle, clock, "c", total, piece))
        elapsed = time.monotonic() - began
        steady = (total - rate / 4) / elapsed  # without the bucket's initial burst
        print(
            f"  limit {rate / MiB:>4.0f} MiB/s piece {piece:>6}: {total / elapsed / rate:.4f}x, "
            f"burst-free {steady / rate:.4f}x"
        )


RULES = """
packs = []
[classes.plain]
hosts = ["mirror.example.com"]
path = '^/files/.+$'
key = "{{path}}"
max_object_size = "4 GiB"
prefetch_rate = {rate}
"""


def fill_once(work: Path, rate: int, seconds: float, pools: bool) -> tuple[float, float, float]:
    """(prefetcher rate, origin rate, origin copies) for one throttled fill through Squid."""
    work.mkdir(parents=True)
    rules_path = work / "rules.toml"
    rules_path.write_text(RULES.format(rate=rate))
    rules = load_rules(rules_path)
    binary = console_script()
    if os.geteuid() == 0:
        check_runnable(binary)
    state_dir = work / "state"
    StateStore(state_dir).close()
    if os.geteuid() == 0:
        user = pwd.getpwnam("proxy")
        for path in (state_dir, *state_dir.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
    conf = render_squid_conf(
        rules,
        ConfOptions(
            patchcache_bin=str(binary),
            rules_path=rules_path,
            state_dir=state_dir,
            store_id_children=1,
            concurrency=10,
        ),
    )
    if pools:
        conf += render_delay_pools(rules)
    size = int(rate * seconds)
    with Origin() as origin:
        obj = origin.register("/files/bench.bin", size)
        url = origin.url(obj, host="mirror.example.com", with_port=False)
        squid = SquidInstance(conf, workdir=work / "squid", origin_peer_port=origin.port)
        with squid, StateStore(state_dir) as store:
            match = rules.match(url)
            assert match is not None
            store.record_first_sight(match.key, url, match.cls.name, size, None, None)
            settings = WorkerSettings(
                proxy=Proxy.parse(squid.proxy_url),
                owner="bench",
                lease_seconds=10,
                poll_interval=0.05,
                once=True,
            )
            began = time.monotonic()
            tally = asyncio.run(Prefetcher(store, rules, settings).run())
            elapsed = time.monotonic() - began
            assert tally.completed == 1, tally
        (fetch,) = [r for r in origin.requests(obj.path) if r.body_bytes]
        origin_rate = fetch.body_bytes / (fetch.finished - fetch.started)
        return size / elapsed, origin_rate, origin.copies_sent(obj.path)


def bench_squid(quick: bool) -> None:
    print("== real Squid 5.7: one throttled fill (rate / limit)")
    print(f"{'limit':>10} {'seconds':>7} {'mode':<22} {'prefetcher':>10} {'origin':>8} copies")
    seconds = 4.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="pc-bench-") as tmp:
        for number, (rate, pools) in enumerate(
            itertools.product((2 * MiB, 8 * MiB), (False, True))
        ):
            mode = "reader + delay pools" if pools else "reader only"
            fill, origin, copies = fill_once(Path(tmp) / f"run{number}", rate, seconds, pools)
            print(
                f"{rate / MiB:>6.0f}MiB/s {seconds:>7.0f} {mode:<22} {fill / rate:>10.3f} "
                f"{origin / rate:>8.3f} {copies:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--skip-squid", action="store_true", help="no Squid part")
    args = parser.parse_args()
    bench_virtual(args.quick)
    bench_asyncio(args.quick)
    if not args.skip_squid:
        bench_squid(args.quick)


if __name__ == "__main__":
    main()
