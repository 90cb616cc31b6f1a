"""The native head scanner (_scan.c) against its pure-Python twins (_readers.py, _headers.py,
_encapsulated.py).

For any input, the native function must return exactly what the reference returns, or None
where the reference raises `ProtocolError` (the caller then parses the bytes with the twin and
reports the error). Inputs: random bytes, and heads assembled from pieces near the grammar's
edges (case, blanks, bare CR/LF, NUL, high bytes, missing parts, repeated fields).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchcache.errors import ProtocolError
from patchcache.icap_service import _native
from patchcache.icap_service._abnf import FIELD, FIELD_BLOCK_B, MAX_HEADERS
from patchcache.icap_service._encapsulated import parse_encapsulated_python
from patchcache.icap_service._readers import (
    scan_icap_fields,
    split_http_request_head,
    split_http_response_head,
)

native = _native.scanner
needs_native = pytest.mark.skipif(native is None, reason="native scanner not built")
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = TypeVar("T")


def reference(parse: Callable[[], T]) -> T | None:
    try:
        return parse()
    except ProtocolError:
        return None


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: pure-Python install")
def test_native_scanner_is_built_where_a_compiler_exists() -> None:
    # setup.py marks the extension optional, so a failed build would only cost speed,
    # silently. Where a compiler exists (CI, the README's setup), it must have been built.
    assert native is not None


NAMES = [
    b"Encapsulated",
    b"encapsulated",
    b"ENCAPSULATED",
    b"Preview",
    b"preview",
    b"Allow",
    b"ALLOW",
    b"Connection",
    b"connection",
    b"Host",
    b"X-Client-IP",
    b"Encapsulated2",
    b"Bad Name",
    b"",
    b"Allow\x00",
    b"\xc3\xa9",
]
PIECES = [
    b"",
    b" ",
    b"\t",
    b"\x0b",
    b"\x0c",
    b"0",
    b"7",
    b"1024",
    b"1048577",
    b"9999999999",
    b"-1",
    b"+5",
    b",",
    b"204",
    b"206",
    b"2040",
    b"close",
    b"Close",
    b"keep-alive",
    b"req-hdr=0, res-hdr=12, res-body=30",
    b"null-body=0",
    b":",
    b"\r",
    b"\n",
    b"\x00",
    b"\xff",
    b"\xb2",
]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]


@st.composite
def field_lines(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES))
    value = b"".join(draw(st.lists(st.sampled_from(PIECES), max_size=5)))
    colon = draw(st.sampled_from([b":", b":", b": ", b":\t", b" :", b""]))
    return name + colon + value + draw(st.sampled_from(ENDINGS))


@st.composite
def field_blocks(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(field_lines(), st.binary(max_size=12)), max_size=8))
    return b"".join(lines)


@needs_native
@FUZZ
@given(st.one_of(field_blocks(), st.binary(max_size=200)), st.sampled_from([0, 5, 1 << 20]))
@example(b"Allow: 204, 206\r\nPreview: 0\r\nEncapsulated: req-hdr=0, null-body=5\r\n", 0)
@example(b"Allow: 204 \x0b, 206\r\nConnection: Keep-Alive, CLOSE\r\n", 0)
@example(b"Encapsulated: null-body=0\r\nencapsulated: null-body=0\r\n", 0)
@example(b"Preview: 1048577\r\n", 1 << 20)
@example(b"Preview:\r\n", 0)
@example(b"Preview: 5\r\nPreview: 1\r\n", 5)
@example(b"Host: a\r\n Folded\r\n", 0)
@example(b"", 0)
def test_icap_fields_match_the_reference(block: bytes, max_preview: int) -> None:
    expected = reference(lambda: scan_icap_fields(block, max_preview))
    assert native.icap_fields(block, max_preview, MAX_HEADERS) == expected


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"get", b"M-SEARCH", b"", b"G\x00T", b"G@T"]))
    target = draw(
        st.sampled_from([b"http://wu.example/a.cab?x=1", b"/", b"", b"a\x00b", b"\xff\xfe"])
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/", b"http/1.1", b"HTTP/1.1 x", b"HTTP"]))
    seps = draw(st.lists(st.sampled_from([b" ", b" ", b"  ", b"\t", b""]), min_size=2, max_size=2))
    line = method + seps[0] + target + seps[1] + version
    return (
        line
        + draw(st.sampled_from(ENDINGS))
        + draw(field_blocks())
        + draw(st.sampled_from([b"\r\n", b"\r\n", b"", b"\n", b"\r\n\r\n", b"\r\nX"]))
    )


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/", b"HTTPS/1.1", b"HTTP/1.1\x00"]))
    status = draw(st.sampled_from([b"206", b"200", b"2000", b"20", b"abc", b"", b"\xb2\xb2\xb2"]))
    reason = draw(
        st.sampled_from([b" Partial Content", b" ", b"", b"  OK", b" O\rK", b" \xe9t\xe9", b"OK"])
    )
    sep = draw(st.sampled_from([b" ", b" ", b"  ", b""]))
    line = version + sep + status + reason
    return (
        line
        + draw(st.sampled_from(ENDINGS))
        + draw(field_blocks())
        + draw(st.sampled_from([b"\r\n", b"\r\n", b"", b"\n", b"\r\n\r\n", b"\r\nX"]))
    )


@needs_native
@FUZZ
@given(st.one_of(request_heads(), st.binary(max_size=200)))
@example(b"GET http://wu.example/a HTTP/1.1\r\nHost: wu.example\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: a\r\n")
def test_http_request_heads_match_the_reference(raw: bytes) -> None:
    expected = reference(lambda: split_http_request_head(raw))
    assert native.http_request_head(raw, MAX_HEADERS) == expected


@needs_native
@FUZZ
@given(st.one_of(response_heads(), st.binary(max_size=200)))
@example(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\n\r\n")
@example(b"HTTP/1.1 200\r\n\r\n")
@example(b"HTTP/1.1 200 \r\n\r\n")
@example(b"HTTP/1.1 2000 OK\r\n\r\n")
def test_http_response_heads_match_the_reference(raw: bytes) -> None:
    expected = reference(lambda: split_http_response_head(raw))
    assert native.http_response_head(raw, MAX_HEADERS) == expected


def fields_reference(block: str) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:
    items = tuple(FIELD.findall(block))
    index: dict[str, str] = {}
    for name, value in items:
        index.setdefault(name.lower(), value)
    return items, index


@needs_native
@FUZZ
@given(st.one_of(field_blocks(), st.binary(max_size=200)))
@example(b"Host: a\r\nX-A:  1 \r\nx-a: 2\r\nEmpty:\r\n")
@example(b"X-" + b"Long" * 100 + b": v\r\nx-" + b"LONG" * 100 + b": w\r\n")  # names > 256
def test_fields_match_the_reference(block: bytes) -> None:
    text = block.decode("latin-1")
    scanned = native.fields(text)
    if FIELD_BLOCK_B.fullmatch(block) is not None:
        # Every block Headers splits has been validated: there the scanner must answer.
        assert scanned == fields_reference(text)
    else:
        assert scanned is None


ENTRY_NAMES = ["req-hdr", "res-hdr", "req-body", "res-body", "null-body", "opt-body"]


@st.composite
def encapsulated_values(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from([*ENTRY_NAMES, "REQ-HDR", "Res-Body", "x"]), max_size=4))
    parts = []
    for name in names:
        number = draw(st.sampled_from(["0", "12", "30", "007", "1234567890", "", "\u00b2", "-1"]))
        parts.append(draw(st.sampled_from(["", " ", "\t", "\u00a0"])) + f"{name}={number}")
    separators = st.sampled_from([", ", ",", " , ", ",\t", ";", " "])
    value = parts[0] if parts else ""
    for part in parts[1:]:
        value += draw(separators) + part
    return value + draw(st.sampled_from(["", " ", "\t", ",", "\u0100"]))


def encapsulated_reference(
    value: str, method: str
) -> tuple[int | None, int | None, str, int] | None:
    try:
        parsed = parse_encapsulated_python(value, method)
    except ProtocolError:
        return None
    return parsed.req_hdr, parsed.res_hdr, parsed.body.value, parsed.body_offset


@needs_native
@FUZZ
@given(
    st.one_of(encapsulated_values(), st.text(max_size=40)),
    st.sampled_from(["REQMOD", "RESPMOD", "OPTIONS"]),
)
@example("req-hdr=0, res-hdr=12, res-body=30", "RESPMOD")
@example("req-hdr=0, null-body=5", "REQMOD")
@example("null-body=0", "OPTIONS")
def test_encapsulated_matches_the_reference(value: str, method: str) -> None:
    scanned = native.encapsulated(value, method)
    expected = encapsulated_reference(value, method)
    if scanned is not None or expected is None:
        assert scanned == expected
    else:
        # The scanner leaves blanks other than space and tab (which str.strip() removes
        # in the reference's careful path) to the reference.
        assert any(ch.isspace() and ch not in " \t" for ch in value), value


@needs_native
@pytest.mark.parametrize(
    ("value", "method", "parsed"),
    [
        ("req-hdr=0, res-hdr=412, res-body=803", "RESPMOD", (0, 412, "res-body", 803)),
        ("req-hdr=0, res-hdr=412, null-body=803", "RESPMOD", (0, 412, "null-body", 803)),
        ("res-hdr=0, res-body=99", "RESPMOD", (None, 0, "res-body", 99)),
        ("req-hdr=0, req-body=412", "REQMOD", (0, None, "req-body", 412)),
        ("req-hdr=0,null-body=412", "REQMOD", (0, None, "null-body", 412)),
        ("null-body=0", "OPTIONS", (None, None, "null-body", 0)),
        ("opt-body=0", "OPTIONS", (None, None, "opt-body", 0)),
    ],
)
def test_encapsulated_scans_what_clients_send(
    value: str, method: str, parsed: tuple[int | None, int | None, str, int]
) -> None:
    assert native.encapsulated(value, method) == parsed


@needs_native
@pytest.mark.parametrize("fields", [MAX_HEADERS, MAX_HEADERS + 1])
def test_field_count_limit_matches_the_reference(fields: int) -> None:
    block = b"X-A: b\r\n" * fields
    request = b"GET / HTTP/1.1\r\n" + block + b"\r\n"
    response = b"HTTP/1.1 200 OK\r\n" + block + b"\r\n"
    limit = MAX_HEADERS
    within = fields <= limit
    assert (native.icap_fields(block, 0, limit) is not None) is within
    assert (native.http_request_head(request, limit) is not None) is within
    assert (native.http_response_head(response, limit) is not None) is within
    assert native.icap_fields(block, 0, limit) == reference(lambda: scan_icap_fields(block, 0))


@needs_native
def test_wrong_argument_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        native.icap_fields(bytearray(b"A: b\r\n"), 0, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.http_request_head(b"GET / HTTP/1.1\r\n\r\n")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        native.http_response_head("HTTP/1.1 200 OK\r\n\r\n", 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.encapsulated(b"null-body=0", "OPTIONS")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.fields(b"A: b\r\n")  # type: ignore[arg-type]
