"""Parsers of the pieces of an ICAP request: request line, ICAP fields, encapsulated HTTP heads,
chunk size lines. Each takes bytes or text already cut out by `IcapConnection` and returns
values, or raises `ProtocolError` (whose ``status_hint`` is the ICAP status to answer).

Where the native scanner has a function for a piece (see _native.py), the parser here calls it
first and keeps its Python twin (``scan_icap_fields``, ``split_http_request_head``,
``split_http_response_head``) for what the scanner leaves: the twin is the reference, and a
hypothesis test holds the two equal.
"""

from __future__ import annotations

from patchcache.errors import ProtocolError
from patchcache.icap_service import _native
from patchcache.icap_service._abnf import (
    FIELD_BLOCK_B,
    HEX,
    HTTP_REQUEST_HEAD,
    HTTP_RESPONSE_HEAD,
    ICAP_VERSION,
    MAX_HEADERS,
    METHODS,
    is_token,
)
from patchcache.icap_service._encapsulated import NO_ENCAPSULATION, Encapsulated, parse_encapsulated
from patchcache.icap_service._headers import (
    Headers,
    HttpRequestHead,
    HttpResponseHead,
    make_http_request_head,
    make_http_response_head,
)
from patchcache.icap_service._native import IcapFields

RequestLine = tuple[str, str, str, str]  # method, uri, service path, query


def parse_request_line(line: str) -> RequestLine:
    parts = line.split(" ")
    if len(parts) != 3:
        raise ProtocolError(f"malformed ICAP request line {line[:80]!r}")
    method, uri, version = parts
    if version != ICAP_VERSION:
        if version.startswith("ICAP/"):
            raise ProtocolError(f"unsupported version {version[:20]!r}", status_hint=505)
        raise ProtocolError(f"malformed ICAP request line {line[:80]!r}")
    if method not in METHODS:
        if is_token(method):
            raise ProtocolError(f"method {method[:20]!r} not implemented", status_hint=501)
        raise ProtocolError(f"malformed ICAP request line {line[:80]!r}")
    service, query = _split_icap_uri(uri)
    return method, uri, service, query


def parse_icap_fields(
    block: bytes, method: str, max_preview: int
) -> tuple[Headers, Encapsulated, int | None, bool, bool, bool]:
    """(headers, encapsulated, preview, allow 204, allow 206, keep-alive) from the ICAP fields
    (``block``: lines each ending with CRLF)."""
    native = _native.icap_fields
    scanned = native(block, max_preview, MAX_HEADERS) if native is not None else None
    if scanned is None:
        scanned = scan_icap_fields(block, max_preview)
    text, encapsulated_value, preview, allow_204, allow_206, keep_alive = scanned
    if encapsulated_value is None:
        if method != "OPTIONS":
            raise ProtocolError(f"{method} without an Encapsulated header")
        encapsulated = NO_ENCAPSULATION
    else:
        encapsulated = parse_encapsulated(encapsulated_value, method)
    return Headers._lazy(text), encapsulated, preview, allow_204, allow_206, keep_alive


def scan_icap_fields(block: bytes, max_preview: int) -> IcapFields:
    """The reference scan of the ICAP fields (the native `icap_fields` returns the same, or
    None for anything this reports): (block as text, Encapsulated value, Preview, allow 204,
    allow 206, keep-alive)."""
    if FIELD_BLOCK_B.fullmatch(block) is None:
        # Also rejects obs-fold (a line starting with SP/HT): RFC 7230 deprecates it.
        raise ProtocolError("ICAP head: malformed header field")
    if block.count(b"\n") > MAX_HEADERS:
        raise ProtocolError(f"ICAP head: more than {MAX_HEADERS} header fields")
    # The block is valid, so every field is ``name:value CRLF``: the few fields the protocol
    # needs are found with find() on a lower-cased copy (a "\n" in front makes the first field
    # look like the others), far cheaper than splitting every field in Python.
    low = b"\n" + block.lower()
    encapsulated_values = _field_values(low, block, b"\nencapsulated:")
    if len(encapsulated_values) > 1:
        raise ProtocolError("more than one Encapsulated header")
    preview: int | None = None
    for value in _field_values(low, block, b"\npreview:"):
        if not value.isdigit() or len(value) > 9:
            raise ProtocolError(f"bad Preview value {value[:20]!r}")
        preview = int(value)
        if preview > max_preview:
            raise ProtocolError(f"Preview {preview} larger than {max_preview}")
    allow_204 = allow_206 = False
    for value in _field_values(low, block, b"\nallow:"):
        tokens = {token.strip() for token in value.split(b",")}
        allow_204 = allow_204 or b"204" in tokens
        allow_206 = allow_206 or b"206" in tokens
    keep_alive = True
    for value in _field_values(low, block, b"\nconnection:"):
        if b"close" in (token.strip().lower() for token in value.split(b",")):
            keep_alive = False
    encapsulated = encapsulated_values[0].decode("latin-1") if encapsulated_values else None
    return block.decode("latin-1"), encapsulated, preview, allow_204, allow_206, keep_alive


def _field_values(low: bytes, block: bytes, marker: bytes) -> list[bytes]:
    """Values (spaces and tabs around them stripped) of the fields that ``marker``
    (``b"\\n" + lower-case name + b":"``) starts in ``low`` (``b"\\n" + block.lower()``)."""
    values: list[bytes] = []
    at = low.find(marker)
    while at >= 0:
        end = low.find(b"\r", at)
        # ``low`` is one byte longer than ``block``: shift the offsets back by that byte.
        values.append(block[at - 1 + len(marker) : end - 1].strip(b" \t"))
        at = low.find(marker, end)
    return values


def _split_icap_uri(uri: str) -> tuple[str, str]:
    """``icap://host[:port]/path[?query]`` (or a bare ``/path``) -> (path, query)."""
    lower = uri[:8].lower()
    if lower.startswith("icap://"):
        rest = uri[7:]
    elif lower.startswith("icaps://"):
        rest = uri[8:]
    elif uri.startswith("/"):
        rest = None
    else:
        raise ProtocolError(f"bad ICAP URI {uri[:80]!r}")
    if rest is None:
        path_and_query = uri
    else:
        slash = rest.find("/")
        if slash == 0 or not rest:
            raise ProtocolError(f"ICAP URI without a host: {uri[:80]!r}")
        path_and_query = rest[slash:] if slash > 0 else "/"
    path, _, query = path_and_query.partition("?")
    return path, query


def parse_chunk_line(line: bytes) -> tuple[int, tuple[tuple[str, str | None], ...]]:
    text = line.decode("latin-1")
    size_text, _, ext_text = text.partition(";")
    size_text = size_text.strip(" \t")
    if HEX.fullmatch(size_text) is None:
        raise ProtocolError(f"bad chunk size line {text[:40]!r}")
    size = int(size_text, 16)
    if not ext_text:
        return size, ()
    extensions: list[tuple[str, str | None]] = []
    for part in ext_text.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip(" \t").lower()
        if not is_token(name):
            raise ProtocolError(f"bad chunk extension {part[:40]!r}")
        if sep:
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            extensions.append((name, value))
        else:
            extensions.append((name, None))
    return size, tuple(extensions)


def parse_http_request_head(raw: bytes) -> HttpRequestHead:
    """Parse an encapsulated HTTP request head; raises `ProtocolError` (400)."""
    native = _native.http_request_head
    scanned = native(raw, MAX_HEADERS) if native is not None else None
    if scanned is not None:
        method, target, version, block = scanned
    else:
        method, target, version, block = split_http_request_head(raw)
    return make_http_request_head(raw, method, target, version, Headers._lazy(block))


def parse_http_response_head(raw: bytes) -> HttpResponseHead:
    """Parse an encapsulated HTTP response head; raises `ProtocolError` (400)."""
    native = _native.http_response_head
    scanned = native(raw, MAX_HEADERS) if native is not None else None
    if scanned is not None:
        version, status, reason, block = scanned
    else:
        version, status, reason, block = split_http_response_head(raw)
    return make_http_response_head(raw, version, status, reason, Headers._lazy(block))


# The reference parsers of the two heads: (start-line parts..., field block). The native
# scanner returns the same tuples for valid heads and None for anything else, which then
# comes here to be reported.


def split_http_request_head(raw: bytes) -> tuple[str, str, str, str]:
    match = HTTP_REQUEST_HEAD.fullmatch(raw.decode("latin-1"))
    if match is None:
        raise ProtocolError(f"req-hdr: malformed HTTP request head {raw[:80]!r}")
    method, target, version, block = match.groups()
    if block.count("\n") > MAX_HEADERS:
        raise ProtocolError(f"req-hdr: more than {MAX_HEADERS} header fields")
    return method, target, version, block


def split_http_response_head(raw: bytes) -> tuple[str, int, str, str]:
    match = HTTP_RESPONSE_HEAD.fullmatch(raw.decode("latin-1"))
    if match is None:
        raise ProtocolError(f"res-hdr: malformed HTTP response head {raw[:80]!r}")
    version, code, reason, block = match.groups()
    if block.count("\n") > MAX_HEADERS:
        raise ProtocolError(f"res-hdr: more than {MAX_HEADERS} header fields")
    return version, int(code), reason or "", block
