"""Lines/s through run_helper with a trivial answer function (the protocol codec's overhead).

Starts a real helper process per run, as Squid does, and pipes N request lines of distinct
URLs (with Squid's default extras) into it, with and without channel IDs, through a pipe and
through a socketpair (what Squid uses on Linux). Prints lines/s, wall time including the
interpreter start, and lines per CPU second of the helper process (user + system, start-up
included), which other load on the machine disturbs less than wall time.

    python bench/helper_codec_overhead.py [--lines 500000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HELPER = """
import sys
from patchcache.helpers.protocol import Ok
from patchcache.helpers.runtime import run_helper

def answer(request):
    return Ok((("store-id", request.url),))

sys.exit(run_helper(answer))
"""

EXTRAS = "192.0.2.7/192.0.2.7 - GET myip=127.0.0.1 myport=3128"


def make_input(path: Path, lines: int, *, channels: bool) -> None:
    with path.open("w") as out:
        for i in range(lines):
            url = (
                f"http://{i % 7}.download.windowsupdate.com/c/msdownload/update/software/secu/"
                f"2024/05/windows10.0-kb{5000000 + i}-x64_{i:016x}.cab"
            )
            prefix = f"{i % 64} " if channels else ""
            out.write(f"{prefix}{url} {EXTRAS}\n")


def wait_cpu(helper: subprocess.Popen[bytes]) -> float:
    """Reap the helper; its user + system CPU seconds."""
    _, status, usage = os.wait4(helper.pid, 0)
    helper.returncode = os.waitstatus_to_exitcode(status)
    assert helper.returncode == 0, helper.returncode
    return usage.ru_utime + usage.ru_stime


def run_pipe(path: Path) -> tuple[float, float, int]:
    """Helper stdin is a pipe fed by `cat FILE`; stdout a pipe we drain."""
    start = time.perf_counter()
    with path.open("rb") as source:
        cat = subprocess.Popen(["cat"], stdin=source, stdout=subprocess.PIPE)
        helper = subprocess.Popen(
            [sys.executable, "-c", HELPER], stdin=cat.stdout, stdout=subprocess.PIPE
        )
        assert cat.stdout is not None and helper.stdout is not None
        cat.stdout.close()
        replies = 0
        while chunk := helper.stdout.read(1 << 16):
            replies += chunk.count(b"\n")
        cpu = wait_cpu(helper)
        cat.wait(timeout=60)
    return time.perf_counter() - start, cpu, replies


def run_socketpair(path: Path) -> tuple[float, float, int]:
    """Helper stdin and stdout are one end of a socketpair, as Squid sets it up on Linux."""
    ours, theirs = socket.socketpair()
    start = time.perf_counter()
    helper = subprocess.Popen(
        [sys.executable, "-c", HELPER], stdin=theirs.fileno(), stdout=theirs.fileno()
    )
    theirs.close()

    def send() -> None:
        with path.open("rb") as source:
            while chunk := source.read(1 << 16):
                ours.sendall(chunk)
        ours.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    replies = 0
    while chunk := ours.recv(1 << 16):
        replies += chunk.count(b"\n")
    sender.join(timeout=600)
    cpu = wait_cpu(helper)
    ours.close()
    return time.perf_counter() - start, cpu, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp, "empty")
        empty.touch()
        startup = min(run_pipe(empty)[:2] for _ in range(args.repeat))
        print(
            f"helper start-up (empty input): {startup[0] * 1000:.0f} ms wall, "
            f"{startup[1] * 1000:.0f} ms CPU (python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs)"
        )
        for channels in (False, True):
            path = Path(tmp, f"lines-{channels}")
            make_input(path, args.lines, channels=channels)
            for name, run in (("pipe", run_pipe), ("socketpair", run_socketpair)):
                runs = [run(path) for _ in range(args.repeat)]
                assert all(replies == args.lines for _, _, replies in runs), runs
                wall = min(wall for wall, _, _ in runs)
                cpu = min(cpu for _, cpu, _ in runs)
                print(
                    f"{'with' if channels else 'without'} channel IDs, {name:10}: "
                    f"{args.lines / wall:9,.0f} lines/s wall ({wall:.2f} s), "
                    f"{args.lines / cpu:9,.0f} lines/CPU-s ({cpu:.2f} s)"
                )


if __name__ == "__main__":
    main()
