"""One HTTP/1.1 request and its response, with h11 doing the protocol. No I/O here.

h11 (https://h11.readthedocs.io) parses and frames the messages by RFC 9112: status line,
header fields (obsolete line folding is unfolded, as 5.2 asks of a user agent), the body length
(no body for HEAD, 1xx, 204 and 304; `chunked` over `Content-Length`; differing
`Content-Length` values refused; otherwise until the connection closes). This module is the thin
layer the prefetcher needs around it:

- `Exchange` serializes one request (h11 refuses CR, LF and other bytes that would split it:
  `ValueError`) and turns the bytes of its response into frozen events: one `ResponseHead`, any
  number of `BodyData`, then `EndOfMessage`. Interim 1xx responses are skipped; a 101 is an
  error (the prefetcher never asks to upgrade).
- Errors: whatever h11 refuses in a response, a truncated response and bytes after its end
  raise `patchcache.errors.ProtocolError` (status hint 502: the proxy sent it); nothing else
  escapes. The head may not exceed `MAX_HEAD` bytes.
- `parse_content_range` and `content_length` read the two fields the fill checks.

The sockets are in `fetch.py` (asyncio streams, timeouts, the throttle).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import h11

from patchcache.errors import ProtocolError

MAX_HEAD = 64 * 1024
# h11 lets control characters other than NUL through in field values; values end up in log lines
# and records (X-Squid-Error, Content-Type), so they are refused here (RFC 9110 5.5).
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
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
    data: bytes | bytearray


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The body is complete. `closed` is True when its end was the connection closing."""

    closed: bool = False


Event = ResponseHead | BodyData | EndOfMessage


class Exchange:
    """One request (`request`: its bytes) and the parse of its response."""

    def __init__(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        try:
            head = self._conn.send(h11.Request(method=method, target=target, headers=list(headers)))
            end = self._conn.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, UnicodeError) as exc:
            raise ValueError(f"bad request {method!r} {target[:60]!r}: {exc}") from None
        self.request: bytes = (head or b"") + (end or b"")
        self.head: ResponseHead | None = None
        self._eof = False
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data` received from the peer; return the events it completes."""
        if self._done:
            if data:
                raise _error("bytes after the end of the response")
            return []
        if not data:
            return []  # to h11, no bytes means the peer closed: that is feed_eof
        self._conn.receive_data(data)
        return self._events()

    def feed_eof(self) -> list[Event]:
        """The peer closed. Ends a read-until-close body; anything else is truncated."""
        if self._done:
            return []
        self._eof = True
        self._conn.receive_data(b"")
        return self._events()

    def _events(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._explain(exc) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise _error("unexpected 101 Switching Protocols")
                continue  # interim response: the real one follows
            if isinstance(event, h11.Response):
                self.head = _head(event)
                events.append(self.head)
            elif isinstance(event, h11.Data):
                events.append(BodyData(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                events.append(EndOfMessage(closed=self._eof))
                if self._conn.trailing_data[0]:
                    raise _error("bytes after the end of the response")
                return events
            else:  # ConnectionClosed before any response
                raise _error("connection closed before a complete response head")

    def _explain(self, exc: h11.RemoteProtocolError) -> ProtocolError:
        if self._eof and self.head is None:
            return _error("connection closed before a complete response head")
        if self._eof:
            return _error(f"connection closed in the middle of the body ({exc})")
        if self.head is None and exc.error_status_hint == 431:
            return _error(f"response head longer than {MAX_HEAD} bytes")
        return _error(str(exc))


def _head(response: h11.Response) -> ResponseHead:
    headers: list[tuple[str, str]] = []
    for name, value in response.headers.raw_items():
        if _BAD_VALUE_RE.search(value):
            raise _error(f"control characters in header {name[:40]!r}")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return ResponseHead(response.status_code, response.reason.decode("latin-1"), tuple(headers))


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
