"""Access-log line parsing: table of real-shaped lines, and fuzz (never raises, never invents)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchcache.report.aggregate import is_hit
from patchcache.report.parse import Entry, combined_time, parse_line

WU = "http://download.windowsupdate.com/d/msdownload/update/software/secu/x_ab.msu"
KEY = "http://windows-update.patchcache.squid.internal/sha1/ab"

GOOD: list[tuple[str, Entry]] = [
    (
        f"1796000000.123    180 192.168.0.224 TCP_MISS/200 3146154 GET {WU} - "
        "HIER_DIRECT/10.1.2.3 application/octet-stream",
        Entry(1796000000.123, "TCP_MISS", 200, 3146154, "GET", WU, None, None, None, "squid"),
    ),
    (  # Squid pads %6tr; user and hierarchy missing (older or trimmed formats)
        f"1796000000.000      0 ::1 TCP_MEM_HIT/206 100482 GET {WU}",
        Entry(1796000000.0, "TCP_MEM_HIT", 206, 100482, "GET", WU, None, None, None, "squid"),
    ),
    (
        "1796000000.500      3 10.0.0.1 NONE_NONE/000 0 NONE error:transaction-end-before-headers"
        " - HIER_NONE/- -",
        Entry(
            1796000000.5,
            "NONE_NONE",
            0,
            0,
            "NONE",
            "error:transaction-end-before-headers",
            None,
            None,
            None,
            "squid",
        ),
    ),
    (
        "1796000000.500  12000 10.0.0.1 TCP_TUNNEL/200 5120 CONNECT www.example.org:443 - "
        "HIER_DIRECT/1.2.3.4 -",
        Entry(
            1796000000.5,
            "TCP_TUNNEL",
            200,
            5120,
            "CONNECT",
            "www.example.org:443",
            *[None] * 3,
            "squid",
        ),
    ),
    (
        f'10.0.0.7 - alice [30/Nov/2026:01:02:03 +0100] "GET {WU} HTTP/1.1" 200 4096 '
        '"http://ref/" "Windows-Update-Agent/10.0 \\"quoted\\"" TCP_REFRESH_UNMODIFIED:HIER_DIRECT',
        Entry(
            1795996923.0,  # 00:02:03Z
            "TCP_REFRESH_UNMODIFIED",
            200,
            4096,
            "GET",
            WU,
            None,
            None,
            None,
            "combined",
        ),
    ),
    (
        f"pc1 1796000000.123    304 127.0.0.1 TCP_MISS/200 3146154 426 3145728 GET "
        f"HIER_DIRECT/127.0.0.1 {WU} {KEY}",
        Entry(1796000000.123, "TCP_MISS", 200, 3146154, "GET", WU, 3145728, 426, KEY, "patchcache"),
    ),
    (  # a hit: nothing read from upstream, no store-id for traffic outside the classes
        "pc1 1796000000.123 1 127.0.0.1 TCP_HIT/200 700431 431 - GET HIER_NONE/- "
        "http://mirror.example.com/f.bin -",
        Entry(
            1796000000.123,
            "TCP_HIT",
            200,
            700431,
            "GET",
            "http://mirror.example.com/f.bin",
            0,
            431,
            None,
            "patchcache",
        ),
    ),
]

BAD = [
    "",
    "   ",
    "1796000000.123     12 127.0.0.1 TCP_MISS/2",  # truncated mid-field
    "1796000000.123     12 127.0.0.1 TCP_MISS/200 12",  # truncated before the URL
    "1796000000.123 12 127.0.0.1 TCP_MISS/200 1x2 GET http://x/",  # bytes not a number
    "1796000000.123 12 127.0.0.1 tcp_miss/200 12 GET http://x/",  # not a result code
    "1796000000.123 12 127.0.0.1 TCP_MISS 12 GET http://x/",  # no status
    "nan 12 127.0.0.1 TCP_MISS/200 12 GET http://x/",
    "-5 12 127.0.0.1 TCP_MISS/200 12 GET http://x/",
    "Nov 30 00:00:00 host squid[123]: a syslog line here",
    '10.0.0.7 - - [30/Nov/2026:01:02:03 +0100] "GET http://x/ HTTP/1.1" 2xx 12 "-" "-" TCP_HIT:X',
    '10.0.0.7 - - [30/Nov/2026:01:02:03 +0100] "GET http://x/ HTTP/1.1" 200',
    '10.0.0.7 - - [31/Foo/2026:01:02:03 +0100] "GET http://x/ HTTP/1.1" 200 1 "-" "-" TCP_HIT:X',
    "pc1 1796000000.123 1 127.0.0.1 TCP_HIT/200 700431 431 - GET HIER_NONE/- http://x/",
    "\x00\x01\x02\xff\xfe binary junk \x7f",
]


@pytest.mark.parametrize(("line", "entry"), GOOD)
def test_known_lines(line: str, entry: Entry) -> None:
    assert parse_line(line) == entry


@pytest.mark.parametrize("line", BAD)
def test_bad_lines_are_none(line: str) -> None:
    assert parse_line(line) is None


def test_combined_time_offsets() -> None:
    assert combined_time("30/Nov/2026:00:46:15 +0000") == 1795999575.0
    assert combined_time("30/Nov/2026:01:46:15 +0100") == 1795999575.0
    assert combined_time("29/Nov/2026:19:16:15 -0530") == 1795999575.0


@pytest.mark.parametrize(
    ("code", "hit"),
    [
        ("TCP_HIT", True),
        ("TCP_MEM_HIT", True),
        ("TCP_IMS_HIT", True),
        ("TCP_INM_HIT", True),
        ("TCP_CF_HIT", True),
        ("TCP_HIT_ABORTED", True),
        ("TCP_NEGATIVE_HIT", True),
        ("TCP_OFFLINE_HIT", True),
        ("TCP_REFRESH_UNMODIFIED", True),
        ("TCP_REFRESH_FAIL_OLD", True),
        ("TCP_REFRESH_IGNORED", True),
        ("TCP_MISS", False),
        ("TCP_MISS_ABORTED", False),
        ("TCP_CF_MISS", False),
        ("TCP_REFRESH_MODIFIED", False),
        ("TCP_REFRESH_FAIL_ERR", False),
        ("TCP_CLIENT_REFRESH_MISS", False),
        ("TCP_SWAPFAIL_MISS", False),
        ("TCP_DENIED", False),
        ("TCP_TUNNEL", False),
        ("NONE_NONE", False),
        ("UDP_HIT", False),
    ],
)
def test_hit_codes(code: str, hit: bool) -> None:
    assert is_hit(code) is hit


@pytest.mark.parametrize(("line", "entry"), GOOD)
def test_every_one_byte_truncation_or_garbage_is_safe(line: str, entry: Entry) -> None:
    """Cutting a good line anywhere, or replacing one byte with junk, never raises, and what
    parses keeps the transaction's result code (the fields are read by position)."""
    for cut in range(len(line)):
        parsed = parse_line(line[:cut])
        if parsed is not None:
            assert parsed.fmt == entry.fmt
    for index in range(len(line)):
        for junk in ("\x00", "\xff", " ", '"', "["):
            parse_line(line[:index] + junk + line[index + 1 :])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=300))
def test_any_latin1_text_never_raises(text: str) -> None:
    entry = parse_line(text)
    if entry is not None:
        assert entry.bytes_to_client >= 0 and entry.ts >= 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.sampled_from(["TCP_HIT", "TCP_MISS"]),
)
def test_counters_round_trip(size: int, upstream: int, code: str) -> None:
    line = f"pc1 1796000000.001 1 ::1 {code}/200 {size} 300 {upstream} GET - http://x/ -"
    entry = parse_line(line)
    assert entry is not None
    assert (entry.bytes_to_client, entry.upstream_bytes, entry.code) == (size, upstream, code)
