#!/usr/bin/env python3
"""Upstream amplification: origin bytes / file size, Squid default vs best hand-tuned vs patchcache.

Run by hand (not in CI):  .venv/bin/python bench/amplification.py [--size-mib 256]

Real Squid on loopback, a local origin that counts the body bytes it actually sends, BITS-like
clients (sequential 1 MiB ranges) that verify every byte they get. Scenarios:
  variants   5 concurrent clients on 3 URL variants (hosts, c/ d/) of one update file
  over-max   an update file larger than the limit for ordinary traffic (8 MiB), 3 clients
  64 MiB     a smaller update file (the first range used to pass through before the object was
             known, 1 MiB / 64 MiB = 0.016; the store-ID helper's HEAD now expands it)
  alone      one client alone
  variants+HEAD  the same, each client sending a HEAD first (BITS)
  do-query   Delivery Optimization style, 4 clients each with its own P1..P4 query string, no
             HEAD (staggered, then all together)
  psf        an express payload read in 256 KiB ranges at random offsets, each client from its
             own 127.0.0.x: 3 x 16 MiB (upstream per byte read) and 12 x 48 MiB (per size)
  ordinary   ordinary content (a video) read by ranges: 3 clients x 4 MiB of a big file;
             patchcache must neither expand nor store: the target is exactly the bytes asked.
Targets for patchcache: <= 1.01 on every update scenario, exactly the asked bytes on ordinary
content, client wall time no worse than 1.2x Squid default.

One download of 256 MiB on loopback lasts about 1.5 s, so one wall-time sample swings by 15%:
``--rounds N`` runs the profiles N times, interleaved, and the time column is the ratio of the
medians. ``--only TEXT`` keeps the scenarios whose name contains TEXT (e.g. ``--only alone``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from patchcache.testbed import MiB
from patchcache.testbed.scenarios import FileSpec, ProfileResult, run_profile
from patchcache.testbed.stack import PROFILES


def scenarios(size: int) -> list[FileSpec]:
    return [
        FileSpec("variants: 5 clients, 3 URL variants", size, "wu", 5, variants=3, stagger=0.3),
        FileSpec("variants+HEAD: 5 BITS clients, HEAD first", size, "wu", 5, variants=3, head=True),
        FileSpec("over-max: > 8 MiB ordinary limit, 3 clients", size, "wu", 3, variants=1),
        FileSpec("64 MiB file, 3 clients", 64 * MiB, "wu", 3, variants=2),
        FileSpec("alone: one client", size, "wu", 1),
        FileSpec("do-query: 4 clients, own P1..P4", size, "do", 4, variants=4, stagger=0.3),
        FileSpec("do-query no HEAD, together", size, "do", 4, variants=4, stagger=0.0),
        FileSpec("psf: 3 x 16 MiB random (per read)", size, "psf", 3, read_bytes=16 * MiB),
        FileSpec(
            "psf: 12 x 48 MiB random (per size)",
            size,
            "psf",
            12,
            read_bytes=48 * MiB,
            per_size=True,
        ),
        FileSpec("ordinary: 3 x 4 MiB of a video", size, "plain", 3, read_bytes=4 * MiB),
    ]


def table(rounds: list[list[ProfileResult]]) -> str:
    results = rounds[0]
    out = []
    head = f"{'scenario':<42} " + " ".join(f"{r.profile:>12}" for r in results)
    head += f" {'pc time/default':>16}"
    out += [head, "-" * len(head)]
    for index, first in enumerate(results[0].files):
        cells = []
        for res in results:
            f = res.files[index]
            cells.append(f"{f.ratio:>11.3f}x")
        wall = _median_elapsed(rounds, "patchcache", index) / max(
            _median_elapsed(rounds, "default", index), 1e-9
        )
        out.append(f"{first.label:<42} " + " ".join(cells) + f" {wall:>15.2f}x")
    out.append("")
    out.append("update scenarios: upstream bytes / file size (1.000x = one copy for everyone);")
    out.append("ordinary: upstream bytes / bytes the clients asked for (1.000x = nothing extra).")
    if len(rounds) > 1:
        out.append(f"bytes: first of {len(rounds)} rounds; time: ratio of the medians.")
    return "\n".join(out)


def _median_elapsed(rounds: list[list[ProfileResult]], profile: str, index: int) -> float:
    return statistics.median(
        r.files[index].elapsed for results in rounds for r in results if r.profile == profile
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    args = parser.parse_args()
    specs = [spec for spec in scenarios(args.size_mib * MiB) if args.only in spec.label]
    if not specs:
        sys.exit(f"no scenario name contains {args.only!r}")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="pc-amplification-", dir="/tmp") as tmp:
        for number in range(args.rounds):
            results = []
            for profile in PROFILES:
                print(f"round {number + 1}: running {profile} ...", file=sys.stderr, flush=True)
                results.append(
                    run_profile(
                        profile,
                        specs,
                        workdir=Path(tmp),
                        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
                    )
                )
            rounds.append(results)
    print(table(rounds))


if __name__ == "__main__":
    main()
