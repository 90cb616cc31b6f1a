"""One request and its response through h11: bytes in, events out, fed whole and one byte at a
time; what h11 refuses comes out as ProtocolError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchcache.errors import ProtocolError
from patchcache.prefetch.fetch import FetchError, expected_total
from patchcache.prefetch.h11client import (
    BodyData,
    ContentRange,
    EndOfMessage,
    Event,
    Exchange,
    ResponseHead,
    parse_content_range,
)


def exchange(method: str = "GET") -> Exchange:
    return Exchange(method, "http://h/x", [("Host", "h")])


def run(method: str, data: bytes, *, byte_at_a_time: bool, eof: bool) -> list[Event]:
    parser = exchange(method)
    events: list[Event] = []
    if byte_at_a_time:
        for i in range(len(data)):
            events += parser.feed(data[i : i + 1])
    else:
        events += parser.feed(data)
    if eof:
        events += parser.feed_eof()
    return events


def squash(events: list[Event]) -> list[object]:
    """Join adjacent BodyData so whole and byte-at-a-time feeds compare equal."""
    out: list[object] = []
    for event in events:
        if isinstance(event, BodyData) and out and isinstance(out[-1], bytes):
            out[-1] += event.data
        elif isinstance(event, BodyData):
            out.append(bytes(event.data))
        else:
            out.append(event)
    return out


def head(status: int, reason: str, *headers: tuple[str, str]) -> ResponseHead:
    return ResponseHead(status, reason, tuple(headers))


CASES: list[tuple[str, str, bytes, bool, list[object]]] = [
    (
        "content-length",
        "GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        False,
        [head(200, "OK", ("Content-Length", "5")), b"hello", EndOfMessage()],
    ),
    (
        "206 with content-range",
        "GET",
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-2/3\r\nContent-Length: 3\r\n"
        b"\r\nabc",
        False,
        [
            head(206, "Partial Content", ("Content-Range", "bytes 0-2/3"), ("Content-Length", "3")),
            b"abc",
            EndOfMessage(),
        ],
    ),
    (
        "chunked with extension and trailer",
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n",
        False,
        [head(200, "OK", ("Transfer-Encoding", "chunked")), b"abc0123456789abcdef", EndOfMessage()],
    ),
    (
        "until close",
        "GET",
        b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nsome body",
        True,
        [head(200, "OK", ("Server", "x")), b"some body", EndOfMessage(closed=True)],
    ),
    (
        "HEAD has no body",
        "HEAD",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        False,
        [head(200, "OK", ("Content-Length", "99")), EndOfMessage()],
    ),
    (
        "304 has no body",
        "GET",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        False,
        [head(304, "Not Modified", ("Content-Length", "99")), EndOfMessage()],
    ),
    (
        "interim 100 skipped, bare LF lines, no reason",
        "GET",
        b"HTTP/1.1 100 Continue\n\nHTTP/1.1 404\nContent-Length: 0\n\n",
        False,
        [head(404, "", ("Content-Length", "0")), EndOfMessage()],
    ),
    (
        "repeated equal content-length",
        "PURGE",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        False,
        [head(200, "OK", ("Content-Length", "2")), b"ok", EndOfMessage()],
    ),
    (
        "transfer-encoding wins over content-length",
        "GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\n",
        False,
        [
            head(200, "OK", ("Content-Length", "100"), ("Transfer-Encoding", "chunked")),
            b"hi",
            EndOfMessage(),
        ],
    ),
]


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    ("name", "method", "data", "eof", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_parse(
    name: str, method: str, data: bytes, eof: bool, expected: list[object], byte_at_a_time: bool
) -> None:
    assert squash(run(method, data, byte_at_a_time=byte_at_a_time, eof=eof)) == expected


ERRORS: list[tuple[str, bytes, bool]] = [
    ("bad status line", b"HTTP/2 200 OK\r\n\r\n", False),
    ("not http", b"SSH-2.0-OpenSSH\r\n\r\n", False),
    ("bad header name", b"HTTP/1.1 200 OK\r\nA b: c\r\n\r\n", False),
    ("control char in value", b"HTTP/1.1 200 OK\r\nA: b\x01c\r\n\r\n", False),
    (
        "conflicting lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        False,
    ),
    ("bad length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False),
    ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
    ("chunk too long", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", False),
    ("gzip then chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", False),
    ("extra bytes", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", False),
    ("truncated body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),
    ("truncated head", b"HTTP/1.1 200 OK\r\nContent-Le", True),
    ("101", b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False),
]


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("name", "data", "eof"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(name: str, data: bytes, eof: bool, byte_at_a_time: bool) -> None:
    with pytest.raises(ProtocolError) as info:
        run("GET", data, byte_at_a_time=byte_at_a_time, eof=eof)
    assert info.value.status_hint == 502


def test_head_size_is_bounded() -> None:
    parser = exchange()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError, match="longer"):
        for _ in range(2000):
            parser.feed(b"X-Filler: " + b"a" * 60 + b"\r\n")


def test_bytes_after_the_end_are_an_error() -> None:
    parser = exchange()
    parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parser.done
    assert parser.feed(b"") == []
    with pytest.raises(ProtocolError):
        parser.feed(b"x")


@settings(max_examples=300)
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_only_protocol_errors_escape(data: bytes, eof: bool) -> None:
    for method in ("GET", "HEAD"):
        with contextlib.suppress(ProtocolError):
            run(method, data, byte_at_a_time=False, eof=eof)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=12), st.integers(0, 2**20))
def test_fuzz_chunked_bodies_round_trip(chunks: list[bytes], split: int) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    cut = split % (len(data) + 1)
    parser = exchange()
    events = parser.feed(data[:cut]) + parser.feed(data[cut:])
    got = b"".join(e.data for e in events if isinstance(e, BodyData))
    assert got == b"".join(chunks)
    assert isinstance(events[-1], EndOfMessage)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9/10", ContentRange(0, 9, 10)),
        ("bytes 5-5/*", ContentRange(5, 5, None)),
        (" bytes 0-0/1 ", ContentRange(0, 0, 1)),
    ],
)
def test_content_range(value: str, expected: ContentRange) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value", ["bytes 9-0/10", "bytes 0-10/10", "bytes */10", "items 0-1/2", "bytes 0-1", ""]
)
def test_bad_content_range(value: str) -> None:
    with pytest.raises(ProtocolError):
        parse_content_range(value)


@pytest.mark.parametrize(
    ("response", "total"),
    [
        (head(206, "", ("Content-Range", "bytes 0-99/100")), 100),
        (head(200, "", ("Content-Length", "100")), 100),
        (head(200, ""), None),
    ],
)
def test_whole_object_answers(response: ResponseHead, total: int | None) -> None:
    assert expected_total(response) == total


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (head(206, "", ("Content-Range", "bytes 0-49/100")), "part of the object"),
        (head(206, "", ("Content-Range", "bytes 50-99/100")), "part of the object"),
        (head(206, "", ("Content-Range", "bytes 0-99/*")), "part of the object"),
        (head(206, "", ("Content-Type", "multipart/byteranges; boundary=x")), "without"),
        (head(302, "Found", ("Location", "http://elsewhere/")), "HTTP 302 Found"),
        (head(504, "Gateway Timeout", ("X-Squid-Error", "ERR_READ_TIMEOUT 0")), "ERR_READ"),
        (head(200, "", ("Content-Length", "1, 2")), "conflicting"),
    ],
)
def test_anything_else_is_a_fetch_error(response: ResponseHead, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        expected_total(response)


def test_obsolete_line_folding_is_unfolded() -> None:
    # RFC 9112 5.2: a user agent replaces each obs-fold with SP (h11 does).
    events = run(
        "GET",
        b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 0\r\n\r\n",
        byte_at_a_time=False,
        eof=False,
    )
    assert events[0] == head(200, "OK", ("A", "b c"), ("Content-Length", "0"))


def test_bytes_after_the_end_in_the_same_read_are_an_error() -> None:
    parser = exchange()
    with pytest.raises(ProtocolError, match="after the end"):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab")


def test_the_request() -> None:
    request = Exchange("GET", "http://h/p?q=1", [("Host", "h"), ("Range", "bytes=0-")]).request
    assert request == b"GET http://h/p?q=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "http://h/a b", [("Host", "h")]),
        ("GET", "http://h/\r\nX: y", [("Host", "h")]),
        ("GET", "http://h/\u00e9", [("Host", "h")]),
        ("G T", "http://h/", [("Host", "h")]),
        ("GET", "http://h/", [("Host", "h"), ("Bad Name", "x")]),
        ("GET", "http://h/", [("Host", "h"), ("X", "a\r\nInjected: 1")]),
        ("GET", "", [("Host", "h")]),
    ],
)
def test_the_request_refuses_injection(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError):
        Exchange(method, target, headers)
