#!/usr/bin/env python3
"""`patchcache report` vs Debian's `calamaris -n` (Squid log analyser, Perl), side by side.

Run by hand (not in CI):  .venv/bin/python bench/report_vs_calamaris.py [--lines 1000000]

Both read the same generated access.log (Squid's native format, the classes' URLs plus other
traffic; `patchcache.report.synthetic`) from a file, and write their report to /dev/null.
Each runs `--runs` times as a separate process (start-up included: that is what an admin waits
for); the best run counts. Reported: lines/s by wall time and by CPU time (the machine may be
shared: CPU time is the fairer figure), and the ratio patchcache / calamaris. calamaris is
installed with apt if missing (root only).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from patchcache.report.synthetic import write_file


def ensure_calamaris() -> str:
    found = shutil.which("calamaris")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("calamaris is missing: apt-get install calamaris (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "calamaris"], check=True, env=env)
    found = shutil.which("calamaris")
    if not found:
        sys.exit("calamaris still missing after apt-get install")
    return found


def timed(argv: list[str], stdin_path: Path | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) for one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with stdin_path.open("rb") if stdin_path else open(os.devnull, "rb") as stdin:
        subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def best(argv: list[str], stdin_path: Path | None, runs: int) -> tuple[float, float]:
    results = [timed(argv, stdin_path) for _ in range(runs)]
    return min(r[0] for r in results), min(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--log", type=Path, default=None, help="Use this log, not a new one.")
    args = parser.parse_args()
    calamaris = ensure_calamaris()
    with tempfile.TemporaryDirectory(prefix="pc-report-bench-") as tmp:
        log = args.log
        if log is None:
            log = Path(tmp) / "access.log"
            print(f"generating {args.lines} lines ...", file=sys.stderr)
            write_file(log, args.lines)
        lines = sum(1 for _ in log.open("rb"))
        size_mb = log.stat().st_size / 1e6
        print(f"log: {lines} lines, {size_mb:.0f} MB")
        cal = best([calamaris, "-n"], log, args.runs)
        ours = best(
            [
                sys.executable,
                "-m",
                "patchcache.cli",
                "report",
                "--access-log",
                str(log),
                "--format",
                "json",
                "--out",
                os.devnull,
            ],
            None,
            args.runs,
        )
    print(f"{'':18} {'wall s':>8} {'lines/s':>10} {'CPU s':>8} {'lines/s':>10}")
    for name, (wall, cpu) in (("calamaris -n", cal), ("patchcache report", ours)):
        print(f"{name:18} {wall:8.2f} {lines / wall:10.0f} {cpu:8.2f} {lines / cpu:10.0f}")
    print(
        f"ratio (patchcache / calamaris): {cal[0] / ours[0]:.1f}x wall, {cal[1] / ours[1]:.1f}x CPU"
    )


if __name__ == "__main__":
    main()
