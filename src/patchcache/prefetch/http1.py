"""A minimal HTTP/1.1 client core: serialize one request, parse one response. No I/O.

Theory of operation, in the manner of h11: the prefetcher's socket code feeds whatever bytes it
received to `ResponseParser.feed` and gets back frozen events: one `ResponseHead`, any number of
`BodyData`, then `EndOfMessage`. `feed_eof` reports that the peer closed the connection. All
framing decisions follow RFC 9112 (HTTP/1.1):

- section 2.2 / 4: the status line `HTTP/1.x SP 3DIGIT SP reason CRLF`; a bare LF is accepted as
  a line end (2.2 allows it);
- section 5: header fields, no obsolete line folding (5.2: a server must reject it, a client may
  too, and we do: it is never sent by Squid);
- section 6.3: the body length. Responses to HEAD and 1xx/204/304 responses have no body; else
  `Transfer-Encoding` ending in `chunked` (7.1) wins over `Content-Length`; a `Content-Length`
  with differing values is an error; without either, the body runs until the connection closes;
- interim 1xx responses (RFC 9110 15.2) are skipped.

Anything malformed raises `patchcache.errors.ProtocolError` (status hint 502: the proxy sent
it); nothing else escapes. Sizes are bounded: the head may not exceed `MAX_HEAD` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from patchcache.errors import ProtocolError

MAX_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 4096
_STATUS_RE = re.compile(rb"^HTTP/1\.([0-9]) ([0-9]{3})(?: ([^\r\n]*))?$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE_RE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_CHUNK_SIZE_RE = re.compile(rb"^([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?$")
_CONTENT_RANGE_RE = re.compile(r"^bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)$")


def _error(message: str) -> ProtocolError:
    return ProtocolError(message, status_hint=502)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status line and header fields, in order, names as received."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


@dataclass(frozen=True, slots=True)
class BodyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The body is complete. `closed` is True when its end was the connection closing."""

    closed: bool = False


Event = ResponseHead | BodyData | EndOfMessage


class _Stage(Enum):
    HEAD = "head"
    LENGTH = "length"
    CHUNK_SIZE = "chunk-size"
    CHUNK_DATA = "chunk-data"
    CHUNK_END = "chunk-end"
    TRAILERS = "trailers"
    UNTIL_CLOSE = "until-close"
    DONE = "done"


class ResponseParser:
    """Parses one response to a request with method `method`."""

    def __init__(self, method: str = "GET") -> None:
        self._head_only = method.upper() == "HEAD"
        self._buf = bytearray()
        self._stage = _Stage.HEAD
        self._remaining = 0
        self.head: ResponseHead | None = None

    @property
    def done(self) -> bool:
        return self._stage is _Stage.DONE

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data`; return the events it completes."""
        if self._stage is _Stage.DONE:
            if data:
                raise _error("bytes after the end of the response")
            return []
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def feed_eof(self) -> list[Event]:
        """The connection closed. Ends a read-until-close body; anything else is truncated."""
        if self._stage is _Stage.UNTIL_CLOSE:
            self._stage = _Stage.DONE
            return [EndOfMessage(closed=True)]
        if self._stage is _Stage.DONE:
            return []
        if self._stage is _Stage.HEAD:
            raise _error("connection closed before a complete response head")
        raise _error(f"connection closed in the middle of the body ({self._stage.value})")

    # ------------------------------------------------------------------------------ stages

    def _step(self, events: list[Event]) -> bool:
        """Make progress on the buffer; False when more bytes are needed."""
        stage = self._stage
        if stage is _Stage.HEAD:
            return self._parse_head(events)
        if stage is _Stage.LENGTH:
            if not self._buf:
                return False
            take = bytes(self._buf[: self._remaining])
            del self._buf[: len(take)]
            self._remaining -= len(take)
            events.append(BodyData(take))
            if self._remaining == 0:
                self._finish(events)
            return True
        if stage is _Stage.UNTIL_CLOSE:
            if self._buf:
                events.append(BodyData(bytes(self._buf)))
                self._buf.clear()
            return False
        if stage is _Stage.CHUNK_SIZE:
            line = self._line(_MAX_CHUNK_LINE, "chunk size line")
            if line is None:
                return False
            found = _CHUNK_SIZE_RE.match(line)
            if found is None:
                raise _error(f"bad chunk size line {line[:40]!r}")
            self._remaining = int(found.group(1), 16)
            self._stage = _Stage.CHUNK_DATA if self._remaining else _Stage.TRAILERS
            return True
        if stage is _Stage.CHUNK_DATA:
            if not self._buf:
                return False
            take = bytes(self._buf[: self._remaining])
            del self._buf[: len(take)]
            self._remaining -= len(take)
            events.append(BodyData(take))
            if self._remaining == 0:
                self._stage = _Stage.CHUNK_END
            return True
        if stage is _Stage.CHUNK_END:
            line = self._line(2, "chunk end")
            if line is None:
                return False
            if line:
                raise _error("chunk data longer than its size")
            self._stage = _Stage.CHUNK_SIZE
            return True
        if stage is _Stage.TRAILERS:
            line = self._line(MAX_HEAD, "trailer")
            if line is None:
                return False
            if not line:
                self._finish(events)
            return True
        return False  # DONE: leftover bytes are checked by feed()

    def _finish(self, events: list[Event]) -> None:
        self._stage = _Stage.DONE
        events.append(EndOfMessage())
        if self._buf:
            raise _error("bytes after the end of the response")

    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > limit:
                raise _error(f"{what} too long")
            return None
        if end > limit:
            raise _error(f"{what} too long")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _parse_head(self, events: list[Event]) -> bool:
        end, sep_len = _head_end(self._buf)
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise _error(f"response head longer than {MAX_HEAD} bytes")
            return False
        if end > MAX_HEAD:
            raise _error(f"response head longer than {MAX_HEAD} bytes")
        block = bytes(self._buf[:end])
        del self._buf[: end + sep_len]
        head = _parse_head_block(block)
        if 100 <= head.status < 200:
            if head.status == 101:
                raise _error("unexpected 101 Switching Protocols")
            return True  # interim response: the real one follows
        self.head = head
        events.append(head)
        self._choose_framing(head, events)
        return True

    def _choose_framing(self, head: ResponseHead, events: list[Event]) -> None:
        if self._head_only or head.status in (204, 304):
            self._finish(events)
            return
        codings = [
            part.strip().lower()
            for value in head.get_all("Transfer-Encoding")
            for part in value.split(",")
            if part.strip()
        ]
        if codings:
            if codings[-1] != "chunked":
                self._stage = _Stage.UNTIL_CLOSE  # RFC 9112 6.3 item 4 (response)
                return
            if codings != ["chunked"]:
                raise _error(f"unsupported transfer coding {', '.join(codings)}")
            self._stage = _Stage.CHUNK_SIZE
            return
        length = content_length(head)
        if length is None:
            self._stage = _Stage.UNTIL_CLOSE
        elif length == 0:
            self._finish(events)
        else:
            self._remaining = length
            self._stage = _Stage.LENGTH


def _head_end(buf: bytearray) -> tuple[int, int]:
    """Index of the blank line ending the head and the separator's length, or (-1, 0)."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    candidates = [(pos, n) for pos, n in ((crlf, 4), (lf, 2)) if pos >= 0]
    if not candidates:
        return -1, 0
    return min(candidates)


def _parse_head_block(block: bytes) -> ResponseHead:
    lines = [line[:-1] if line.endswith(b"\r") else line for line in block.split(b"\n")]
    found = _STATUS_RE.match(lines[0])
    if found is None:
        raise _error(f"bad status line {lines[0][:60]!r}")
    status = int(found.group(2))
    reason = (found.group(3) or b"").decode("latin-1")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise _error("obsolete line folding in a header field")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_RE.match(name):
            raise _error(f"bad header line {line[:60]!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE_RE.match(value):
            raise _error(f"control characters in header {name[:40]!r}")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return ResponseHead(status, reason, tuple(headers))


def content_length(head: ResponseHead) -> int | None:
    """The Content-Length, or None when absent; differing or bad values are an error."""
    values = {part.strip() for value in head.get_all("Content-Length") for part in value.split(",")}
    if not values:
        return None
    if len(values) != 1:
        raise _error(f"conflicting Content-Length values {sorted(values)}")
    (text,) = values
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _error(f"bad Content-Length {text[:40]!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class ContentRange:
    """`Content-Range: bytes first-last/total` (RFC 9110 14.4); total None for `*`."""

    first: int
    last: int
    total: int | None


def parse_content_range(value: str) -> ContentRange:
    found = _CONTENT_RANGE_RE.match(value.strip())
    if found is None:
        raise _error(f"bad Content-Range {value[:60]!r}")
    first, last = int(found.group(1)), int(found.group(2))
    total = None if found.group(3) == "*" else int(found.group(3))
    if last < first or (total is not None and last >= total):
        raise _error(f"inconsistent Content-Range {value[:60]!r}")
    return ContentRange(first, last, total)


def build_request(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """Serialize a request without a body. Refuses CR, LF and spaces where they would split."""
    if not _TOKEN_RE.match(method.encode("ascii", "replace")):
        raise ValueError(f"bad method {method!r}")
    if not target or any(c in target for c in " \r\n\0") or not target.isascii():
        raise ValueError(f"bad request target {target!r}")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if not _TOKEN_RE.match(name.encode("ascii", "replace")) or any(
            c in value for c in "\r\n\0"
        ):
            raise ValueError(f"bad header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
