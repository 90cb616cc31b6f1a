"""Measure the cost of patchcache.state operations on this machine and print the numbers.

    python bench/state_ops.py [--ops 20000] [--writers 4] [--state-dir DIR]

Single process: expandable() hit/miss, get(), record_first_sight() new/duplicate, a whole
take_job/renew/complete cycle. Then expandable() latency while `--writers` other processes
write as fast as they can (record_first_sight + take + complete), and the writers' throughput.
The state dir defaults to a fresh temporary directory (on the filesystem of $TMPDIR).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from patchcache.state import StateStore

URL = "http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/windows10.0-kb5034122-x64_2d6d6ef1a2f1a4a2f3d3e1d1c1b1a191817161514.cab"


def per_op_us(count: int, call: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for index in range(count):
        call(index)
    return (time.perf_counter() - start) / count * 1e6


def latencies_us(count: int, call: Callable[[int], object]) -> list[float]:
    found = []
    for index in range(count):
        start = time.perf_counter()
        call(index)
        found.append((time.perf_counter() - start) * 1e6)
    return found


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[int(len(ordered) * 0.99)]
    return (
        f"mean {statistics.fmean(values):7.1f} us  p50 {statistics.median(values):7.1f} us  "
        f"p99 {p99:8.1f} us  max {ordered[-1]:9.1f} us"
    )


def writer(state_dir: str, name: str, stop_at: float, done: multiprocessing.Queue[int]) -> None:
    ops = 0
    with StateStore(Path(state_dir)) as store:
        while time.time() < stop_at:
            store.record_first_sight(f"{name}-{ops}", URL, "windows", 10**8, None, None)
            job = store.take_job(name, 60.0)
            if job is not None:
                store.complete(job)
            ops += 1
    done.put(ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--state-dir", type=Path)
    options = parser.parse_args()
    ops: int = options.ops

    with tempfile.TemporaryDirectory() as tmp:
        state_dir = options.state_dir or Path(tmp) / "state"
        with StateStore(state_dir) as store:
            store.record_first_sight("hot", URL, "windows", 10**8, '"etag"', None)
            for index in range(1000):  # a non-trivial table
                store.record_first_sight(f"bg{index}", URL, "windows", 10**8, None, None)
            print(f"state dir: {state_dir}")
            hit = per_op_us(ops, lambda _: store.expandable("hot"))
            miss = per_op_us(ops, lambda _: store.expandable("nope"))
            get = per_op_us(ops, lambda _: store.get("hot"))
            print(f"expandable() hit        {hit:7.1f} us/op")
            print(f"expandable() miss       {miss:7.1f} us/op")
            print(f"get()                   {get:7.1f} us/op")
            writes = max(ops // 10, 100)
            new = per_op_us(
                writes,
                lambda i: store.record_first_sight(f"n{i}", URL, "windows", 10**8, None, None),
            )
            print(f"record_first_sight new  {new:7.1f} us/op")
            dup = per_op_us(
                writes,
                lambda i: store.record_first_sight(f"n{i}", URL, "windows", 10**8, None, None),
            )
            print(f"record_first_sight dup  {dup:7.1f} us/op")

            def cycle(_: int) -> None:
                job = store.take_job("bench", 60.0)
                assert job is not None
                store.renew(job, lease_seconds=60.0, bytes_filled=1)
                store.complete(job)

            print(f"take+renew+complete     {per_op_us(writes, cycle):7.1f} us/cycle")
            print(
                f"queue_length() over {store.queue_length()} jobs "
                f"{per_op_us(5, lambda _: store.queue_length()) / 1000:7.1f} ms"
            )
            print(
                f"counts_by_state() over {len(store.records())} records "
                f"{per_op_us(5, lambda _: store.counts_by_state()) / 1000:7.1f} ms"
            )

            if options.writers:
                context = multiprocessing.get_context("spawn")
                done: multiprocessing.Queue[int] = context.Queue()
                start_at = time.time() + 1.0  # let the writers start up first
                stop_at = start_at + options.seconds
                procs = [
                    context.Process(target=writer, args=(str(state_dir), f"w{n}", stop_at, done))
                    for n in range(options.writers)
                ]
                for proc in procs:
                    proc.start()
                time.sleep(max(0.0, start_at - time.time()))
                hits = latencies_us(ops, lambda _: store.expandable("hot"))
                first = latencies_us(
                    max(ops // 20, 50),
                    lambda i: store.record_first_sight(f"c{i}", URL, "windows", 1, None, None),
                )
                totals = [done.get(timeout=options.seconds + 60) for _ in procs]
                for proc in procs:
                    proc.join(timeout=60)
                print(f"with {options.writers} writer processes busy:")
                print(f"  expandable() hit       {summary(hits)}")
                print(f"  record_first_sight new {summary(first)}")
                print(
                    f"  writers: {sum(totals) / options.seconds:.0f} sight+take+complete/s in total"
                )


if __name__ == "__main__":
    main()
