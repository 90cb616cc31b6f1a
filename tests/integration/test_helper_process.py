"""The helper programs as Squid runs them (`patchcache store-id`, `patchcache url-rewrite`), each a
real subprocess fed on stdin, without Squid: what they do at start, under hostile input, with
hostile rules and when the state breaks under them. Every wait is bounded (subprocess timeouts,
deadlines); nothing is timed for speed.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from patchcache.testbed.stack import patchcache_binary

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU = f"http://download.windowsupdate.com/d/msdownload/update/software/x_{D40}.msu"
WU_KEY = f"http://windows-update.patchcache.squid.internal/sha1/{D40}"
WATCHDOG_SECONDS = 600.0
KL = "http://dnl-01.geo.kaspersky.com/bases/av/kdb/i386/kdb-i386-0607g.kdc"


def run_helper(
    args: list[str], data: bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [patchcache_binary(), *args],
        input=data,
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@contextmanager
def helper_process(*args: str, stderr: int) -> Iterator[subprocess.Popen[bytes]]:
    """A running `patchcache store-id`, killed if the test leaves it running, and by a watchdog
    after a generous bound (a stalled helper then gives EOF, and the test fails, not hangs)."""
    with subprocess.Popen(
        [patchcache_binary(), "store-id", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
    ) as proc:
        watchdog = threading.Timer(WATCHDOG_SECONDS, proc.kill)
        watchdog.start()
        try:
            yield proc
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


# -- (1) nothing at start makes a helper exit ---------------------------------------------------


def start_problems(tmp_path: Path) -> Iterator[tuple[str, list[str], dict[str, str], str]]:
    """(id, arguments, environment, expected stderr) of helpers that cannot load their rules."""
    directory = tmp_path / "rules-dir"
    directory.mkdir()
    yield "rules is a directory", ["--rules", str(directory)], {}, "Is a directory"
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b"# caf\xe9\n")
    yield "rules not UTF-8", ["--rules", str(not_utf8)], {}, "cannot read"
    yield "--rules without value", ["--rules"], {}, "requires an argument"
    yield "unknown option", ["--rulez", "x"], {}, "No such option"
    yield "extra argument", ["surplus"], {}, "unexpected extra argument"
    # A library that fails to load (a broken install, a shadowing module on PYTHONPATH).
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "re2.py").write_text("raise ImportError('re2 is broken here')\n")
    yield "broken library", [], {"PYTHONPATH": str(shadow)}, "re2 is broken here"


@pytest.mark.parametrize("command", ["store-id", "url-rewrite"])
def test_start_problems_are_logged_and_answered_err(tmp_path: Path, command: str) -> None:
    """Squid 5.7 stops itself when helpers exit at start ("crashing too rapidly"): each problem
    is one stderr line, then every request is answered ERR until Squid closes stdin."""
    for name, args, env, expected in start_problems(tmp_path):
        done = run_helper([command, *args], f"1 {WU}\n2 {KL} -\n".encode(), env)
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout == b"1 ERR\n2 ERR\n", (name, done.stdout)
        log = done.stderr.decode()
        assert log.count("\n") == 1 and expected in log, (name, log)
        assert f"patchcache {command}:" in log and "ERR" in log, (name, log)


def test_state_dir_that_is_a_file_gives_plain_keys(tmp_path: Path) -> None:
    """The rules loaded, the state did not: keys without expansion, never an exit."""
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("")
    done = run_helper(["store-id", "--state-dir", str(not_a_dir)], f"{WU}\n".encode())
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"OK store-id={WU_KEY}\n".encode()
    assert done.stderr.decode().count("\n") == 1 and "no expansion" in done.stderr.decode()


# -- (3) rules that would backtrack forever on Python's engine ----------------------------------


def test_catastrophic_pattern_does_not_stall_the_helper(tmp_path: Path) -> None:
    """`^/(a+)+$` on a 29-byte path stalled the single-threaded helper 14 s, on a longer one
    forever. On RE2 every line is answered (the timeout is a generous bound, not a speed
    check: Python's engine would need 2^n steps for these)."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "packs = []\n[classes.evil]\nhosts = ['a.example']\npath = '^/(a+)+$'\n"
        "[classes.evil2]\nhosts = ['a.example']\npath = '^/(?:(a|aa)*)*b$'\n"
    )
    lines = [f"http://a.example/{'a' * n}!" for n in (29, 35, 64, 4096, 60000)]
    lines.append("http://a.example/aaaa")
    done = run_helper(
        ["store-id", "--rules", str(rules)], "".join(f"{u}\n" for u in lines).encode()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [b"ERR"] * 5 + [
        b"OK store-id=http://evil.patchcache.squid.internal/aaaa"
    ]


# -- (8) state that fails while the helper runs -------------------------------------------------


def test_state_broken_at_run_time_gives_plain_keys(tmp_path: Path) -> None:
    """A state read failure used to make every matching answer BH (Squid retries it twice and
    the request loses its shared key). Now: the plain key, one warning per interval."""
    state_dir = tmp_path / "state"
    with helper_process("--state-dir", str(state_dir), stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(f"1 {WU}\n".encode())
        proc.stdin.flush()
        assert proc.stdout.readline() == f"1 OK store-id={WU_KEY}\n".encode()
        # Break the database under the running helper: every file of the state, garbage.
        for path in state_dir.rglob("*"):
            if path.is_file():
                path.write_bytes(b"\x00garbage" * 512)
        for number in range(2, 40):
            proc.stdin.write(f"{number} {WU}\n".encode())
            proc.stdin.flush()
            assert proc.stdout.readline() == f"{number} OK store-id={WU_KEY}\n".encode()
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        log = proc.stderr.read().decode()
    warnings = [line for line in log.splitlines() if "state read failed" in line]
    assert len(warnings) == 1, log
    assert "without expansion" in warnings[0]


# -- fuzz: 10^5 hostile lines, every one answered in order, memory bounded -----------------------

FUZZ_LINES = 100_000


def fuzz_payload(rng: random.Random, number: int) -> bytes:
    kind = number % 10
    if kind < 4:
        # Long URLs of a class whose key is the whole path: the answer cache kept 8192 of
        # them, several copies each (241 MB per helper for 8 KB URLs). Built cheaply (no
        # per-character randomness): 10^5 lines of which 40% are 3-6 KB.
        tail = (f"{number:07d}{rng.choice('abcdef')}/" * 700)[: 3000 if kind == 3 else 6000]
        return f"http://dnl-01.geo.kaspersky.com/{tail}.kdc?v={number}".encode()
    if kind == 4:
        return bytes(rng.choices(range(256), k=rng.randint(0, 120))).replace(b"\n", b"")
    if kind == 5:
        host = rng.choice(["\u212aaspersky.com", "kaspersky\u3002com", "\uff4baspersky.com"])
        return f"http://dnl-01.geo.{host}/bases/{number}.kdc".encode()
    if kind == 6:
        return b"http://download.windowsupdate.com/\xff\xfe/" + str(number).encode()
    if kind == 7:
        return rng.choice(
            [
                b"",
                f"http://[::1]:{number}/x http://a/ \x1c\x1d\r".encode(),
                f"{WU}?n={number} 10.0.0.1/- - GET".encode(),
            ]
        )
    if kind == 8:
        if number % 20 == 8:
            return f"http://{'a' * rng.randint(200, 300)}.kaspersky.com/x.kdc".encode()
        return b"http://dl.delivery.mp.microsoft.com/filestreamingservice/files/" + (
            b"0a6f1c2e-1111-2222-3333-444455556666?P1=1&&P2=2&" + b"&" * rng.randint(0, 50)
        )
    return b"%s://x\\@download.windowsupdate.com:8\xe2\x84\xaa0/" % rng.choice([b"http", b"HTTP"])


def test_fuzz_every_line_answered_in_order_with_bounded_memory() -> None:
    with helper_process(stderr=subprocess.DEVNULL) as proc:
        peak_kib = run_fuzz(proc)
    # The answer cache is bounded in bytes (16 MiB by default, URLs over 4 KiB never kept);
    # the interpreter with its libraries takes about 40 MB. Unbounded, this input took
    # about 150 MB.
    assert peak_kib < 100 * 1024, f"helper peak RSS {peak_kib} KiB"


def run_fuzz(proc: subprocess.Popen[bytes]) -> int:
    """Feed the fuzz lines from a thread (made as they go: 300 MB in all), check each reply
    in order; the helper's peak RSS (KiB)."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def feed() -> None:
        rng = random.Random(20261130)
        try:
            for start in range(0, FUZZ_LINES, 500):
                stdin.write(
                    b"".join(
                        b"%d %s\n" % (n, fuzz_payload(rng, n)) for n in range(start, start + 500)
                    )
                )
            stdin.flush()
        except BrokenPipeError:
            pass  # the helper died: the reader below reports it

    writer = threading.Thread(target=feed, name="fuzz-feed", daemon=True)
    writer.start()
    peak_kib = 0
    for number in range(FUZZ_LINES):
        reply = proc.stdout.readline()  # EOF if the watchdog killed a stalled helper
        assert reply.startswith(b"%d " % number), (number, reply[:200])
        assert reply.endswith(b"\n") and b"\n" not in reply[:-1]
        assert reply[:-1].split(b" ", 2)[1] in (b"OK", b"ERR", b"BH"), reply[:200]
        if number % 10_000 == 9_999:
            peak_kib = max(peak_kib, _peak_rss_kib(proc.pid))
    peak_kib = max(peak_kib, _peak_rss_kib(proc.pid))
    writer.join(timeout=60)
    stdin.close()
    assert proc.stdout.read() == b""  # exactly one reply per line
    assert proc.wait(timeout=60) == 0
    return peak_kib


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")
