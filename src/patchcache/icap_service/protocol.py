"""ICAP (RFC 3507) server side, as a protocol core without I/O (in the manner of h11).

Theory of operation
-------------------
An ICAP client (Squid) opens a TCP connection and sends requests one after the other on it
(RFC 3507 section 4.2: connections are persistent unless ``Connection: close``). A request is

* an ICAP head: request line (``RESPMOD icap://host:port/path ICAP/1.0``) and headers, ended by an
  empty line;
* the *encapsulated* HTTP heads (the client's HTTP request head and/or the origin's response
  head), not chunked, whose lengths are given by the byte offsets in the ``Encapsulated`` header
  (section 4.4.1), e.g. ``Encapsulated: req-hdr=0, res-hdr=412, res-body=803``;
* the encapsulated HTTP body, chunked (section 4.4.1), unless the last ``Encapsulated`` entry is
  ``null-body``.

With ``Preview: N`` (section 4.5) the client first sends at most N body bytes and a last chunk
(``0`` or ``0; ieof`` when the whole body fitted in the preview), then waits. The server answers
``100 Continue`` to get the rest of the body, or a final response at once: ``204 No Content``
(always allowed after a preview), or ``206 Partial Content`` whose last chunk carries
``use-original-body=0`` (the "ICAP Partial Content Extension" draft, enabled by ``Allow: 206``):
the client then reuses its own copy of the body, so a big download never passes through us.
Squid offers ``Allow: 206`` and keeps the body for a ``Preview: 0`` request when the service
advertised ``Preview: 0`` and ``Transfer-Preview: *`` in its OPTIONS reply.

`IcapConnection` is one connection's state machine. Feed it bytes with `receive_data` (``b""`` at
EOF) and pull events with `next_event` until it returns `NEED_DATA` (feed more) or `PAUSED` (the
client waits for our answer). Every ``send_*`` method returns the bytes to write and advances the
state; when both sides have finished a request the connection is ready for the next one, or
`IcapConnection.must_close` becomes true. Bytes that break the protocol raise
`patchcache.errors.ProtocolError` whose ``status_hint`` is the ICAP status to answer with
(400, 501 unknown method, 505 wrong version); the connection cannot be resynchronised after that:
answer with `IcapConnection.send_error` and close. A final response sent before the request body
has arrived (an early ``204``, a ``404``) makes the connection skip the rest of that body by
itself, so one connection can carry many requests.

Per-request events, in order: `RequestHead`, zero or more `BodyChunk`, then `EndOfMessage`; with a
preview, `PreviewEnd` comes after the preview's chunks, and `BodyChunk`s and `EndOfMessage` follow
it only if the whole body was in the preview (``ieof``) or we answered ``100 Continue``. Once our
final response is complete, whatever is left of that request is consumed silently (no more
events for it), so an adapter may answer as early as it likes.

Limits: the ICAP head and the encapsulated HTTP heads are each bounded by ``max_head_size``; chunk
size lines and trailers are bounded too; the preview size by ``max_preview``. Header folding
(obs-fold) is rejected.

Speed: every head is validated on arrival, in one pass over its bytes, but the fields of
`Headers` are split only when first read, and the request line is parsed once per connection
(Squid repeats it). The optional native scanner (_scan.c) does those passes and builds the
per-request objects; this module stays the reference: the scanner answers only for input it
accepts, with what the Python code here returns (tests hold the two equal), and anything else
comes back here to be parsed and reported. A RESPMOD costs about 7 us with the scanner, 20 us
without (bench/icap_core_cost.py).
"""

from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from patchcache.errors import ProtocolError

# The optional native scanner (_scan.c); this module is the reference without it. Setting
# PATCHCACHE_PURE_PYTHON=1 leaves it unused (to rule it out when chasing a problem, or to measure).
try:
    if os.environ.get("PATCHCACHE_PURE_PYTHON", "") not in ("", "0"):
        raise ImportError("PATCHCACHE_PURE_PYTHON is set")
    from patchcache.icap_service import _scan as _native
except ImportError:  # pragma: no cover - depends on how the package was built
    _native = None  # type: ignore[assignment]

_T = TypeVar("_T")

__all__ = [
    "DEFAULT_MAX_HEAD_SIZE",
    "DEFAULT_MAX_PREVIEW",
    "NEED_DATA",
    "PAUSED",
    "BodyChunk",
    "BodyKind",
    "ConnectionClosed",
    "Encapsulated",
    "EndOfMessage",
    "Event",
    "Headers",
    "HttpRequestHead",
    "HttpResponseHead",
    "IcapConnection",
    "NeedData",
    "OptionsReply",
    "Paused",
    "PreviewEnd",
    "RequestHead",
    "edit_http_head",
    "format_istag",
    "parse_encapsulated",
    "parse_http_request_head",
    "parse_http_response_head",
    "serialize_chunk",
    "serialize_continue",
    "serialize_error",
    "serialize_last_chunk",
    "serialize_no_content",
    "serialize_options",
    "serialize_partial_content",
    "serialize_response_head",
]

DEFAULT_MAX_HEAD_SIZE = 65536
DEFAULT_MAX_PREVIEW = 1 << 20
MAX_HEADERS = 200
MAX_CHUNK_LINE = 4096
MAX_CHUNK_SIZE_DIGITS = 15  # 2**60 bytes: more than any real body, small enough to stay sane

ICAP_VERSION = "ICAP/1.0"
METHODS = frozenset({"OPTIONS", "REQMOD", "RESPMOD"})

# RFC 3507 section 4.3.3 reason phrases, plus 206 from the Partial Content extension.
REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    400: "Bad Request",
    404: "ICAP Service Not Found",
    405: "Method Not Allowed For Service",
    408: "Request Timeout",
    500: "Server Error",
    501: "Method Not Implemented",
    503: "Service Overloaded",
    505: "ICAP Version Not Supported By Server",
}

_TOKEN_RE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_RE)
_FIELD = re.compile(f"({_TOKEN_RE}):[ \t]*(.*?)[ \t]*\r\n")
_HEX = re.compile(f"[0-9A-Fa-f]{{1,{MAX_CHUNK_SIZE_DIGITS}}}")
# The same grammar on bytes: heads are validated in one C-level pass each, before any decoding.
_TOKEN_B = _TOKEN_RE.encode()
_FIELDS_B = rb"(?:" + _TOKEN_B + rb":[^\r\n]*\r\n)*"
_FIELD_BLOCK_B = re.compile(_FIELDS_B)
# The encapsulated HTTP heads are decoded (latin-1: every byte maps to one character) once and
# matched as text, so the groups need no decoding each.
_FIELDS = _FIELDS_B.decode("ascii")
_HTTP_REQUEST_HEAD = re.compile(
    "(" + _TOKEN_RE + ") ([^ \r\n]+) (HTTP/[^ \r\n]*)\r\n(" + _FIELDS + ")\r\n"
)
_HTTP_RESPONSE_HEAD = re.compile(
    "(HTTP/[^ \r\n]*) ([0-9]{3})(?: ([^\r\n]*))?\r\n(" + _FIELDS + ")\r\n"
)


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The setter of slot ``name``: it writes into a frozen instance being built, bypassing
    the ``__setattr__`` that makes it read-only afterwards."""
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


_new_object = object.__new__


def _maker(cls: type[_T], names: tuple[str, ...]) -> Callable[..., _T]:
    """A positional constructor for the slotted, frozen class ``cls``: slots ``names`` get the
    arguments in order. The classes built for every request use it instead of their generated
    ``__init__``, which pays one ``object.__setattr__`` call per field (about 0.1 us each):
    natively one call fills every slot, else the slots' own setters do. Tests check that
    both build objects equal to the ones the classes' constructors build."""
    slots = tuple(cls.__dict__[name] for name in names)
    if _native is not None:
        return functools.partial(_native.build, cls, slots)
    setters = tuple(slot.__set__ for slot in slots)

    def make(*values: object) -> _T:
        built = _new_object(cls)
        for setter, value in zip(setters, values, strict=True):
            setter(built, value)
        return built

    return make


def _is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


# --------------------------------------------------------------------------------------------
# Headers and encapsulated HTTP heads
# --------------------------------------------------------------------------------------------


class Headers:
    """Header fields in arrival order, names as sent; look-ups ignore case. Immutable.

    Encapsulated HTTP heads are validated when they arrive but split into fields only on first
    use: a service that decides on the URL alone never pays for the response head's fields.
    """

    __slots__ = ("_block", "_index", "_items")
    _items: tuple[tuple[str, str], ...] | None
    _block: str | None
    _index: dict[str, str] | None

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        object.__setattr__(self, "_items", tuple(items))
        object.__setattr__(self, "_block", None)
        object.__setattr__(self, "_index", None)

    @staticmethod
    def _lazy(block: str) -> Headers:
        """From a block already validated (fields each ending with CRLF), decoded as latin-1."""
        # Built for every encapsulated head: one maker call (see _maker), not __init__.
        return _make_lazy_headers(None, block, None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Headers is immutable")

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        items: tuple[tuple[str, str], ...] | None = self._items
        if items is None:
            items = self._split()
        return items

    def _split(self) -> tuple[tuple[str, str], ...]:
        """Split the lazy block into fields (and, natively, the look-up index at once)."""
        block = self._block or ""
        scanned = _native.fields(block) if _native is not None else None
        if scanned is None:
            items = tuple(_FIELD.findall(block))
        else:
            items, index = scanned
            _set_headers_index(self, index)
        _set_headers_items(self, items)
        return items

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        index: dict[str, str] | None = self._index
        if index is None:
            index = self._make_index()
        return index.get(name.lower(), default)

    def _make_index(self) -> dict[str, str]:
        """{lower-case name: first value}; the native split of a lazy block makes it at once."""
        items = self.items
        index = self._index
        if index is None:
            index = {}
            for key, value in items:
                index.setdefault(key.lower(), value)
            _set_headers_index(self, index)
        return index

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of ``name``, in order."""
        lname = name.lower()
        return tuple(value for key, value in self.items if key.lower() == lname)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


# Headers is built per encapsulated head (see _maker) and filled in lazily through its slots.
_make_lazy_headers = _maker(Headers, ("_items", "_block", "_index"))
_set_headers_items = _slot_setter(Headers, "_items")
_set_headers_index = _slot_setter(Headers, "_index")


@dataclass(frozen=True, slots=True)
class HttpRequestHead:
    """The encapsulated HTTP request head (``req-hdr``). ``raw`` ends with CRLF CRLF."""

    raw: bytes
    method: str
    target: str
    version: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class HttpResponseHead:
    """The encapsulated HTTP response head (``res-hdr``). ``raw`` ends with CRLF CRLF."""

    raw: bytes
    version: str
    status: int
    reason: str
    headers: Headers


# Positional constructors of the classes built for every request: see _maker.
_make_http_request_head = _maker(HttpRequestHead, ("raw", "method", "target", "version", "headers"))
_make_http_response_head = _maker(
    HttpResponseHead, ("raw", "version", "status", "reason", "headers")
)


def parse_http_request_head(raw: bytes) -> HttpRequestHead:
    """Parse an encapsulated HTTP request head; raises `ProtocolError` (400)."""
    scanned = _native.http_request_head(raw, MAX_HEADERS) if _native is not None else None
    if scanned is not None:
        method, target, version, block = scanned
    else:
        method, target, version, block = _split_http_request_head(raw)
    return _make_http_request_head(raw, method, target, version, Headers._lazy(block))


def parse_http_response_head(raw: bytes) -> HttpResponseHead:
    """Parse an encapsulated HTTP response head; raises `ProtocolError` (400)."""
    scanned = _native.http_response_head(raw, MAX_HEADERS) if _native is not None else None
    if scanned is not None:
        version, status, reason, block = scanned
    else:
        version, status, reason, block = _split_http_response_head(raw)
    return _make_http_response_head(raw, version, status, reason, Headers._lazy(block))


# The reference parsers of the two heads: (start-line parts..., field block). The native
# scanner returns the same tuples for valid heads and None for anything else, which then
# comes here to be reported.


def _split_http_request_head(raw: bytes) -> tuple[str, str, str, str]:
    match = _HTTP_REQUEST_HEAD.fullmatch(raw.decode("latin-1"))
    if match is None:
        raise ProtocolError(f"req-hdr: malformed HTTP request head {raw[:80]!r}")
    method, target, version, block = match.groups()
    if block.count("\n") > MAX_HEADERS:
        raise ProtocolError(f"req-hdr: more than {MAX_HEADERS} header fields")
    return method, target, version, block


def _split_http_response_head(raw: bytes) -> tuple[str, int, str, str]:
    match = _HTTP_RESPONSE_HEAD.fullmatch(raw.decode("latin-1"))
    if match is None:
        raise ProtocolError(f"res-hdr: malformed HTTP response head {raw[:80]!r}")
    version, code, reason, block = match.groups()
    if block.count("\n") > MAX_HEADERS:
        raise ProtocolError(f"res-hdr: more than {MAX_HEADERS} header fields")
    return version, int(code), reason or "", block


def edit_http_head(
    raw: bytes, add: Iterable[tuple[str, str]] = (), remove: Iterable[str] = ()
) -> bytes:
    """Return the HTTP head ``raw`` without the fields named in ``remove``, plus ``add``.

    The start line and the other fields are kept byte for byte. Names and values are checked,
    so a decision can never inject a line break into the head.
    """
    drop = {name.lower() for name in remove}
    for name in drop:
        if not _is_token(name):
            raise ValueError(f"bad header name {name!r}")
    lines = raw[:-4].split(b"\r\n") if raw.endswith(b"\r\n\r\n") else raw.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].decode("latin-1").lower()
        if name not in drop:
            kept.append(line)
    for name, value in add:
        _check_field(name, value)
        kept.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _check_field(name: str, value: str) -> None:
    if not _is_token(name):
        raise ValueError(f"bad header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name!r}: value contains a line break")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header {name!r}: value is not latin-1") from exc


# --------------------------------------------------------------------------------------------
# Encapsulated header (RFC 3507 section 4.4.1)
# --------------------------------------------------------------------------------------------


class BodyKind(enum.Enum):
    """The last entry of an ``Encapsulated`` header: which body follows, if any."""

    REQ_BODY = "req-body"
    RES_BODY = "res-body"
    OPT_BODY = "opt-body"
    NULL_BODY = "null-body"


_NULL_BODY: Final = BodyKind.NULL_BODY  # read per request: a global, not an Enum attribute
_BODY_KINDS = {kind.value: kind for kind in BodyKind}
_ENCAPSULATED = re.compile(
    r"[ \t]*(?:req-hdr=(\d{1,9})[ \t]*,[ \t]*)?(?:res-hdr=(\d{1,9})[ \t]*,[ \t]*)?"
    r"(req-body|res-body|null-body|opt-body)=(\d{1,9})[ \t]*",
    re.IGNORECASE,
)
# Which Encapsulated entries each request method may carry (section 4.4.1).
_ALLOWED_ENTRIES = {
    "REQMOD": frozenset({"req-hdr", "req-body", "null-body"}),
    "RESPMOD": frozenset({"req-hdr", "res-hdr", "res-body", "null-body"}),
    "OPTIONS": frozenset({"opt-body", "null-body"}),
}


@dataclass(frozen=True, slots=True)
class Encapsulated:
    """Parsed ``Encapsulated`` offsets, relative to the end of the ICAP head."""

    req_hdr: int | None
    res_hdr: int | None
    body: BodyKind
    body_offset: int

    @property
    def has_body(self) -> bool:
        return self.body is not _NULL_BODY


NO_ENCAPSULATION = Encapsulated(None, None, BodyKind.NULL_BODY, 0)
_encapsulated = _maker(Encapsulated, ("req_hdr", "res_hdr", "body", "body_offset"))
# (method, has req-hdr, has res-hdr, body entry as sent) -> body kind, for every combination
# section 4.4.1 allows and in the letter case clients use; `parse_encapsulated`'s fast path.
_FAST_SHAPES: dict[tuple[str, bool, bool, str], BodyKind] = {
    (method, has_req, has_res, spelling): _BODY_KINDS[body]
    for method, allowed in _ALLOWED_ENTRIES.items()
    for has_req in (False, True)
    for has_res in (False, True)
    for body in allowed & set(_BODY_KINDS)
    for spelling in (body, body.upper())
    if (not has_req or "req-hdr" in allowed) and (not has_res or "res-hdr" in allowed)
}


def parse_encapsulated(value: str, method: str) -> Encapsulated:
    """Parse and validate an ``Encapsulated`` value for a request ``method``.

    Entries: optional ``req-hdr``, then optional ``res-hdr``, then exactly one body entry;
    offsets start at 0 and increase; each method allows only some names.
    """
    scanned = _native.encapsulated(value, method) if _native is not None else None
    if scanned is not None:
        return _encapsulated(scanned[0], scanned[1], _BODY_KINDS[scanned[2]], scanned[3])
    fast = _ENCAPSULATED.fullmatch(value)
    if fast is not None:
        # The shapes real clients send, in one regex and one table look-up; anything else
        # (or a shape this method does not allow) takes the slow path, which names the problem.
        req_text, res_text, body_name, body_text = fast.groups()
        body = _FAST_SHAPES.get((method, req_text is not None, res_text is not None, body_name))
        if body is not None:
            end = int(body_text)
            req = res = None
            last = -1
            if req_text is not None:
                req = last = int(req_text)
            if res_text is not None:
                res = int(res_text)
                ordered = res > last if req is not None else res == 0
                last = res
            else:
                ordered = True
            if req is not None and req != 0:
                ordered = False
            if ordered and (end > last if last >= 0 else end == 0):
                return _encapsulated(req, res, body, end)
    return _parse_encapsulated_slowly(value, method)


def _parse_encapsulated_slowly(value: str, method: str) -> Encapsulated:
    allowed = _ALLOWED_ENTRIES[method]
    req_hdr: int | None = None
    res_hdr: int | None = None
    body: BodyKind | None = None
    last = -1
    offset = 0
    for part in value.split(","):
        name, sep, number = part.partition("=")
        name = name.strip().lower()
        number = number.strip()
        if not sep or not (number.isascii() and number.isdigit()) or len(number) > 9:
            raise ProtocolError(f"malformed Encapsulated entry {part.strip()[:40]!r}")
        if name not in allowed:
            raise ProtocolError(f"Encapsulated entry {name!r} not allowed in {method}")
        if body is not None:
            raise ProtocolError("Encapsulated: the body entry must come last")
        offset = int(number)
        out_of_order = offset != 0 if last < 0 else offset <= last
        if out_of_order:
            raise ProtocolError("Encapsulated: offsets must start at 0 and increase")
        last = offset
        if name == "req-hdr":
            if req_hdr is not None or res_hdr is not None:
                raise ProtocolError("Encapsulated: req-hdr repeated or after res-hdr")
            req_hdr = offset
        elif name == "res-hdr":
            if res_hdr is not None:
                raise ProtocolError("Encapsulated: res-hdr repeated")
            res_hdr = offset
        else:
            body = _BODY_KINDS[name]
    if body is None:
        raise ProtocolError("Encapsulated: no body entry (req-body, res-body, null-body...)")
    return Encapsulated(req_hdr, res_hdr, body, offset)


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHead:
    """An ICAP request head with its encapsulated HTTP heads, parsed.

    ``service`` is the path of the ICAP URI (``/respmod``), ``query`` what followed ``?``.
    ``preview`` is the ``Preview`` size, or None when the request has no preview (no ``Preview``
    header, or no body). ``allow_204``/``allow_206`` reflect the client's ``Allow`` header.
    """

    method: str
    uri: str
    service: str
    query: str
    version: str
    headers: Headers
    encapsulated: Encapsulated
    http_request: HttpRequestHead | None
    http_response: HttpResponseHead | None
    preview: int | None
    allow_204: bool
    allow_206: bool
    keep_alive: bool

    @property
    def has_body(self) -> bool:
        return self.encapsulated.has_body


_make_request_head = _maker(
    RequestHead,
    (
        "method",
        "uri",
        "service",
        "query",
        "version",
        "headers",
        "encapsulated",
        "http_request",
        "http_response",
        "preview",
        "allow_204",
        "allow_206",
        "keep_alive",
    ),
)


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """Some bytes of the encapsulated body (a chunk may arrive as several BodyChunk events).

    ``extensions`` are the chunk extensions of the chunk these bytes start, else ``()``.
    """

    data: bytes
    extensions: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class PreviewEnd:
    """The preview's last chunk arrived. ``ieof``: the whole body was in the preview."""

    ieof: bool


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The request has been received completely."""


@dataclass(frozen=True, slots=True)
class NeedData:
    """No event can be produced until more bytes arrive."""


@dataclass(frozen=True, slots=True)
class Paused:
    """The client waits for our response (after the preview or the whole request)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed its side between requests."""


NEED_DATA = NeedData()
PAUSED = Paused()
END_OF_MESSAGE = EndOfMessage()
PREVIEW_END = PreviewEnd(False)
PREVIEW_END_IEOF = PreviewEnd(True)
CONNECTION_CLOSED = ConnectionClosed()

Event = RequestHead | BodyChunk | PreviewEnd | EndOfMessage | NeedData | Paused | ConnectionClosed


# --------------------------------------------------------------------------------------------
# Serializers (pure functions; IcapConnection wraps them with state checks)
# --------------------------------------------------------------------------------------------


def format_istag(tag: str) -> str:
    """Quote an ISTag (section 4.7: a quoted string of at most 32 characters)."""
    inner = tag[1:-1] if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"' else tag
    if (
        not inner
        or len(inner) > 32
        or any(ch in inner for ch in '"\\\r\n')
        or not inner.isprintable()
    ):
        raise ValueError(f"bad ISTag {tag!r}: 1-32 printable characters, no quotes")
    return f'"{inner}"'


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"ICAP/1.0 {status} {REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def serialize_continue() -> bytes:
    return b"ICAP/1.0 100 Continue\r\n\r\n"


def serialize_no_content(istag: str, *, close: bool = False) -> bytes:
    """``204 No Content``: use the message unmodified. ``istag`` is already quoted."""
    tail = b"Connection: close\r\n\r\n" if close else b"\r\n"
    return (
        b"ICAP/1.0 204 No Content\r\nISTag: "
        + istag.encode("latin-1")
        + b"\r\nEncapsulated: null-body=0\r\n"
        + tail
    )


def serialize_response_head(
    status: int,
    istag: str,
    *,
    req_hdr: bytes | None = None,
    res_hdr: bytes | None = None,
    body: BodyKind = BodyKind.NULL_BODY,
    close: bool = False,
) -> bytes:
    """An ICAP response head followed by the encapsulated HTTP heads (not the body)."""
    entries: list[str] = []
    offset = 0
    if req_hdr is not None:
        entries.append("req-hdr=0")
        offset = len(req_hdr)
    if res_hdr is not None:
        entries.append(f"res-hdr={offset}")
        offset += len(res_hdr)
    entries.append(f"{body.value}={offset}")
    headers = [("ISTag", istag), ("Encapsulated", ", ".join(entries))]
    if close:
        headers.append(("Connection", "close"))
    return _head(status, headers) + (req_hdr or b"") + (res_hdr or b"")


def serialize_partial_content(
    istag: str, *, req_hdr: bytes | None = None, res_hdr: bytes | None = None, close: bool = False
) -> bytes:
    """``206 Partial Content`` with new HTTP head(s) and ``0; use-original-body=0``.

    The client keeps the body it already has: not a byte of it crosses this connection.
    """
    body = BodyKind.RES_BODY if res_hdr is not None else BodyKind.REQ_BODY
    head = serialize_response_head(
        206, istag, req_hdr=req_hdr, res_hdr=res_hdr, body=body, close=close
    )
    return head + b"0; use-original-body=0\r\n\r\n"


def serialize_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def serialize_last_chunk() -> bytes:
    return b"0\r\n\r\n"


def serialize_error(status: int, *, istag: str | None = None, close: bool = True) -> bytes:
    headers = [("ISTag", istag)] if istag else []
    headers.append(("Encapsulated", "null-body=0"))
    if close:
        headers.append(("Connection", "close"))
    return _head(status, headers)


@dataclass(frozen=True, slots=True)
class OptionsReply:
    """What an OPTIONS response advertises for one service path (section 4.10.2)."""

    methods: tuple[str, ...]
    istag: str  # quoted
    service: str = "patchcache"
    service_id: str | None = None
    options_ttl: int = 3600
    max_connections: int | None = None
    # We implement 204 and 206, so we advertise both; Preview: 0 with Transfer-Preview: * makes
    # Squid send only the heads, then keep the body while we decide.
    allow: tuple[str, ...] = ("204", "206")
    preview: int | None = 0
    transfer_preview: str | None = "*"
    date: str | None = None


def serialize_options(reply: OptionsReply, *, close: bool = False) -> bytes:
    headers = [("Methods", ", ".join(reply.methods)), ("Service", reply.service)]
    headers.append(("ISTag", reply.istag))
    if reply.date:
        headers.append(("Date", reply.date))
    headers.append(("Options-TTL", str(reply.options_ttl)))
    if reply.max_connections is not None:
        headers.append(("Max-Connections", str(reply.max_connections)))
    if reply.service_id:
        headers.append(("Service-ID", reply.service_id))
    if reply.allow:
        headers.append(("Allow", ", ".join(reply.allow)))
    if reply.preview is not None:
        headers.append(("Preview", str(reply.preview)))
    if reply.transfer_preview:
        headers.append(("Transfer-Preview", reply.transfer_preview))
    headers.append(("Encapsulated", "null-body=0"))
    if close:
        headers.append(("Connection", "close"))
    return _head(200, headers)


# --------------------------------------------------------------------------------------------
# The connection state machine
# --------------------------------------------------------------------------------------------


# The states below are plain string constants, not enum.Enum members: reading an Enum member
# costs about 120 ns on Python 3.11 (a class attribute about 20 ns), and the state machine reads
# them dozens of times per request.


class _Their:
    """States of the client's side of the current request."""

    IDLE: Final = "idle"  # waiting for a request head
    HEAD_DONE: Final = "head-done"  # RequestHead emitted, null body: EndOfMessage next
    BODY: Final = "body"  # reading chunks
    PREVIEW_WAIT: Final = "preview-wait"  # preview ended without ieof: waiting for 100 or final
    DONE: Final = "done"  # request complete, waiting for our response to finish
    ERROR: Final = "error"
    CLOSED: Final = "closed"


class _Ours:
    """States of our side: the response to the current request."""

    IDLE: Final = "idle"
    WAIT: Final = "wait"  # request head seen, nothing sent
    CONTINUED: Final = "continued"  # 100 Continue sent
    SENDING_BODY: Final = "sending-body"  # 200 head with a body sent, chunks follow
    DONE: Final = "done"
    MUST_CLOSE: Final = "must-close"


class _Chunk:
    """Where the chunked-body reader is."""

    SIZE: Final = "size"
    DATA: Final = "data"
    CRLF: Final = "crlf"
    TRAILER: Final = "trailer"


class IcapConnection:
    """Server side of one ICAP connection. See the module docstring for the protocol."""

    def __init__(
        self,
        *,
        max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
        max_preview: int = DEFAULT_MAX_PREVIEW,
    ) -> None:
        self.max_head_size = max_head_size
        self.max_preview = max_preview
        # Unread input. Usually the bytes of the last read as they came (Squid writes a request
        # in one go), so the heads sliced out of it are bytes without another copy; it becomes a
        # bytearray only while a message arrives in pieces.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._their = _Their.IDLE
        self._ours = _Ours.IDLE
        self._head: RequestHead | None = None
        self._keep_alive = True
        # Body reading.
        self._chunk = _Chunk.SIZE
        self._remaining = 0
        self._extensions: tuple[tuple[str, str | None], ...] = ()
        self._in_preview = False
        self._preview_bytes = 0
        self._last_chunk_ieof = False
        self._trailer_bytes = 0
        self._discard = False  # our final response went out early: skip the rest of the body
        self._close_requested = False
        self._request_line: tuple[bytes, RequestLine] | None = None
        self._no_content_cache: dict[tuple[str, bool], bytes] = {}

    # ---- state, for adapters --------------------------------------------------------------

    @property
    def request(self) -> RequestHead | None:
        """The head of the request in progress, if any."""
        return self._head

    @property
    def must_close(self) -> bool:
        """True once the connection cannot carry another request: close it."""
        return self._ours is _Ours.MUST_CLOSE or self._their in (_Their.ERROR, _Their.CLOSED)

    @property
    def idle(self) -> bool:
        """True between requests with nothing buffered (safe to close for a shutdown)."""
        return (
            self._their is _Their.IDLE and self._ours is _Ours.IDLE and self._pos >= len(self._buf)
        )

    @property
    def reading_head(self) -> bool:
        """True while part of a next request head is buffered but not yet complete (an adapter
        bounds how long a client may take to finish a head)."""
        return (
            self._their is _Their.IDLE and self._ours is _Ours.IDLE and self._pos < len(self._buf)
        )

    @property
    def awaiting_response(self) -> bool:
        """True when a request head was seen and our final response has not been completed."""
        return self._ours in (_Ours.WAIT, _Ours.CONTINUED, _Ours.SENDING_BODY)

    @property
    def response_started(self) -> bool:
        """True while a ``200`` with a body is being streamed (an error can no longer be sent)."""
        return self._ours is _Ours.SENDING_BODY

    @property
    def can_send_no_content(self) -> bool:
        """Whether 204 is allowed now: after a preview, or with ``Allow: 204`` (section 4.6)."""
        head = self._head
        if head is None or self._ours not in (_Ours.WAIT, _Ours.CONTINUED):
            return False
        return head.allow_204 or (self._ours is _Ours.WAIT and head.preview is not None)

    def close_after_response(self) -> None:
        """Announce ``Connection: close`` in the next response and close after it."""
        self._close_requested = True
        self._keep_alive = False

    # ---- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            if self._eof:
                raise RuntimeError("receive_data after EOF")
            buf = self._buf
            if self._pos >= len(buf):
                self._buf = bytes(data)
                self._pos = 0
            elif isinstance(buf, bytes):
                self._buf = bytearray(buf[self._pos :]) + data
                self._pos = 0
            else:
                buf += data
        else:
            self._eof = True

    def next_event(self) -> Event:
        """The next event, or `NEED_DATA` / `PAUSED`. Raises `ProtocolError` on bad input."""
        try:
            return self._next_event()
        except ProtocolError:
            self._their = _Their.ERROR
            raise

    def _next_event(self) -> Event:
        their = self._their
        if their is _Their.BODY:
            return self._next_body_event()
        if their is _Their.IDLE:
            if self._ours is not _Ours.IDLE:
                return PAUSED
            return self._next_head_event()
        if their is _Their.HEAD_DONE:
            self._their = _Their.DONE
            self._maybe_next_cycle()
            return END_OF_MESSAGE
        if their in (_Their.DONE, _Their.PREVIEW_WAIT):
            return PAUSED
        if their is _Their.CLOSED:
            return CONNECTION_CLOSED
        raise ProtocolError("connection already failed")

    def _compact(self) -> None:
        buf = self._buf
        if self._pos > 65536 and self._pos * 2 > len(buf):
            if isinstance(buf, bytearray):
                del buf[: self._pos]
            else:
                self._buf = buf[self._pos :]
            self._pos = 0

    def _next_head_event(self) -> Event:
        buf = self._buf
        pos = self._pos
        # Tolerate stray CRLFs between messages (RFC 7230 section 3.5 robustness).
        while buf.startswith(b"\r\n", pos):
            pos += 2
        self._pos = pos
        if pos >= len(buf):
            if self._eof:
                self._their = _Their.CLOSED
                return CONNECTION_CLOSED
            return NEED_DATA
        end = buf.find(b"\r\n\r\n", pos, pos + self.max_head_size + 4)
        if end < 0:
            if len(buf) - pos > self.max_head_size:
                raise ProtocolError(f"ICAP head larger than {self.max_head_size} bytes")
            if self._eof:
                raise ProtocolError("connection closed in the middle of an ICAP head")
            return NEED_DATA
        start = end + 4
        # Squid sends the same request line again and again on a connection: parse it once.
        cached = self._request_line
        if cached is not None and buf.startswith(cached[0], pos):
            line_end = pos + len(cached[0]) - 2
            method, uri, service, query = cached[1]
        else:
            line_end = buf.find(b"\r\n", pos, end)
            if line_end < 0:
                line_end = end
            line = bytes(buf[pos:line_end])
            parsed = _parse_request_line(line.decode("latin-1"))
            self._request_line = (line + b"\r\n", parsed)
            method, uri, service, query = parsed
        headers, encapsulated, preview, allow_204, allow_206, keep_alive = _parse_icap_fields(
            bytes(buf[line_end + 2 : end + 2]), method, self.max_preview
        )
        encap_len = encapsulated.body_offset
        if encap_len > self.max_head_size:
            raise ProtocolError(f"encapsulated HTTP heads larger than {self.max_head_size} bytes")
        if len(buf) - start < encap_len:
            if self._eof:
                raise ProtocolError("connection closed in the middle of encapsulated heads")
            return NEED_DATA
        http_request = http_response = None
        req_hdr = encapsulated.req_hdr
        res_hdr = encapsulated.res_hdr
        if req_hdr is not None:
            stop = res_hdr if res_hdr is not None else encap_len
            http_request = parse_http_request_head(bytes(buf[start : start + stop]))
        if res_hdr is not None:
            http_response = parse_http_response_head(
                bytes(buf[start + res_hdr : start + encap_len])
            )
        self._pos = start + encap_len
        has_body = encapsulated.body is not _NULL_BODY
        if not has_body:
            preview = None
        head = _make_request_head(
            method,
            uri,
            service,
            query,
            ICAP_VERSION,
            headers,
            encapsulated,
            http_request,
            http_response,
            preview,
            allow_204,
            allow_206,
            keep_alive,
        )
        self._head = head
        self._keep_alive = keep_alive and not self._close_requested
        self._ours = _Ours.WAIT
        self._discard = False
        if has_body:
            self._their = _Their.BODY
            self._chunk = _Chunk.SIZE
            self._in_preview = preview is not None
            self._preview_bytes = 0
        else:
            self._their = _Their.HEAD_DONE
        return head

    def _next_body_event(self) -> Event:
        while True:
            state = self._chunk
            if state is _Chunk.DATA:
                available = len(self._buf) - self._pos
                if available == 0:
                    return self._need_body_data()
                take = min(available, self._remaining)
                start = self._pos
                self._pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk = _Chunk.CRLF
                if self._in_preview:
                    self._preview_bytes += take
                    if self._preview_bytes > self._head_preview():
                        raise ProtocolError("more preview bytes than the Preview header said")
                if self._discard:
                    continue
                extensions, self._extensions = self._extensions, ()
                data = bytes(self._buf[start : self._pos])
                self._compact()
                return BodyChunk(data, extensions)
            if state is _Chunk.SIZE:
                # The last chunk with no extension but ieof and no trailer: what ends every
                # preview (Squid sends ``Preview: 0``) and most bodies. Skip the general parse.
                if self._buf.startswith(b"0\r\n\r\n", self._pos):
                    self._pos += 5
                    self._last_chunk_ieof = False
                    return self._end_of_chunks()
                if self._buf.startswith(b"0; ieof\r\n\r\n", self._pos):
                    self._pos += 11
                    self._last_chunk_ieof = True
                    return self._end_of_chunks()
                line = self._take_line(MAX_CHUNK_LINE, "chunk size line")
                if line is None:
                    return self._need_body_data()
                size, extensions = _parse_chunk_line(line)
                if size:
                    self._remaining = size
                    self._extensions = extensions
                    self._chunk = _Chunk.DATA
                    continue
                self._last_chunk_ieof = any(name == "ieof" for name, _ in extensions)
                self._trailer_bytes = 0
                self._chunk = _Chunk.TRAILER
                continue
            if state is _Chunk.CRLF:
                if len(self._buf) - self._pos < 2:
                    return self._need_body_data()
                if self._buf[self._pos : self._pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self._pos += 2
                self._chunk = _Chunk.SIZE
                continue
            # TRAILER: header lines after the last chunk, up to an empty line.
            line = self._take_line(MAX_CHUNK_LINE, "chunk trailer")
            if line is None:
                return self._need_body_data()
            if line:
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > self.max_head_size:
                    raise ProtocolError("chunk trailers too large")
                continue
            self._chunk = _Chunk.SIZE
            return self._end_of_chunks()

    def _head_preview(self) -> int:
        head = self._head
        return head.preview if head is not None and head.preview is not None else 0

    def _end_of_chunks(self) -> Event:
        if self._in_preview:
            self._in_preview = False
            ieof = self._last_chunk_ieof
            if self._discard:
                # Our final response already went out: the client sends nothing more.
                self._finish_theirs()
                return self._next_event()
            if ieof:
                self._their = _Their.HEAD_DONE  # EndOfMessage comes next
            else:
                self._their = _Their.PREVIEW_WAIT
            return PREVIEW_END_IEOF if ieof else PREVIEW_END
        if self._discard:
            self._finish_theirs()
            return self._next_event()
        self._their = _Their.DONE
        self._maybe_next_cycle()
        return END_OF_MESSAGE

    def _need_body_data(self) -> Event:
        if self._eof:
            raise ProtocolError("connection closed in the middle of a body")
        return NEED_DATA

    def _take_line(self, limit: int, what: str) -> bytes | None:
        buf = self._buf
        end = buf.find(b"\r\n", self._pos, self._pos + limit + 2)
        if end < 0:
            if len(buf) - self._pos > limit:
                raise ProtocolError(f"{what} too long")
            return None
        line = bytes(buf[self._pos : end])
        self._pos = end + 2
        return line

    # ---- sending --------------------------------------------------------------------------

    def _require_response_pending(self, what: str) -> RequestHead:
        if self._ours not in (_Ours.WAIT, _Ours.CONTINUED) or self._head is None:
            raise RuntimeError(f"cannot send {what}: no request waiting for a response")
        return self._head

    def send_options(self, reply: OptionsReply) -> bytes:
        """The OPTIONS response (only for an OPTIONS request)."""
        head = self._require_response_pending("an OPTIONS response")
        if head.method != "OPTIONS":
            raise RuntimeError("send_options for a non-OPTIONS request")
        close = not self._keep_alive
        self._finish_ours()
        return serialize_options(reply, close=close)

    def send_continue(self) -> bytes:
        """``100 Continue``: ask for the rest of the body after a preview (section 4.5)."""
        if self._their is not _Their.PREVIEW_WAIT or self._ours is not _Ours.WAIT:
            raise RuntimeError("100 Continue is only allowed after a preview without ieof")
        self._their = _Their.BODY
        self._ours = _Ours.CONTINUED
        return serialize_continue()

    def send_no_content(self, istag: str) -> bytes:
        """``204 No Content`` (``istag`` quoted). Check `can_send_no_content` first."""
        self._require_response_pending("204")
        if not self.can_send_no_content:
            raise RuntimeError("204 needs a preview or Allow: 204")
        close = not self._keep_alive
        self._finish_ours()
        # The most frequent reply by far, and always the same bytes for one ISTag.
        key = (istag, close)
        reply = self._no_content_cache.get(key)
        if reply is None:
            reply = self._no_content_cache[key] = serialize_no_content(istag, close=close)
        return reply

    def send_partial_content(
        self, istag: str, *, req_hdr: bytes | None = None, res_hdr: bytes | None = None
    ) -> bytes:
        """``206`` with new HTTP head(s); the client reuses its own body (needs ``Allow: 206``)."""
        head = self._require_response_pending("206")
        if not head.allow_206 or not head.has_body:
            raise RuntimeError("206 needs Allow: 206 and a request with a body")
        close = not self._keep_alive
        self._finish_ours()
        return serialize_partial_content(istag, req_hdr=req_hdr, res_hdr=res_hdr, close=close)

    def send_response(
        self,
        istag: str,
        *,
        req_hdr: bytes | None = None,
        res_hdr: bytes | None = None,
        body: BodyKind = BodyKind.NULL_BODY,
        status: int = 200,
    ) -> bytes:
        """A ``200`` head with the adapted HTTP head(s). With a body, `send_body`/`send_end`
        must follow; the response can stream while the request body still arrives."""
        self._require_response_pending(f"{status}")
        close = not self._keep_alive
        data = serialize_response_head(
            status, istag, req_hdr=req_hdr, res_hdr=res_hdr, body=body, close=close
        )
        if body is BodyKind.NULL_BODY:
            self._finish_ours()
        else:
            self._ours = _Ours.SENDING_BODY
        return data

    def send_body(self, data: bytes) -> bytes:
        if self._ours is not _Ours.SENDING_BODY:
            raise RuntimeError("send_body without a response body in progress")
        return serialize_chunk(data)

    def send_end(self) -> bytes:
        if self._ours is not _Ours.SENDING_BODY:
            raise RuntimeError("send_end without a response body in progress")
        self._finish_ours()
        return serialize_last_chunk()

    def send_error(self, status: int, *, istag: str | None = None) -> bytes:
        """An error response with ``null-body``.

        After a `ProtocolError` (or with no request in progress) the connection must then be
        closed. For a well-formed request (404, 405, 500) the rest of its body is skipped and
        the connection stays usable.
        """
        resync = self._their not in (_Their.ERROR, _Their.CLOSED, _Their.IDLE) and self._ours in (
            _Ours.WAIT,
            _Ours.CONTINUED,
        )
        if not resync:
            self._ours = _Ours.MUST_CLOSE
            return serialize_error(status, istag=istag, close=True)
        close = not self._keep_alive
        self._finish_ours()
        return serialize_error(status, istag=istag, close=close)

    # ---- cycle bookkeeping ----------------------------------------------------------------

    def _finish_ours(self) -> None:
        self._ours = _Ours.DONE
        if self._their is _Their.PREVIEW_WAIT:
            # A final answer to a preview: the client sends no more of this body.
            self._finish_theirs()
            return
        if self._their in (_Their.BODY, _Their.HEAD_DONE):
            if self._their is _Their.HEAD_DONE:
                # Nothing left to read but the EndOfMessage marker: drop it.
                self._finish_theirs()
                return
            self._discard = True
            return
        self._maybe_next_cycle()

    def _finish_theirs(self) -> None:
        self._their = _Their.DONE
        self._maybe_next_cycle()

    def _maybe_next_cycle(self) -> None:
        if self._their is not _Their.DONE or self._ours is not _Ours.DONE:
            return
        self._head = None
        self._discard = False
        if self._keep_alive:
            self._their = _Their.IDLE
            self._ours = _Ours.IDLE
            self._compact()
        else:
            self._ours = _Ours.MUST_CLOSE


RequestLine = tuple[str, str, str, str]  # method, uri, service path, query


def _parse_request_line(line: str) -> RequestLine:
    parts = line.split(" ")
    if len(parts) != 3:
        raise ProtocolError(f"malformed ICAP request line {line[:80]!r}")
    method, uri, version = parts
    if version != ICAP_VERSION:
        if version.startswith("ICAP/"):
            raise ProtocolError(f"unsupported version {version[:20]!r}", status_hint=505)
        raise ProtocolError(f"malformed ICAP request line {line[:80]!r}")
    if method not in METHODS:
        if _is_token(method):
            raise ProtocolError(f"method {method[:20]!r} not implemented", status_hint=501)
        raise ProtocolError(f"malformed ICAP request line {line[:80]!r}")
    service, query = _split_icap_uri(uri)
    return method, uri, service, query


def _parse_icap_fields(
    block: bytes, method: str, max_preview: int
) -> tuple[Headers, Encapsulated, int | None, bool, bool, bool]:
    """(headers, encapsulated, preview, allow 204, allow 206, keep-alive) from the ICAP fields
    (``block``: lines each ending with CRLF)."""
    scanned = _native.icap_fields(block, max_preview, MAX_HEADERS) if _native is not None else None
    if scanned is None:
        scanned = _scan_icap_fields(block, max_preview)
    text, encapsulated_value, preview, allow_204, allow_206, keep_alive = scanned
    if encapsulated_value is None:
        if method != "OPTIONS":
            raise ProtocolError(f"{method} without an Encapsulated header")
        encapsulated = NO_ENCAPSULATION
    else:
        encapsulated = parse_encapsulated(encapsulated_value, method)
    return Headers._lazy(text), encapsulated, preview, allow_204, allow_206, keep_alive


IcapFields = tuple[str, str | None, int | None, bool, bool, bool]


def _scan_icap_fields(block: bytes, max_preview: int) -> IcapFields:
    """The reference scan of the ICAP fields (the native `icap_fields` returns the same, or
    None for anything this reports): (block as text, Encapsulated value, Preview, allow 204,
    allow 206, keep-alive)."""
    if _FIELD_BLOCK_B.fullmatch(block) is None:
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


def _parse_chunk_line(line: bytes) -> tuple[int, tuple[tuple[str, str | None], ...]]:
    text = line.decode("latin-1")
    size_text, _, ext_text = text.partition(";")
    size_text = size_text.strip(" \t")
    if _HEX.fullmatch(size_text) is None:
        raise ProtocolError(f"bad chunk size line {text[:40]!r}")
    size = int(size_text, 16)
    if not ext_text:
        return size, ()
    extensions: list[tuple[str, str | None]] = []
    for part in ext_text.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip(" \t").lower()
        if not _is_token(name):
            raise ProtocolError(f"bad chunk extension {part[:40]!r}")
        if sep:
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            extensions.append((name, value))
        else:
            extensions.append((name, None))
    return size, tuple(extensions)
