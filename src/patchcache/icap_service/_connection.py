"""`IcapConnection`: the server side of one ICAP connection, without I/O.

It cuts the input into heads and chunks (the parsers are in _readers.py), emits the events of
_events.py, keeps the states of _state.py, and returns the bytes of _writers.py from its
``send_*`` methods after checking that the response is allowed now. protocol.py's docstring
describes the protocol it implements.
"""

from __future__ import annotations

from patchcache.errors import ProtocolError
from patchcache.icap_service._abnf import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_PREVIEW,
    ICAP_VERSION,
    MAX_CHUNK_LINE,
)
from patchcache.icap_service._encapsulated import NULL_BODY, BodyKind
from patchcache.icap_service._events import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    PREVIEW_END,
    PREVIEW_END_IEOF,
    BodyChunk,
    Event,
    RequestHead,
    make_request_head,
)
from patchcache.icap_service._readers import (
    RequestLine,
    parse_chunk_line,
    parse_http_request_head,
    parse_http_response_head,
    parse_icap_fields,
    parse_request_line,
)
from patchcache.icap_service._state import Chunk, Ours, Their
from patchcache.icap_service._writers import (
    OptionsReply,
    serialize_chunk,
    serialize_continue,
    serialize_error,
    serialize_last_chunk,
    serialize_no_content,
    serialize_options,
    serialize_partial_content,
    serialize_response_head,
)


class IcapConnection:
    """Server side of one ICAP connection. See protocol.py's docstring for the protocol."""

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
        self._their = Their.IDLE
        self._ours = Ours.IDLE
        self._head: RequestHead | None = None
        self._keep_alive = True
        # Body reading.
        self._chunk = Chunk.SIZE
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
        return self._ours is Ours.MUST_CLOSE or self._their in (Their.ERROR, Their.CLOSED)

    @property
    def idle(self) -> bool:
        """True between requests with nothing buffered (safe to close for a shutdown)."""
        return self._their is Their.IDLE and self._ours is Ours.IDLE and self._pos >= len(self._buf)

    @property
    def reading_head(self) -> bool:
        """True while part of a next request head is buffered but not yet complete (an adapter
        bounds how long a client may take to finish a head)."""
        return self._their is Their.IDLE and self._ours is Ours.IDLE and self._pos < len(self._buf)

    @property
    def awaiting_response(self) -> bool:
        """True when a request head was seen and our final response has not been completed."""
        return self._ours in (Ours.WAIT, Ours.CONTINUED, Ours.SENDING_BODY)

    @property
    def response_started(self) -> bool:
        """True while a ``200`` with a body is being streamed (an error can no longer be sent)."""
        return self._ours is Ours.SENDING_BODY

    @property
    def can_send_no_content(self) -> bool:
        """Whether 204 is allowed now: after a preview, or with ``Allow: 204`` (section 4.6)."""
        head = self._head
        if head is None or self._ours not in (Ours.WAIT, Ours.CONTINUED):
            return False
        return head.allow_204 or (self._ours is Ours.WAIT and head.preview is not None)

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
            self._their = Their.ERROR
            raise

    def _next_event(self) -> Event:
        their = self._their
        if their is Their.BODY:
            return self._next_body_event()
        if their is Their.IDLE:
            if self._ours is not Ours.IDLE:
                return PAUSED
            return self._next_head_event()
        if their is Their.HEAD_DONE:
            self._their = Their.DONE
            self._maybe_next_cycle()
            return END_OF_MESSAGE
        if their in (Their.DONE, Their.PREVIEW_WAIT):
            return PAUSED
        if their is Their.CLOSED:
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
                self._their = Their.CLOSED
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
            parsed = parse_request_line(line.decode("latin-1"))
            self._request_line = (line + b"\r\n", parsed)
            method, uri, service, query = parsed
        headers, encapsulated, preview, allow_204, allow_206, keep_alive = parse_icap_fields(
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
        has_body = encapsulated.body is not NULL_BODY
        if not has_body:
            preview = None
        head = make_request_head(
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
        self._ours = Ours.WAIT
        self._discard = False
        if has_body:
            self._their = Their.BODY
            self._chunk = Chunk.SIZE
            self._in_preview = preview is not None
            self._preview_bytes = 0
        else:
            self._their = Their.HEAD_DONE
        return head

    def _next_body_event(self) -> Event:
        while True:
            state = self._chunk
            if state is Chunk.DATA:
                available = len(self._buf) - self._pos
                if available == 0:
                    return self._need_body_data()
                take = min(available, self._remaining)
                start = self._pos
                self._pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk = Chunk.CRLF
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
            if state is Chunk.SIZE:
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
                size, extensions = parse_chunk_line(line)
                if size:
                    self._remaining = size
                    self._extensions = extensions
                    self._chunk = Chunk.DATA
                    continue
                self._last_chunk_ieof = any(name == "ieof" for name, _ in extensions)
                self._trailer_bytes = 0
                self._chunk = Chunk.TRAILER
                continue
            if state is Chunk.CRLF:
                if len(self._buf) - self._pos < 2:
                    return self._need_body_data()
                if self._buf[self._pos : self._pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self._pos += 2
                self._chunk = Chunk.SIZE
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
            self._chunk = Chunk.SIZE
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
                self._their = Their.HEAD_DONE  # EndOfMessage comes next
            else:
                self._their = Their.PREVIEW_WAIT
            return PREVIEW_END_IEOF if ieof else PREVIEW_END
        if self._discard:
            self._finish_theirs()
            return self._next_event()
        self._their = Their.DONE
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
        if self._ours not in (Ours.WAIT, Ours.CONTINUED) or self._head is None:
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
        if self._their is not Their.PREVIEW_WAIT or self._ours is not Ours.WAIT:
            raise RuntimeError("100 Continue is only allowed after a preview without ieof")
        self._their = Their.BODY
        self._ours = Ours.CONTINUED
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
            self._ours = Ours.SENDING_BODY
        return data

    def send_body(self, data: bytes) -> bytes:
        if self._ours is not Ours.SENDING_BODY:
            raise RuntimeError("send_body without a response body in progress")
        return serialize_chunk(data)

    def send_end(self) -> bytes:
        if self._ours is not Ours.SENDING_BODY:
            raise RuntimeError("send_end without a response body in progress")
        self._finish_ours()
        return serialize_last_chunk()

    def send_error(self, status: int, *, istag: str | None = None) -> bytes:
        """An error response with ``null-body``.

        After a `ProtocolError` (or with no request in progress) the connection must then be
        closed. For a well-formed request (404, 405, 500) the rest of its body is skipped and
        the connection stays usable.
        """
        resync = self._their not in (Their.ERROR, Their.CLOSED, Their.IDLE) and self._ours in (
            Ours.WAIT,
            Ours.CONTINUED,
        )
        if not resync:
            self._ours = Ours.MUST_CLOSE
            return serialize_error(status, istag=istag, close=True)
        close = not self._keep_alive
        self._finish_ours()
        return serialize_error(status, istag=istag, close=close)

    # ---- cycle bookkeeping ----------------------------------------------------------------

    def _finish_ours(self) -> None:
        self._ours = Ours.DONE
        if self._their is Their.PREVIEW_WAIT:
            # A final answer to a preview: the client sends no more of this body.
            self._finish_theirs()
            return
        if self._their in (Their.BODY, Their.HEAD_DONE):
            if self._their is Their.HEAD_DONE:
                # Nothing left to read but the EndOfMessage marker: drop it.
                self._finish_theirs()
                return
            self._discard = True
            return
        self._maybe_next_cycle()

    def _finish_theirs(self) -> None:
        self._their = Their.DONE
        self._maybe_next_cycle()

    def _maybe_next_cycle(self) -> None:
        if self._their is not Their.DONE or self._ours is not Ours.DONE:
            return
        self._head = None
        self._discard = False
        if self._keep_alive:
            self._their = Their.IDLE
            self._ours = Ours.IDLE
            self._compact()
        else:
            self._ours = Ours.MUST_CLOSE
