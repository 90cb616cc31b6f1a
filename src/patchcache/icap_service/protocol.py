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
per-request objects; the Python code stays the reference: the scanner answers only for input
it accepts, with what the Python twin returns (tests hold the two equal), and anything else
comes back to Python to be parsed and reported. A RESPMOD costs about 7 us with the scanner,
20 us without (bench/icap_core_cost.py).

Where each piece lives (this module only gathers the public names):

* ``_abnf.py``: grammar (token, field, chunk size) and limits, ICAP version, methods, reasons;
* ``_headers.py``: `Headers`, `HttpRequestHead`, `HttpResponseHead`, `edit_http_head`;
* ``_encapsulated.py``: `BodyKind`, `Encapsulated`, `parse_encapsulated`;
* ``_events.py``: `RequestHead`, `BodyChunk`, `PreviewEnd`, `EndOfMessage`, `NeedData`,
  `Paused`, `ConnectionClosed`;
* ``_readers.py``: parsers of the request line, ICAP fields, HTTP heads and chunk lines;
* ``_writers.py``: `serialize_*`, `format_istag`, `OptionsReply`;
* ``_state.py``: the states of both sides and the `TRANSITIONS` table;
* ``_connection.py``: `IcapConnection`, the state machine;
* ``_native.py``: the one place that chooses the native scanner (``_scan.c``) or Python.
"""

from __future__ import annotations

from patchcache.icap_service._abnf import DEFAULT_MAX_HEAD_SIZE, DEFAULT_MAX_PREVIEW
from patchcache.icap_service._connection import IcapConnection
from patchcache.icap_service._encapsulated import BodyKind, Encapsulated, parse_encapsulated
from patchcache.icap_service._events import (
    NEED_DATA,
    PAUSED,
    BodyChunk,
    ConnectionClosed,
    EndOfMessage,
    Event,
    NeedData,
    Paused,
    PreviewEnd,
    RequestHead,
)
from patchcache.icap_service._headers import (
    Headers,
    HttpRequestHead,
    HttpResponseHead,
    edit_http_head,
)
from patchcache.icap_service._readers import parse_http_request_head, parse_http_response_head
from patchcache.icap_service._writers import (
    OptionsReply,
    format_istag,
    serialize_chunk,
    serialize_continue,
    serialize_error,
    serialize_last_chunk,
    serialize_no_content,
    serialize_options,
    serialize_partial_content,
    serialize_response_head,
)

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
