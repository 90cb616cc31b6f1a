"""The events `IcapConnection.next_event` returns, one class each.

Per request: `RequestHead`, zero or more `BodyChunk`, then `EndOfMessage`; with a preview,
`PreviewEnd` after the preview's chunks. `NeedData` (feed more bytes) and `Paused` (the client
waits for our answer) are not part of a request; `ConnectionClosed` ends the connection. The
events without fields are used through their one instance (`NEED_DATA`, `PAUSED`...).
"""

from __future__ import annotations

from dataclasses import dataclass

from patchcache.icap_service import _native
from patchcache.icap_service._encapsulated import Encapsulated
from patchcache.icap_service._headers import Headers, HttpRequestHead, HttpResponseHead


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


make_request_head = _native.maker(
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
