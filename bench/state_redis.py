"""The store-ID helper's lookup, `expandable(key)`, on the Redis state next to the SQLite state.

    python bench/state_redis.py [--ops 20000] [--records 5000] [--writers 2] [--redis URL]

Without --redis it starts its own redis-server (Debian package) on a free loopback port,
without persistence. Prints p50/p99 of expandable() (hit and miss) for both backends, idle and
while `--writers` processes write as fast as they can (first sight + take + complete), and the
cost of a first sight and of a take/complete cycle. Target: p99 <= 1 ms per lookup on loopback.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from patchcache.state.open import open_state
from patchcache.state.redis_url import parse_redis_url
from patchcache.testbed.ports import free_port
from patchcache.testbed.squid_logs import wait_until

URL = "http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb.cab"


def latencies_us(count: int, call: Callable[[int], object]) -> list[float]:
    found = []
    for index in range(count):
        start = time.perf_counter()
        call(index)
        found.append((time.perf_counter() - start) * 1e6)
    return found


def p50_p99(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    args = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
        "--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:

        def answers() -> bool:
            with suppress(redis.ConnectionError):
                return bool(client.ping())
            return False

        wait_until(answers, bool, timeout=20, awaiting="redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(20)


def writer(spec: str, index: int, seconds: float) -> None:
    store = open_state(spec)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        key = f"w{index}-{n}"
        store.record_first_sight(key, URL, "windows", 1000, None, None)
        job = store.take_job(f"w{index}", 60.0)
        if job is not None:
            store.complete(job)
        n += 1
    store.close()


def socket_floor(url: str, ops: int) -> str:
    """A GET written and read on a plain socket: what this box allows any Redis client."""
    target = parse_redis_url(url)
    sock = socket.create_connection((target.host, target.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"*2\r\n$3\r\nGET\r\n$6\r\nabsent\r\n"
    if target.db:
        sock.sendall(f"*2\r\n$6\r\nSELECT\r\n${len(str(target.db))}\r\n{target.db}\r\n".encode())
        sock.recv(100)

    def get(_: int) -> None:
        sock.sendall(request)
        sock.recv(100)

    p50, p99 = p50_p99(latencies_us(ops, get))
    sock.close()
    what = "GET on a plain socket (the floor)"
    return f"{'redis':7} {what:38} p50 {p50:8.1f} us  p99 {p99:8.1f} us"


def measure(name: str, spec: str, ops: int, records: int, writers: int) -> list[str]:
    lines = []
    with open_state(spec) as store:
        for n in range(records):
            store.record_first_sight(f"k{n}", URL, "windows", 1000, None, None)
        for _ in range(200):  # warm up the connection / page cache
            store.expandable("k0")
        hit = p50_p99(latencies_us(ops, lambda i: store.expandable(f"k{i % records}")))
        miss = p50_p99(latencies_us(ops, lambda i: store.expandable(f"absent{i}")))
        sightings = p50_p99(
            latencies_us(
                min(ops, 2000),
                lambda i: store.record_first_sight(f"n{i}", URL, "windows", 1, None, None),
            )
        )

        def cycle(i: int) -> None:
            job = store.take_job("bench", 60.0)
            if job is not None:
                store.complete(job)

        cycles = p50_p99(latencies_us(min(ops, 2000), cycle))
        busy = (0.0, 0.0)
        if writers:
            procs = [
                multiprocessing.Process(target=writer, args=(spec, w, 30.0)) for w in range(writers)
            ]
            for proc in procs:
                proc.start()
            time.sleep(1.0)
            busy = p50_p99(latencies_us(ops, lambda i: store.expandable(f"k{i % records}")))
            for proc in procs:
                proc.terminate()
                proc.join()
    for what, (p50, p99) in (
        ("expandable() hit", hit),
        ("expandable() miss", miss),
        (f"expandable() hit, {writers} writers busy", busy),
        ("record_first_sight() new", sightings),
        ("take_job()+complete()", cycles),
    ):
        lines.append(f"{name:7} {what:38} p50 {p50:8.1f} us  p99 {p99:8.1f} us")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--redis", default=None, help="an existing (empty) redis:// database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = measure("sqlite", tmp + "/state", args.ops, args.records, args.writers)
        if args.redis:
            lines += measure("redis", args.redis, args.ops, args.records, args.writers)
            lines.append(socket_floor(args.redis, args.ops))
        else:
            with redis_server(Path(tmp)) as url:
                lines += measure("redis", url, args.ops, args.records, args.writers)
                lines.append(socket_floor(url, args.ops))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
