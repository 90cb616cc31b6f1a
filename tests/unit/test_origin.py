"""The testbed origin: Range tables, response plans, content, and the real server on loopback."""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchcache.testbed import (
    ByteRange,
    BytesContent,
    CorruptedContent,
    DownloadError,
    MiB,
    Origin,
    OriginObject,
    PatternContent,
    bits_download,
    content_sha1,
    digest_name,
    first_difference,
    http_request,
    plan_response,
    resolve_range,
    verify_bytes,
)
from patchcache.testbed.content import BLOCK
from patchcache.testbed.origin import UNSATISFIABLE, split_target

# -- resolve_range: RFC 9110 section 14.1.2 -----------------------------------------------------

RANGE_TABLE = [
    # header, size, expected
    (None, 100, None),
    ("bytes=0-9", 100, ByteRange(0, 9)),
    ("bytes=10-", 100, ByteRange(10, 99)),
    ("bytes=-10", 100, ByteRange(90, 99)),
    ("bytes=-1000", 100, ByteRange(0, 99)),
    ("bytes=90-1000", 100, ByteRange(90, 99)),
    ("bytes=99-99", 100, ByteRange(99, 99)),
    ("bytes=0-0", 1, ByteRange(0, 0)),
    ("BYTES = 5 - 6 ", 100, ByteRange(5, 6)),
    ("bytes=100-", 100, UNSATISFIABLE),
    ("bytes=100-200", 100, UNSATISFIABLE),
    ("bytes=-0", 100, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),
    ("bytes=-5", 0, UNSATISFIABLE),
    ("bytes=9-5", 100, None),  # last < first: invalid, ignored
    ("bytes=0-1,5-6", 100, None),  # several ranges: served whole
    ("items=0-1", 100, None),
    ("bytes=a-b", 100, None),
    ("bytes=-", 100, None),
    ("bytes=", 100, None),
    ("bytes 0-1", 100, None),
    ("bytes=+1-2", 100, None),
    ("bytes=\u0661-2", 100, None),  # non-ASCII digit
]


@pytest.mark.parametrize(("header", "size", "expected"), RANGE_TABLE)
def test_resolve_range_table(header: str | None, size: int, expected: object) -> None:
    assert resolve_range(header, size) == expected


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**12))
def test_resolve_range_never_raises_and_stays_inside(header: str, size: int) -> None:
    result = resolve_range(header, size)
    if isinstance(result, ByteRange):
        assert 0 <= result.first <= result.last < size


@given(
    st.integers(min_value=1, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
)
def test_resolve_range_first_last(size: int, first: int, length: int) -> None:
    result = resolve_range(f"bytes={first}-{first + length}", size)
    if first >= size:
        assert result == UNSATISFIABLE
    else:
        assert result == ByteRange(first, min(first + length, size - 1))


# -- plan_response --------------------------------------------------------------------------------


def _obj(**changes: object) -> OriginObject:
    base: dict[str, object] = {
        "path": "/f.cab",
        "content": PatternContent(1000, 1),
        "etag": '"abc"',
        "last_modified": "Mon, 01 Jan 2024 00:00:00 GMT",
    }
    base.update(changes)
    return OriginObject(**base)  # type: ignore[arg-type]


def _headers(plan_headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(plan_headers)


PLAN_TABLE = [
    # keyword arguments to plan_response, status, (first, end), Content-Range
    ({}, 200, (0, 1000), None),
    ({"range_header": "bytes=0-99"}, 206, (0, 100), "bytes 0-99/1000"),
    ({"range_header": "bytes=-1"}, 206, (999, 1000), "bytes 999-999/1000"),
    ({"range_header": "bytes=1000-"}, 416, (0, 0), "bytes */1000"),
    ({"range_header": "bytes=0-1,3-4"}, 200, (0, 1000), None),
    ({"range_header": "bytes=0-9", "if_range": '"abc"'}, 206, (0, 10), "bytes 0-9/1000"),
    ({"range_header": "bytes=0-9", "if_range": '"old"'}, 200, (0, 1000), None),
    ({"range_header": "bytes=0-9", "if_range": 'W/"abc"'}, 200, (0, 1000), None),
    (
        {"range_header": "bytes=0-9", "if_range": "Mon, 01 Jan 2024 00:00:00 GMT"},
        206,
        (0, 10),
        "bytes 0-9/1000",
    ),
    ({"if_none_match": '"abc"'}, 304, (0, 0), None),
    ({"if_none_match": 'W/"abc"'}, 304, (0, 0), None),
    ({"if_none_match": "*"}, 304, (0, 0), None),
    ({"if_none_match": '"x", "abc"'}, 304, (0, 0), None),
    ({"if_none_match": '"other"'}, 200, (0, 1000), None),
    ({"if_modified_since": "Tue, 02 Jan 2024 00:00:00 GMT"}, 304, (0, 0), None),
    ({"if_modified_since": "Sun, 31 Dec 2023 00:00:00 GMT"}, 200, (0, 1000), None),
    ({"if_modified_since": "garbage"}, 200, (0, 1000), None),
    # If-None-Match wins over If-Modified-Since (RFC 9110 section 13.2.2)
    (
        {"if_none_match": '"other"', "if_modified_since": "Tue, 02 Jan 2024 00:00:00 GMT"},
        200,
        (0, 1000),
        None,
    ),
]


@pytest.mark.parametrize(("kwargs", "status", "span", "content_range"), PLAN_TABLE)
def test_plan_response_table(
    kwargs: dict[str, str], status: int, span: tuple[int, int], content_range: str | None
) -> None:
    plan = plan_response(_obj(), **kwargs)
    headers = _headers(plan.headers)
    assert plan.status == status
    assert (plan.first, plan.end) == span
    assert headers.get("Content-Range") == content_range
    if status in (200, 206):
        assert headers["Content-Length"] == str(span[1] - span[0])
        assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] == '"abc"'


def test_plan_response_without_validators_and_with_extras() -> None:
    obj = _obj(etag=None, last_modified=None, cache_control="no-cache", headers=(("X-A", "1"),))
    headers = _headers(plan_response(obj, if_none_match='"abc"').headers)
    assert "ETag" not in headers and "Last-Modified" not in headers
    assert headers["Cache-Control"] == "no-cache" and headers["X-A"] == "1"


def test_plan_response_chunked_and_rangeless() -> None:
    chunked = plan_response(_obj(chunked=True), range_header="bytes=0-9")
    assert chunked.chunked and _headers(chunked.headers)["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in _headers(chunked.headers)
    rangeless = plan_response(_obj(ranges=False), range_header="bytes=0-9")
    assert rangeless.status == 200 and _headers(rangeless.headers)["Accept-Ranges"] == "none"


def test_plan_response_error_status_ignores_range() -> None:
    obj = _obj(status=404, cache_control="max-age=3600")
    plan = plan_response(obj, range_header="bytes=0-9")
    headers = _headers(plan.headers)
    assert plan.status == 404 and (plan.first, plan.end) == (0, obj.size)
    assert "Content-Range" not in headers and headers["Cache-Control"] == "max-age=3600"


def test_origin_serves_error_status_with_body() -> None:
    with Origin() as origin:
        origin.register(
            "/gone", content=b"gone for now\n", status=503, headers={"Retry-After": "5"}
        )
        reply = http_request(None, origin.url("/gone"), headers={"Range": "bytes=0-3"})
        assert reply.status == 503 and reply.body == b"gone for now\n"
        assert origin.bytes_sent("/gone") == len(b"gone for now\n")


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/a/b.cab", "/a/b.cab", None),
        ("/a?P1=1&P2=2", "/a", "P1=1&P2=2"),
        ("/a?", "/a", ""),
        ("http://download.windowsupdate.com/x/y?z=1", "/x/y", "z=1"),
        ("http://host:8080", "/", None),
        ("/a#frag", "/a", None),
    ],
)
def test_split_target(target: str, path: str, query: str | None) -> None:
    assert split_target(target) == (path, query)


# -- content --------------------------------------------------------------------------------------


def test_pattern_content_is_deterministic_and_position_dependent() -> None:
    a = PatternContent(4 * BLOCK, seed="s")
    assert a.read(0, 4 * BLOCK) == PatternContent(4 * BLOCK, seed="s").read(0, 4 * BLOCK)
    assert a.read(0, 100) != PatternContent(4 * BLOCK, seed="t").read(0, 100)
    # Whole blocks differ from each other, and shifted reads differ from aligned ones.
    assert a.read(0, BLOCK) != a.read(BLOCK, BLOCK)
    assert a.read(1, 1000) != a.read(0, 1000)
    # A read across a block boundary is the concatenation of the two sides.
    assert a.read(BLOCK - 10, 20) == a.read(BLOCK - 10, 10) + a.read(BLOCK, 10)
    assert a.read(4 * BLOCK - 5, 100) == a.read(4 * BLOCK - 5, 5)
    assert len(a.read(0, 4 * BLOCK)) == 4 * BLOCK


def test_corrupted_content_flips_only_listed_bytes() -> None:
    good = PatternContent(1000, 3)
    bad = CorruptedContent(good, (10, 500))
    assert bad.size == 1000
    assert first_difference(good.read(0, 1000), bad.read(0, 1000)) == 10
    assert bad.read(11, 489) == good.read(11, 489)
    assert bad.read(500, 1)[0] == good.read(500, 1)[0] ^ 0xFF


def test_digest_name_carries_sha1() -> None:
    data = b"hello update"
    assert digest_name(data) == f"windows10.0-kb5034441-x64_{hashlib.sha1(data).hexdigest()}.cab"
    source = PatternContent(3 * BLOCK + 7, 9)
    assert content_sha1(source) == hashlib.sha1(source.read(0, source.size)).hexdigest()


def test_verify_bytes_detects_a_wrong_byte() -> None:
    source = PatternContent(MiB, 5)
    data = bytearray(source.read(4096, 8192))
    verify_bytes(source, 4096, bytes(data))
    data[1234] ^= 0x01
    with pytest.raises(DownloadError, match=r"wrong byte at offset 5330") as caught:
        verify_bytes(source, 4096, bytes(data), url="http://x/f")
    assert caught.value.offset == 4096 + 1234
    with pytest.raises(DownloadError, match="length mismatch"):
        verify_bytes(source, MiB - 10, source.read(MiB - 10, 10) + b"x")
    with pytest.raises(DownloadError, match="verifier rejected"):
        verify_bytes(lambda offset, chunk: False, 0, b"x")
    verify_bytes(None, 0, b"anything")


# -- the server on loopback -------------------------------------------------------------------


def _get(
    origin: Origin, path: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


SERVED_RANGES = [
    ("bytes=0-99", 206, 0, 100, "bytes 0-99/300000"),
    ("bytes=65530-65545", 206, 65530, 65546, "bytes 65530-65545/300000"),
    ("bytes=299990-", 206, 299990, 300000, "bytes 299990-299999/300000"),
    ("bytes=-7", 206, 299993, 300000, "bytes 299993-299999/300000"),
    ("bytes=0-1,4-5", 200, 0, 300000, None),
]


@pytest.mark.parametrize(("range_header", "status", "first", "end", "content_range"), SERVED_RANGES)
def test_server_answers_ranges(
    origin: Origin,
    range_header: str,
    status: int,
    first: int,
    end: int,
    content_range: str | None,
) -> None:
    obj = origin.register("/f.bin", 300_000)
    reply = http_request(None, origin.url(obj), headers={"Range": range_header})
    assert reply.status == status
    assert reply.header("Content-Range") == content_range
    assert reply.body == obj.content.read(first, end - first)
    assert origin.bytes_sent("/f.bin") == end - first
    assert origin.request_count("/f.bin") == 1


def test_server_416_404_head_and_query(origin: Origin) -> None:
    obj = origin.register("/f.bin", 1000)
    unsat = http_request(None, origin.url(obj), headers={"Range": "bytes=1000-"})
    assert (unsat.status, unsat.header("Content-Range"), unsat.body) == (416, "bytes */1000", b"")
    assert http_request(None, origin.url("/missing")).status == 404
    head = http_request(None, origin.url(obj), method="HEAD")
    assert head.status == 200 and head.header("Content-Length") == "1000" and head.body == b""
    assert origin.bytes_sent("/f.bin") == 0
    # The query string and Host header do not matter for lookup, but are recorded.
    via_query = http_request(
        None, origin.url(obj, query="P1=1&P4=sig"), headers={"Host": "download.windowsupdate.com"}
    )
    assert via_query.status == 200 and via_query.body == obj.content.read(0, 1000)
    last = origin.requests("/f.bin")[-1]
    assert (last.query, last.host, last.completed) == (
        "P1=1&P4=sig",
        "download.windowsupdate.com",
        True,
    )
    assert origin.request_count() == 4 and origin.bytes_sent() == 1000


def test_server_conditional_and_chunked(origin: Origin) -> None:
    obj = origin.register("/c.bin", 200_000, chunked=True, cache_control="max-age=60")
    full = http_request(None, origin.url(obj))
    assert full.header("Transfer-Encoding") == "chunked" and full.body == obj.content.read(
        0, obj.size
    )
    assert full.header("Cache-Control") == "max-age=60"
    assert origin.bytes_sent("/c.bin") == obj.size  # payload only, not the chunk framing
    assert obj.etag is not None
    not_modified = http_request(None, origin.url(obj), headers={"If-None-Match": obj.etag})
    assert not_modified.status == 304 and not_modified.body == b""


def test_server_digest_named_objects(origin: Origin) -> None:
    good = origin.register_digest_named("/d/msdownload/update/software/secu/2024/01", 100_000)
    bad = origin.register_digest_named(
        "/d/msdownload/update/software/secu/2024/01", 100_000, seed="other", corrupt=True
    )
    good_body = http_request(None, origin.url(good)).body
    bad_body = http_request(None, origin.url(bad)).body
    assert good.path.endswith(f"_{hashlib.sha1(good_body).hexdigest()}.cab")
    assert good.sha1() == hashlib.sha1(good_body).hexdigest()
    assert not bad.path.endswith(f"_{hashlib.sha1(bad_body).hexdigest()}.cab")


def test_direct_bits_download_and_200_detection(origin: Origin) -> None:
    obj = origin.register("/f.bin", 3 * MiB + 5)
    stats = bits_download(None, origin.url(obj), verify=obj.content)
    assert (stats.bytes_received, stats.requests, stats.connections) == (obj.size, 4, 1)
    assert stats.statuses == (206,) * 4 and origin.bytes_sent("/f.bin") == obj.size
    plain = origin.register("/plain.bin", MiB, ranges=False)
    with pytest.raises(DownloadError, match="got 200 instead of 206"):
        bits_download(None, origin.url(plain), size=plain.size, chunk=64 * 1024)
    corrupt = origin.register("/corrupt.bin", content=CorruptedContent(obj.content, (2 * MiB + 3,)))
    with pytest.raises(DownloadError, match=f"wrong byte at offset {2 * MiB + 3}"):
        bits_download(None, origin.url(corrupt), verify=obj.content)


def test_counts_only_bytes_sent_to_an_early_leaver() -> None:
    size = 32 * MiB
    with Origin(sndbuf=64 * 1024) as origin:
        origin.register("/big.bin", size)
        with socket.create_connection(("127.0.0.1", origin.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            while got < 256 * 1024:
                got += len(sock.recv(65536))
        # The server notices the reset on its next send; its record then closes the answer.
        assert origin.wait_idle("/big.bin", timeout=30)
        record = origin.requests("/big.bin")[0]
        assert not record.completed
        assert got <= origin.bytes_sent("/big.bin") < size // 2


def test_throttle_catches_a_fill_mid_flight(origin: Origin) -> None:
    obj = origin.register("/slow.bin", 4 * MiB, throttle=256 * 1024)
    result: list[bytes] = []
    reader = threading.Thread(
        target=lambda: result.append(http_request(None, origin.url(obj)).body)
    )
    reader.start()
    sent = origin.wait_for_bytes(obj.path, 64 * 1024, timeout=10)
    assert 64 * 1024 <= sent < obj.size  # caught mid-flight
    origin.set_throttle(obj.path, None)
    reader.join(30)
    assert not reader.is_alive()
    assert result == [obj.content.read(0, obj.size)]


def test_bytes_content_and_stop_closes_idle_connections() -> None:
    origin = Origin().start()
    origin.register("/tiny", content=b"abc", etag=False, last_modified=False)
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
    conn.request("GET", "/tiny")
    response = conn.getresponse()
    assert response.read() == b"abc" and response.getheader("ETag") is None
    origin.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/tiny")
        conn.getresponse()
    conn.close()
    assert BytesContent(b"abc").read(1, 10) == b"bc"
