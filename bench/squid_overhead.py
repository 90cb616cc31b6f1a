#!/usr/bin/env python3
"""Squid throughput on ordinary traffic with the patchcache suite attached vs without.

Run by hand (not in CI):  .venv/bin/python bench/squid_overhead.py [--requests 4000]

The same Squid build, the same origin, run side by side: profile `default` (no patchcache) and
profile `patchcache` (store-ID helper, ICAP service, prefetcher attached by the generated
config). Clients fetch small ordinary objects (cache misses and hits) over keep-alive
connections; also a run on update URLs, which do pass through the helper and ICAP. Both Squids
run at once and take turns for ``--rounds`` rounds (so drift on a busy machine hits both alike);
the best round of each is kept. Prints requests/s and the ratio (target for ordinary traffic:
at least 0.97x).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from patchcache.testbed import Origin, http_request
from patchcache.testbed.stack import Stack


def load(proxy: str, urls: list[str], threads: int) -> float:
    def worker(part: list[str]) -> None:
        for url in part:
            reply = http_request(proxy, url, timeout=30)
            if reply.status != 200:
                raise SystemExit(f"{url}: HTTP {reply.status}")

    parts = [urls[i::threads] for i in range(threads)]
    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, parts))
    return len(urls) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with Origin() as origin, tempfile.TemporaryDirectory(prefix="pc-overhead-") as tmp:
        for i in range(200):
            origin.register(f"/static/{i}.js", 16 * 1024, cache_control="max-age=3600")
            origin.register(f"/d/msdownload/update/software/secu/2026/11/kb{i}.cab", 16 * 1024)
        ordinary = [
            f"http://mirror.example.com:{origin.port}/static/{i % 200}.js"
            for i in range(args.requests)
        ]
        update = [
            f"http://download.windowsupdate.com:{origin.port}"
            f"/d/msdownload/update/software/secu/2026/11/kb{i % 200}.cab"
            for i in range(args.requests)
        ]
        rates: dict[tuple[str, str], float] = {}
        with (
            Stack(Path(tmp) / "default", profile="default") as default,
            Stack(Path(tmp) / "patchcache", profile="patchcache") as patchcache,
        ):
            stacks = (("default", default), ("patchcache", patchcache))
            for _, stack in stacks:
                load(stack.proxy_url, ordinary[:200] + update[:200], args.threads)  # warm up
            for _ in range(args.rounds):
                for profile, stack in stacks:
                    for name, urls in (("ordinary", ordinary), ("update", update)):
                        rate = load(stack.proxy_url, urls, args.threads)
                        rates[(profile, name)] = max(rates.get((profile, name), 0.0), rate)
        print(f"{'traffic':<10} {'default req/s':>14} {'patchcache req/s':>17} {'ratio':>6}")
        for name in ("ordinary", "update"):
            base, ours = rates[("default", name)], rates[("patchcache", name)]
            print(f"{name:<10} {base:>14,.0f} {ours:>17,.0f} {ours / base:>6.2f}")


if __name__ == "__main__":
    main()
