#!/usr/bin/env python3
"""More than one proxy: upstream bytes and client wall time for a tree and a CARP farm.

Run by hand (not in CI):  .venv/bin/python bench/tiers.py [--size-mib 64] [--only tree]

Real Squids on loopback (`patchcache.testbed.topology`), a local origin counting the body bytes
it sends, BITS-like clients (sequential 1 MiB ranges) verifying every byte; the bytes on each
Squid-to-Squid link are counted on the wire by a relay (heads included).

  tree  one parent with the origin behind it, two branches, three clients at each branch on
        three host variants of one Windows Update file. Columns: origin bytes / size, each
        branch link's bytes / size.
  farm  a front Squid with CARP over three back ends, six clients at the front on three
        Delivery Optimization hosts, each with its own P1..P4. Columns: origin bytes / size,
        and how many back ends fetched the object.

Configurations, each the same topology:
  squid default      Squid as shipped at every box (plain `cache_peer parent` / plain CARP)
  squid tuned        Squid's best hand configuration at every box (`range_offset_limit -1`,
                     `collapsed_forwarding on`, ...; docs/squid-behaviour.md)
  patchcache before  tree: branches as `squid-conf` generated them before `--parent` (store-ID
                     only, never expand); farm: patchcache back ends behind a plain CARP front
  patchcache         `squid-conf --parent` branches / `squid-conf --carp-back` front

Wall time: from the first client's start to the last client's end (all clients of the run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from patchcache.testbed import MiB, Origin, run_clients
from patchcache.testbed.stack import Profile
from patchcache.testbed.topology import Farm, Tree

RULES = """\
[settings]
default_max_object_size = "8 MiB"
prefetch_delay = 1
"""
WU_DIR = "/d/msdownload/update/software/secu/2026/11"
WU_HOSTS = (
    "download.windowsupdate.com",
    "au.download.windowsupdate.com",
    "wsus.ds.download.windowsupdate.com",
)
DO_HOSTS = (
    "tlu.dl.delivery.mp.microsoft.com",
    "2.tlu.dl.delivery.mp.microsoft.com",
    "dl.delivery.mp.microsoft.com",
)
GUID = "7f3c1d2e-8a9b-4c5d-9e0f-112233445566"
CONFIGS: tuple[tuple[str, Profile, bool], ...] = (
    ("squid default", "default", False),
    ("squid tuned", "tuned", False),
    ("patchcache before", "patchcache", True),
    ("patchcache", "patchcache", False),
)


@dataclass
class Row:
    config: str
    origin: float  # origin bytes / size
    links: list[float]  # per link bytes / size
    wall: float


def run_tree(size: int, config: str, profile: Profile, before: bool, workdir: Path) -> Row:
    with Origin() as origin:
        obj = origin.register_digest_named(WU_DIR, size, suffix=".msu", seed=config)
        urls = [f"http://{WU_HOSTS[i % 3]}:{origin.port}{obj.path}" for i in range(3)]
        tree = Tree(
            workdir / f"tree-{profile}-{before}",
            origin.port,
            profile=profile,
            rules_text=RULES,
            branches=2,
            branch_suite=not before,
        )
        with tree:
            start = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                list(
                    pool.map(
                        lambda branch: run_clients(
                            branch.proxy_url,
                            urls,
                            size=obj.size,
                            verify=obj.content,
                            stagger=0.2,
                            timeout=900,
                        ),
                        tree.children,
                    )
                )
            wall = time.monotonic() - start
            tree.wait_queues_drained(timeout=300)
            links = [link.settled_bytes_down() / size for link in tree.links]
            return Row(config, origin.bytes_sent(obj.path) / size, links, wall)


def run_farm(size: int, config: str, profile: Profile, before: bool, workdir: Path) -> Row:
    with Origin() as origin:
        obj = origin.register(f"/filestreamingservice/files/{GUID}", size, seed=config)
        urls = [
            f"http://{DO_HOSTS[i % 3]}:{origin.port}{obj.path}"
            f"?P1={1800000000 + i}&P2=404&P3=2&P4=s{i}"
            for i in range(6)
        ]
        farm = Farm(
            workdir / f"farm-{profile}-{before}",
            origin.port,
            profile=profile,
            rules_text=RULES,
            backs=3,
            plain_front=before,
        )
        with farm:
            start = time.monotonic()
            run_clients(
                farm.proxy_url, urls, size=obj.size, verify=obj.content, stagger=0.2, timeout=900
            )
            wall = time.monotonic() - start
            farm.wait_queues_drained(timeout=300)
            links = [link.settled_bytes_down() / size for link in farm.links]
            return Row(config, origin.bytes_sent(obj.path) / size, links, wall)


def table(title: str, rows: list[Row], link_label: Callable[[Row], str]) -> str:
    out = [title, f"{'configuration':<20} {'origin/size':>12} {'links':>26} {'wall s':>8}"]
    for row in rows:
        out.append(f"{row.config:<20} {row.origin:>11.3f}x {link_label(row):>26} {row.wall:>8.2f}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--only", choices=("tree", "farm"), default=None)
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="pc-tiers-", dir="/tmp") as tmp:
        Path(tmp).chmod(0o755)  # Squid runs as proxy and must reach its directories
        if args.only in (None, "tree"):
            rows = []
            for config, profile, before in CONFIGS:
                print(f"tree: {config} ...", file=sys.stderr, flush=True)
                rows.append(run_tree(size, config, profile, before, Path(tmp)))
            print(
                table(
                    f"tree: parent + 2 branches x 3 clients, {args.size_mib} MiB, 3 host variants",
                    rows,
                    lambda r: " ".join(f"{x:.3f}x" for x in r.links),
                )
            )
            print()
        if args.only in (None, "farm"):
            rows = []
            for config, profile, before in CONFIGS:
                print(f"farm: {config} ...", file=sys.stderr, flush=True)
                rows.append(run_farm(size, config, profile, before, Path(tmp)))
            print(
                table(
                    f"farm: front + 3 back ends, 6 clients, {args.size_mib} MiB, 6 URL variants",
                    rows,
                    lambda r: f"{sum(1 for x in r.links if x > 0)} back end(s) served",
                )
            )
    print(
        "\norigin/size: 1.000x = one copy from the Internet; links: bytes each branch link "
        "carried / size (heads included)."
    )


if __name__ == "__main__":
    main()
