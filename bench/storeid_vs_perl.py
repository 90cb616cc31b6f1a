#!/usr/bin/env python3
"""Store-ID helper throughput: patchcache vs Squid's Perl `storeid_file_rewrite`, side by side.

Run by hand (not in CI):  .venv/bin/python bench/storeid_vs_perl.py [--lines 500000]

Both helpers get the same input file on stdin and equivalent rules (Windows Update digest names
and Delivery Optimization GUIDs; other URLs do not match). Two streams:
  (a) distinct: every line a different URL (worst case for patchcache's answer cache);
  (b) ranged:   each URL repeated as one BITS client's ranges would be (32 requests per URL,
                four clients interleaved), the realistic case.
Each with and without concurrency channel IDs. Prints lines/s and the ratio to Perl.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from patchcache.installation import console_script

PERL_HELPER = "/usr/lib/squid/storeid_file_rewrite"
PERL_RULES = (
    r"^http:\/\/[^\/]*\.?download\.windowsupdate\.com\/[cd]\/msdownload\/update\/.*_([0-9a-fA-F]{40})\.(cab|msu|exe|psf)"
    "\thttp://windows-update.patchcache.squid.internal/sha1/$1\n"
    r"^http:\/\/[^\/]*\.?dl\.delivery\.mp\.microsoft\.com\/filestreamingservice\/files\/([0-9a-fA-F-]{36})"
    "\thttp://delivery-optimization.patchcache.squid.internal/files/$1\n"
)
EXTRAS = "10.1.2.3/- - GET myip=127.0.0.1 myport=3128"


def make_urls(count: int, rng: random.Random) -> list[str]:
    urls = []
    hosts = [
        "download.windowsupdate.com",
        "au.download.windowsupdate.com",
        "7.au.b1.download.windowsupdate.com",
    ]
    for i in range(count):
        kind = i % 4
        if kind in (0, 1):
            digest = f"{rng.getrandbits(160):040x}"
            urls.append(
                f"http://{rng.choice(hosts)}/{rng.choice('cd')}/msdownload/update/software/"
                f"secu/2024/{i % 12 + 1:02d}/windows10.0-kb{5000000 + i}-x64_{digest}.msu"
            )
        elif kind == 2:
            g = f"{rng.getrandbits(128):032x}"
            guid = f"{g[:8]}-{g[8:12]}-{g[12:16]}-{g[16:20]}-{g[20:]}"
            urls.append(
                f"http://{rng.randint(1, 9)}.tlu.dl.delivery.mp.microsoft.com/"
                f"filestreamingservice/files/{guid}?P1={1700000000 + i}&P2=404&P3=2"
                f"&P4={rng.getrandbits(64):016x}"
            )
        else:
            urls.append(f"http://www.example{i % 50}.org/static/{i}/page.html?x={i}")
    return urls


def ranged_stream(urls: list[str], repeats: int, clients: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(urls), clients):
        group = urls[start : start + clients]
        for _ in range(repeats):
            out.extend(group)
    return out


def write_input(path: Path, lines: list[str], channels: bool) -> None:
    with path.open("w") as fh:
        for n, url in enumerate(lines):
            fh.write(f"{n % 50} {url} {EXTRAS}\n" if channels else f"{url} {EXTRAS}\n")


def run(cmd: list[str], input_path: Path, expected: int) -> float:
    best = float("inf")
    for _ in range(3):
        with input_path.open("rb") as fh:
            start = time.perf_counter()
            done = subprocess.run(cmd, stdin=fh, stdout=subprocess.PIPE, check=True)
            elapsed = time.perf_counter() - start
        replies = done.stdout.count(b"\n")
        if replies != expected:
            sys.exit(f"{cmd[0]}: {replies} replies for {expected} lines")
        best = min(best, elapsed)
    return expected / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument(
        "--state-dir",
        default=None,
        help="Give the helper this (empty, throw-away) state dir: the expansion path is timed too.",
    )
    parser.add_argument(
        "--head-via", default=None, help="...and this proxy for its size look-ups (--head-via)."
    )
    args = parser.parse_args()
    if not Path(PERL_HELPER).exists():
        sys.exit(f"{PERL_HELPER} missing: apt-get install squid")
    ours = str(console_script())  # this installation's, never another one on PATH
    rng = random.Random(1)
    extra = ["--state-dir", args.state_dir] if args.state_dir else []
    extra += ["--head-via", args.head_via] if args.head_via else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rules = work / "perl.rules"
        rules.write_text(PERL_RULES)
        distinct = make_urls(args.lines, rng)
        ranged = ranged_stream(make_urls(args.lines // 32 + 1, rng), 32, 4)[: args.lines]
        print(
            f"{'stream':<10} {'channels':<9} {'perl lines/s':>13} {'patchcache':>12} {'ratio':>6}"
        )
        for name, lines in (("distinct", distinct), ("ranged", ranged)):
            for channels in (False, True):
                path = work / f"{name}-{channels}.txt"
                write_input(path, lines, channels)
                perl = run(["perl", PERL_HELPER, str(rules)], path, len(lines))
                mine = run([ours, "store-id", *extra], path, len(lines))
                print(
                    f"{name:<10} {'yes' if channels else 'no':<9} {perl:>13,.0f} {mine:>12,.0f}"
                    f" {mine / perl:>6.2f}"
                )
                os.unlink(path)


if __name__ == "__main__":
    main()
