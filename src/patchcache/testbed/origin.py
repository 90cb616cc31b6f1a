"""A throwaway HTTP/1.1 origin server on loopback that counts the body bytes it sends.

Theory of operation: the whole point of patchcache is upstream bytes, so the testbed measures
them where they are spent, at the origin (Squid's access.log undercounts, see
docs/squid-behaviour.md). Every registered object has deterministic content
(:mod:`patchcache.testbed.content`); a request is looked up by path alone (the query string, e.g.
Delivery Optimization's per-client ``?P1=..``, and the Host header are recorded but ignored), so
every mapped update host name and URL variant reaches the same object.

Responses follow RFC 9110: a single byte range (``bytes=a-b``, ``a-``, ``-n``, section 14.1.2)
is answered ``206`` with ``Content-Range``; an unsatisfiable one ``416`` with
``Content-Range: bytes */SIZE``; multiple ranges or a malformed header are ignored (``200``,
which section 14.2 allows); ``If-Range`` (13.1.5), ``If-None-Match`` and ``If-Modified-Since``
are honoured so Squid's revalidations behave. :func:`plan_response` decides all of that without
I/O; the handler only writes the plan.

Bytes are counted as the kernel accepts them (``socket.send`` return values), so a client that
disconnects early counts only what was sent, up to what the socket buffers held.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, cast

from patchcache.errors import StateError
from patchcache.testbed.content import (
    BLOCK,
    ContentSource,
    CorruptedContent,
    PatternContent,
    as_source,
    content_sha1,
    digest_name,
    iter_content,
)
from patchcache.testbed.lifecycle import StartStop
from patchcache.testbed.ports import LOOPBACK

# Old enough that Squid's default refresh_pattern (20% of age, at most 3 days) keeps it fresh.
DEFAULT_LAST_MODIFIED: Final = "Mon, 01 Jan 2024 00:00:00 GMT"
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first..last`` already clipped to the object."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """The Range header was valid but selects nothing (answer 416)."""


UNSATISFIABLE: Final = Unsatisfiable()


def resolve_range(header: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """Decide what a Range header selects from an object of ``size`` bytes.

    ``None`` means "serve the whole object" (no header, another unit, several ranges, or bad
    syntax: RFC 9110 lets a server ignore those).
    """
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    first_text, dash, last_text = spec.partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not _digits(first_text, allow_empty=True) or not _digits(last_text, True):
        return None
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(first_text)
    if last_text:
        last = int(last_text)
        if last < first:
            return None
    else:
        last = size - 1
    if first >= size:
        return UNSATISFIABLE
    return ByteRange(first, min(last, size - 1))


def _digits(text: str, allow_empty: bool) -> bool:
    return (not text and allow_empty) or (text.isascii() and text.isdigit())


@dataclass(frozen=True, slots=True)
class OriginObject:
    """One object the origin serves. ``etag``/``last_modified`` None means the header is absent."""

    path: str
    content: ContentSource
    etag: str | None
    last_modified: str | None
    chunked: bool = False
    cache_control: str | None = None
    content_type: str = DEFAULT_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    ranges: bool = True
    status: int = 200

    @property
    def size(self) -> int:
        return self.content.size

    def sha1(self) -> str:
        """SHA-1 of the bytes actually served."""
        return content_sha1(self.content)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """What to answer: status, headers, and the body span ``[first, end)`` (empty: no body)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    first: int = 0
    end: int = 0
    chunked: bool = False


def _etag_matches(header: str, etag: str | None, *, weak: bool) -> bool:
    if etag is None:
        return False
    if header.strip() == "*":
        return True
    mine = etag.removeprefix("W/")
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        elif not weak and etag.startswith("W/"):
            continue
        if tag == mine:
            return True
    return False


def _not_modified_since(last_modified: str | None, header: str) -> bool:
    if last_modified is None:
        return False
    try:
        ims = email.utils.parsedate_to_datetime(header)
        lm = email.utils.parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False
    return lm <= ims


def _if_range_allows(header: str, obj: OriginObject) -> bool:
    header = header.strip()
    if header.startswith(('"', "W/")):
        return _etag_matches(header, obj.etag, weak=False)
    return obj.last_modified is not None and header == obj.last_modified


def plan_response(
    obj: OriginObject,
    *,
    range_header: str | None = None,
    if_range: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
) -> ResponsePlan:
    """Decide the answer to a GET/HEAD for ``obj`` (a HEAD gets the same headers, no body)."""
    validators: list[tuple[str, str]] = []
    if obj.etag is not None:
        validators.append(("ETag", obj.etag))
    if obj.last_modified is not None:
        validators.append(("Last-Modified", obj.last_modified))
    if obj.cache_control is not None:
        validators.append(("Cache-Control", obj.cache_control))
    common = (*validators, *obj.headers)

    if if_none_match is not None:
        if _etag_matches(if_none_match, obj.etag, weak=True):
            return ResponsePlan(304, common)
    elif if_modified_since is not None and _not_modified_since(
        obj.last_modified, if_modified_since
    ):
        return ResponsePlan(304, common)

    if obj.status != 200:
        # An error answer (404, 503...): its content is the body, whatever was asked.
        length = (("Content-Length", str(obj.size)),)
        return ResponsePlan(
            obj.status, (*length, ("Content-Type", obj.content_type), *common), 0, obj.size
        )
    if not obj.ranges or (if_range is not None and not _if_range_allows(if_range, obj)):
        range_header = None
    size = obj.size
    selected = resolve_range(range_header, size)
    accept = "bytes" if obj.ranges else "none"
    entity = (("Content-Type", obj.content_type), ("Accept-Ranges", accept), *common)
    if isinstance(selected, Unsatisfiable):
        return ResponsePlan(
            416, (("Content-Range", f"bytes */{size}"), ("Content-Length", "0"), *entity)
        )
    extra: tuple[tuple[str, str], ...] = ()
    if selected is None:
        status, first, end = 200, 0, size
    else:
        status, first, end = 206, selected.first, selected.last + 1
        extra = (("Content-Range", f"bytes {selected.first}-{selected.last}/{size}"),)
    length = (
        (("Transfer-Encoding", "chunked"),)
        if obj.chunked
        else (("Content-Length", str(end - first)),)
    )
    return ResponsePlan(status, (*extra, *length, *entity), first, end, obj.chunked)


def split_target(target: str) -> tuple[str, str | None]:
    """Split a request target (origin-form or absolute-form) into path and query."""
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        if sep and scheme.isalpha():
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
    path, sep, query = target.partition("?")
    path = path.partition("#")[0]
    return path or "/", (query if sep else None)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the origin answered (appended when the answer is finished or aborted)."""

    method: str
    path: str
    query: str | None
    host: str | None
    range: str | None
    headers: tuple[tuple[str, str], ...]
    status: int
    body_bytes: int
    completed: bool
    started: float
    finished: float


@dataclass(slots=True)
class _Counters:
    bytes_sent: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)


class Origin(StartStop):
    """A threaded origin on ``127.0.0.1`` with a free port; start/stop or use ``with``."""

    def __init__(
        self,
        host: str = LOOPBACK,
        *,
        sndbuf: int | None = None,
        connection_timeout: float = 120.0,
    ) -> None:
        self._host = host
        self._sndbuf = sndbuf
        self.connection_timeout = connection_timeout
        self._lock = threading.Condition()
        self._objects: dict[str, OriginObject] = {}
        self._throttles: dict[str, float] = {}
        self._inflight: dict[str, int] = {}
        self._counters = _Counters()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _OriginServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Origin:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _OriginServer((self._host, 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"testbed-origin-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            open_conns = list(self._connections)
        for conn in open_conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        self._server = None
        self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise StateError("origin is not running")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return self._host

    def url(
        self,
        path: str | OriginObject,
        *,
        host: str = LOOPBACK,
        query: str | None = None,
        with_port: bool = True,
    ) -> str:
        """``http://HOST:PORT/path[?query]``; ``with_port=False`` for a Squid whose cache_peer
        routes every request to this origin (real update URLs have no port)."""
        raw = path.path if isinstance(path, OriginObject) else path
        netloc = f"{host}:{self.port}" if with_port else host
        return f"http://{netloc}{raw}" + (f"?{query}" if query is not None else "")

    # -- objects ---------------------------------------------------------------------------

    def register(
        self,
        path: str,
        size: int | None = None,
        *,
        content: bytes | ContentSource | None = None,
        seed: int | str | bytes | None = None,
        etag: bool | str = True,
        last_modified: bool | str = True,
        chunked: bool = False,
        cache_control: str | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        throttle: float | None = None,
        headers: Mapping[str, str] | None = None,
        ranges: bool = True,
        status: int = 200,
    ) -> OriginObject:
        """Serve an object at ``path`` (any query string reaches it too).

        Content is ``content`` if given, else ``size`` pattern bytes from ``seed`` (default: the
        path). ``etag``/``last_modified``: True for a generated value, a string to set it, False
        to leave the header out. ``throttle`` limits its body to that many bytes per second.
        ``ranges=False`` ignores Range headers (always 200, ``Accept-Ranges: none``).
        ``status`` other than 200 answers every GET with that status and the content as its
        body (an error page, e.g. 404 or 503), with the validator and cache headers as given.
        """
        if not path.startswith("/"):
            raise ValueError(f"object path must start with '/': {path!r}")
        if content is None:
            if size is None:
                raise ValueError("register() needs a size or a content")
            source: ContentSource = PatternContent(size, path if seed is None else seed)
        else:
            source = as_source(content)
            if size is not None and size != source.size:
                raise ValueError(f"size {size} != content size {source.size}")
        obj = OriginObject(
            path=path,
            content=source,
            etag=self._make_etag(path, source) if etag is True else (etag or None),
            last_modified=(
                DEFAULT_LAST_MODIFIED if last_modified is True else (last_modified or None)
            ),
            chunked=chunked,
            cache_control=cache_control,
            content_type=content_type,
            headers=tuple((headers or {}).items()),
            ranges=ranges,
            status=status,
        )
        with self._lock:
            self._objects[path] = obj
            if throttle is None:
                self._throttles.pop(path, None)
            else:
                self._throttles[path] = float(throttle)
        return obj

    def register_digest_named(
        self,
        directory: str,
        size: int,
        *,
        seed: int | str | bytes | None = None,
        stem: str = "windows10.0-kb5034441-x64",
        suffix: str = ".cab",
        corrupt: bool = False,
        etag: bool | str = True,
        last_modified: bool | str = True,
        chunked: bool = False,
        cache_control: str | None = None,
        throttle: float | None = None,
    ) -> OriginObject:
        """Serve pattern content under ``DIRECTORY/STEM_<sha1>SUFFIX``.

        With ``corrupt=True`` the name carries the SHA-1 of the right content but one byte in
        the middle is served wrong, for digest-mismatch tests. Other keywords as in
        :meth:`register`.
        """
        good = PatternContent(size, directory + stem if seed is None else seed)
        name = digest_name(good, stem=stem, suffix=suffix)
        served: ContentSource = CorruptedContent(good, (size // 2,)) if corrupt else good
        path = directory.rstrip("/") + "/" + name
        return self.register(
            path,
            content=served,
            etag=etag,
            last_modified=last_modified,
            chunked=chunked,
            cache_control=cache_control,
            throttle=throttle,
        )

    def unregister(self, path: str) -> None:
        with self._lock:
            self._objects.pop(path, None)
            self._throttles.pop(path, None)

    def get(self, path: str) -> OriginObject | None:
        with self._lock:
            return self._objects.get(path)

    def set_throttle(self, path: str, bytes_per_second: float | None) -> None:
        """Change (or lift, with None) an object's throttle; applies to bodies in flight too."""
        with self._lock:
            if bytes_per_second is None:
                self._throttles.pop(path, None)
            else:
                self._throttles[path] = float(bytes_per_second)

    @staticmethod
    def _make_etag(path: str, source: ContentSource) -> str:
        if isinstance(source, PatternContent):
            key = f"{path}|{source.seed!r}|{source.size}".encode()
        elif isinstance(source, CorruptedContent):
            key = f"{path}|corrupt|{source.flips}|{source.size}".encode()
        else:
            key = path.encode() + b"|" + source.read(0, source.size)
        return '"' + hashlib.sha1(key).hexdigest()[:20] + '"'

    # -- counters --------------------------------------------------------------------------

    def wait_idle(self, path: str | None = None, *, timeout: float = 5.0) -> bool:
        """Wait until no answer (for ``path``, or any) is in flight; False at the timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                busy = sum(self._inflight.values()) if path is None else self._inflight.get(path, 0)
                remaining = deadline - time.monotonic()
                if not busy:
                    return True
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.5))

    def bytes_sent(self, path: str | None = None, *, settle: float = 2.0) -> int:
        """Body bytes sent for ``path`` (all paths when None).

        A client can hold its last byte before the server thread has added it, so this first
        waits up to ``settle`` seconds for answers in flight to finish (``settle=0`` to read a
        fill mid-flight).
        """
        if settle > 0:
            self.wait_idle(path, timeout=settle)
        with self._lock:
            if path is None:
                return sum(self._counters.bytes_sent.values())
            return self._counters.bytes_sent.get(path, 0)

    def copies_sent(self, path: str, *, settle: float = 2.0) -> float:
        """Body bytes sent for ``path`` divided by the object's size."""
        obj = self.get(path)
        if obj is None or obj.size == 0:
            raise StateError(f"no non-empty object registered at {path}")
        return self.bytes_sent(path, settle=settle) / obj.size

    def request_count(self, path: str | None = None) -> int:
        with self._lock:
            if path is None:
                return sum(self._counters.requests.values())
            return self._counters.requests.get(path, 0)

    def requests(self, path: str | None = None, *, settle: float = 2.0) -> list[RequestRecord]:
        """Finished requests, oldest first (optionally only those for ``path``); waits like
        :meth:`bytes_sent` for answers in flight first."""
        if settle > 0:
            self.wait_idle(path, timeout=settle)
        with self._lock:
            records = list(self._counters.records)
        return records if path is None else [r for r in records if r.path == path]

    def reset_counters(self) -> None:
        with self._lock:
            self._counters = _Counters()

    def wait_for_bytes(self, path: str, at_least: int, timeout: float) -> int:
        """Block until ``bytes_sent(path) >= at_least`` or ``timeout``; return the count."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                sent = self._counters.bytes_sent.get(path, 0)
                remaining = deadline - time.monotonic()
                if sent >= at_least or remaining <= 0:
                    return sent
                self._lock.wait(min(remaining, 0.5))

    def wait_for_requests(self, path: str | None, at_least: int, timeout: float) -> int:
        """Block until ``request_count(path) >= at_least`` or ``timeout``; return the count."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.request_count(path)
            remaining = deadline - time.monotonic()
            if count >= at_least or remaining <= 0:
                return count
            with self._lock:
                self._lock.wait(min(remaining, 0.5))

    # -- used by the handler ---------------------------------------------------------------

    def _begin(self, path: str) -> OriginObject | None:
        with self._lock:
            self._counters.requests[path] = self._counters.requests.get(path, 0) + 1
            self._inflight[path] = self._inflight.get(path, 0) + 1
            self._lock.notify_all()
            return self._objects.get(path)

    def _add_bytes(self, path: str, count: int) -> None:
        with self._lock:
            self._counters.bytes_sent[path] = self._counters.bytes_sent.get(path, 0) + count
            self._lock.notify_all()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._counters.records.append(record)
            left = self._inflight.get(record.path, 0) - 1
            if left > 0:
                self._inflight[record.path] = left
            else:
                self._inflight.pop(record.path, None)
            self._lock.notify_all()

    def _throttle(self, path: str) -> float | None:
        with self._lock:
            return self._throttles.get(path)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _OriginServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], origin: Origin) -> None:
        self.origin = origin
        super().__init__(address, _OriginHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A peer going away mid-answer is normal here (early disconnect tests); stay quiet.
        return


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "patchcache-testbed-origin/1"

    @property
    def _origin(self) -> Origin:
        return cast(_OriginServer, self.server).origin

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self._origin.connection_timeout)
        # The head and the body are separate writes: with Nagle, a small body waits for the
        # peer's delayed ACK of the head, 40 ms per request on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._origin._sndbuf is not None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._origin._sndbuf)
        self._origin._track(self.connection, True)

    def finish(self) -> None:
        self._origin._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        started = time.monotonic()
        path, query = split_target(self.path)
        origin = self._origin
        obj = origin._begin(path)
        status, sent, completed = 0, 0, False
        try:
            if obj is None:
                status = 404
                body = b"not found\n"
                self.send_response(404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                completed = True
                return
            plan = plan_response(
                obj,
                range_header=self.headers.get("Range"),
                if_range=self.headers.get("If-Range"),
                if_none_match=self.headers.get("If-None-Match"),
                if_modified_since=self.headers.get("If-Modified-Since"),
            )
            status = plan.status
            self.send_response(plan.status)
            for name, value in plan.headers:
                self.send_header(name, value)
            self.end_headers()
            if not head and plan.end > plan.first:
                sent = self._send_body(obj, plan)
            completed = True
        except (OSError, ValueError):
            # The peer went away (or sent garbage mid-answer): drop this connection only.
            self.close_connection = True
        finally:
            origin._record(
                RequestRecord(
                    method=self.command,
                    path=path,
                    query=query,
                    host=self.headers.get("Host"),
                    range=self.headers.get("Range"),
                    headers=tuple(self.headers.items()),
                    status=status,
                    body_bytes=sent,
                    completed=completed,
                    started=started,
                    finished=time.monotonic(),
                )
            )

    def _send_body(self, obj: OriginObject, plan: ResponsePlan) -> int:
        origin = self._origin
        conn = self.connection
        sent = 0
        began = time.monotonic()
        rate = origin._throttle(obj.path)
        piece = BLOCK if rate is None else max(1024, min(BLOCK, int(rate / 20)))
        for data in iter_content(obj.content, plan.first, plan.end, piece=piece):
            if plan.chunked:
                conn.sendall(f"{len(data):x}\r\n".encode())
            view = memoryview(data)
            while view:
                if origin._stopping.is_set():
                    raise ConnectionAbortedError("origin stopping")
                n = conn.send(view)
                origin._add_bytes(obj.path, n)
                sent += n
                view = view[n:]
            if plan.chunked:
                conn.sendall(b"\r\n")
            rate = origin._throttle(obj.path)
            if rate is not None:
                # Pace against the start of the body so the average rate holds.
                delay = began + sent / rate - time.monotonic()
                if delay > 0 and origin._stopping.wait(delay):
                    raise ConnectionAbortedError("origin stopping")
        if plan.chunked:
            conn.sendall(b"0\r\n\r\n")
        return sent
