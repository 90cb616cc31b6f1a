"""Deterministic synthetic access logs with known totals, for tests, the benchmark and the
README's example report.

Every line's class is decided here by construction (each URL template belongs to one class and
its object number names one key), so the totals returned are independent of the report's own
attribution code. Lines are Squid's native format unless `fmt` says otherwise; `junk_every`
inserts a bad line (truncated, binary, another format) every that many lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from patchcache.report.aggregate import is_hit

START = 1_796_000_000  # 2026-11-30T00:53:20Z: a fixed instant, so logs are reproducible
HEX = "0123456789abcdef"


def _wu(n: int, rnd: random.Random) -> tuple[str, str]:
    digest = f"{n:040x}"
    host = rnd.choice(("download.windowsupdate.com", "au.download.windowsupdate.com"))
    letter = rnd.choice("cd")
    url = f"http://{host}/{letter}/msdownload/update/software/secu/2019/06/kb{n}_{digest}.cab"
    return url, f"http://windows-update.patchcache.squid.internal/sha1/{digest}"


def _do(n: int, rnd: random.Random) -> tuple[str, str]:
    guid = f"0a1b2c3d-0000-4000-8000-{n:012x}"
    url = (
        f"http://{rnd.randint(1, 9)}.tlu.dl.delivery.mp.microsoft.com/filestreamingservice/"
        f"files/{guid}?P1={rnd.randint(1, 10**9)}&P2=404&P3=2&P4=x"
    )
    return url, f"http://delivery-optimization.patchcache.squid.internal/files/{guid}"


def _apple(n: int, rnd: random.Random) -> tuple[str, str]:
    path = f"/content/downloads/12/34/042-{n}/tok/InstallAssistant.pkg"
    return f"http://swcdn.apple.com{path}", f"http://apple.patchcache.squid.internal{path}"


def _chrome(n: int, rnd: random.Random) -> tuple[str, str]:
    path = f"/release2/chrome/tok_{n}.0/{n}.0_chrome_installer.exe"
    return f"http://dl.google.com{path}", f"http://chrome.patchcache.squid.internal{path}"


def _other(n: int, rnd: random.Random) -> tuple[str, str]:
    url = f"http://www.example.org/page/{n}.html"
    return url, url


# (class or "other", objects, weight, URL maker)
CLASSES: tuple[tuple[str, int, int, Callable[[int, random.Random], tuple[str, str]]], ...] = (
    ("windows-update", 400, 30, _wu),
    ("delivery-optimization", 300, 25, _do),
    ("apple", 50, 5, _apple),
    ("chrome", 40, 10, _chrome),
    ("other", 5000, 30, _other),
)
CODES = (
    ("TCP_MISS", 30),
    ("TCP_HIT", 20),
    ("TCP_MEM_HIT", 15),
    ("TCP_REFRESH_UNMODIFIED", 5),
    ("TCP_REFRESH_MODIFIED", 3),
    ("TCP_CF_HIT", 5),
    ("TCP_MISS_ABORTED", 2),
    ("TCP_IMS_HIT", 2),
    ("TCP_TUNNEL", 1),
)
JUNK = (
    "1796000000.123     12 127.0.0.1 TCP_MISS/2",
    "\x00\x01\x02\xff\xfe binary junk \x7f",
    "Nov 30 00:00:00 host squid[123]: a syslog line",
    '127.0.0.1 - - [01/Dec/2026:00:00:00 +0000] "GET http://x/ HTTP/1.1" 2xx 12 "-" "-" '
    "TCP_HIT:HIER_NONE",
)


@dataclass
class Totals:
    requests: int = 0
    hit_requests: int = 0
    bytes_to_clients: int = 0
    hit_bytes: int = 0
    upstream_bytes: int = 0
    keys: set[str] = field(default_factory=set)


@dataclass
class Expected:
    groups: dict[str, Totals] = field(default_factory=dict)
    bad: int = 0
    lines: int = 0


def generate(
    out: TextIO,
    lines: int,
    *,
    seed: int = 10,
    fmt: str = "squid",
    junk_every: int = 0,
    seconds: int = 3 * 86400,
) -> Expected:
    """Write `lines` log lines (plus junk) to `out`; return what a correct report counts."""
    rnd = random.Random(seed)
    names = [c[0] for c in CLASSES]
    weights = [c[2] for c in CLASSES]
    codes = [c for c, _ in CODES]
    code_weights = [w for _, w in CODES]
    expected = Expected({name: Totals() for name in names})
    step = seconds / max(1, lines)
    write = out.write
    # Drawn in bulk: one call per line each would be most of the generator's time.
    picks = rnd.choices(range(len(CLASSES)), weights, k=lines)
    picked_codes = rnd.choices(codes, code_weights, k=lines)
    for i in range(lines):
        if junk_every and i % junk_every == junk_every - 1:
            write(JUNK[(i // junk_every) % len(JUNK)] + "\n")
            expected.bad += 1
        name, objects, _, make = CLASSES[picks[i]]
        url, key = make(rnd.randrange(objects), rnd)
        code = picked_codes[i]
        size = rnd.randrange(200, 4_000_000) if name != "other" else rnd.randrange(200, 60_000)
        header = 250
        hit = is_hit(code)
        upstream = 0 if hit else max(0, size - header - rnd.randrange(0, 3))
        ts = START + i * step
        method = "GET"
        if code == "TCP_TUNNEL":
            method, url, key = "CONNECT", "www.example.org:443", "www.example.org:443"
            name = "other"
        totals = expected.groups[name]
        totals.requests += 1
        totals.bytes_to_clients += size
        totals.keys.add(key)
        if hit:
            totals.hit_requests += 1
            totals.hit_bytes += size
        if fmt == "patchcache":
            totals.upstream_bytes += upstream
            sid = key if name != "other" else "-"
            write(
                f"pc1 {ts:.3f} {rnd.randrange(1, 99999):6d} 10.0.0.{i % 250} {code}/200 {size} "
                f"{header} {upstream if not hit else '-'} {method} HIER_DIRECT/127.0.0.1 "
                f"{url} {sid}\n"
            )
        else:
            totals.upstream_bytes += 0 if hit else size
            write(
                f"{ts:.3f} {rnd.randrange(1, 99999):6d} 10.0.0.{i % 250} {code}/200 {size} "
                f"{method} {url} - HIER_DIRECT/127.0.0.1 application/octet-stream\n"
            )
    expected.lines = lines + expected.bad
    return expected


def write_file(path: Path, lines: int, **kwargs: object) -> Expected:
    with path.open("w", encoding="latin-1", newline="\n") as out:
        return generate(out, lines, **kwargs)  # type: ignore[arg-type]
