"""asyncio adapter for the ICAP core: sockets, limits, shutdown and worker processes.

Theory of operation
-------------------
Each accepted connection gets an `IcapConnection` (protocol.py) and an `asyncio.Protocol` that
feeds it bytes and acts on its events. The service (service_interface.py) is asked once per
request, when the heads have arrived; its decision becomes the cheapest reply RFC 3507 allows:

* no change: ``204`` after the preview (Squid sends ``Preview: 0`` since our OPTIONS say so), or
  at the end of the message when there was no preview and ``Allow: 204``;
* new HTTP head: ``206`` + ``use-original-body=0`` when the client sent ``Allow: 206``, so the
  body never crosses this process; a body-less message gets a ``200`` with ``null-body``;
* otherwise (the client allows neither) we must echo: ``100 Continue`` after the preview, then a
  ``200`` whose body is streamed back chunk by chunk as it arrives (reading pauses while the
  socket's write buffer is full).

Limits (`ServerLimits`): head and preview sizes (protocol.py) and, so that no client can hold
a connection slot for long without making progress:

* ``head_timeout``: a request head must be complete within this of the connection's start (its
  first request) or of the sweep that first saw part of it (later ones); else ``408`` and close.
  A client trickling a byte every few seconds, or sending half a head, gives its slot back.
* ``request_timeout``: from a complete head to the end of the request (its body and our reply).
* ``idle_timeout``: a connection that makes no progress for that long (no byte received, none of
  our pending output taken) is closed; *aborted* when output is still pending, since a graceful
  close waits for a client that stopped reading forever. A connection already closing that has
  not finished after ``idle_timeout`` is aborted too.
* ``max_connections`` per worker, with a ``reserve``: connections still waiting for a complete
  head ("fresh") may hold at most ``max_connections - reserve`` slots; past that, a new
  connection closes the fresh one that has waited longest. So a flood of stalled connections
  delays only itself: a new, well-behaved client (Squid sends a head in one write) gets in and is
  answered, and the reserved slots stay for connections that completed a request. At
  ``max_connections`` the longest idle connection (between requests) makes room; only when every
  connection is inside a request does a new one get ``503``.

Timeouts are checked by one sweep every quarter of the shortest timeout (0.05-5 s), not a timer
per request: a deadline may be passed by up to one sweep period.

A protocol error gets its status (400/501/505) and that connection is closed; a request for an
unknown service path gets 404/405 and the connection stays usable; an exception in the service
gets 500. Nothing a client sends stops the server.

Shutdown (SIGTERM/SIGINT, or `RunningServer.close`): stop accepting, close idle connections,
let in-flight requests finish (then close those connections), abort what is left after
``shutdown_timeout``.

With ``workers > 1``, `run_server` forks that many processes, each with its own listening socket
on the same port (``SO_REUSEPORT``: the kernel spreads connections); the parent restarts a worker
that dies and forwards SIGTERM. `run_server` runs its loop with uvloop (C transports: about a
fifth less CPU per request than asyncio's own loop, bench/icap_rps.py); `start_server` serves on
whatever loop its caller runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import uvloop

from patchcache.errors import ProtocolError
from patchcache.icap_service.decision import apply_decision
from patchcache.icap_service.protocol import (
    BodyChunk,
    BodyKind,
    ConnectionClosed,
    EndOfMessage,
    IcapConnection,
    NeedData,
    OptionsReply,
    Paused,
    PreviewEnd,
    RequestHead,
    format_istag,
    serialize_error,
)
from patchcache.icap_service.service_interface import IcapService

__all__ = ["RunningServer", "ServerLimits", "ServerStats", "run_server", "start_server"]

log = logging.getLogger("patchcache.icap")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-worker limits and timeouts (seconds)."""

    max_connections: int = 512
    max_head_size: int = 65536
    max_preview: int = 1 << 20
    idle_timeout: float = 120.0
    head_timeout: float = 10.0
    request_timeout: float = 300.0
    # Slots fresh connections (no complete head yet) cannot take; None: max_connections // 8.
    reserve: int | None = None
    shutdown_timeout: float = 10.0
    options_ttl: int = 3600

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        for name in ("idle_timeout", "head_timeout", "request_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.reserve is not None and not 0 <= self.reserve < self.max_connections:
            raise ValueError(
                f"reserve must be in 0..max_connections-1 ({self.max_connections - 1}), "
                f"got {self.reserve}"
            )

    @property
    def fresh_slots(self) -> int:
        """How many connections may wait for their head at once (``max_connections - reserve``)."""
        reserve = self.max_connections // 8 if self.reserve is None else self.reserve
        return self.max_connections - reserve

    @property
    def sweep_period(self) -> float:
        shortest = min(self.idle_timeout, self.head_timeout, self.request_timeout)
        return max(0.05, min(shortest / 4, 5.0))


@dataclass(slots=True)
class ServerStats:
    """Counters of one server (one worker): for tests, benchmarks and logs."""

    connections: int = 0
    requests: int = 0
    bytes_received: int = 0
    refused: int = 0
    evicted: int = 0  # closed to make room for a new connection
    timed_out: int = 0  # closed by head_timeout, request_timeout or idle_timeout
    aborted: int = 0  # closed without flushing our output (the client stopped reading)


def _ignore_error(kind: str) -> None:
    pass


class _Server:
    """State shared by the connections of one listening socket."""

    def __init__(
        self,
        service: IcapService,
        limits: ServerLimits,
        workers: int,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.service = service
        self.limits = limits
        self.workers = workers
        self.stats = ServerStats()
        # Told of each error by kind (service, protocol, timeout, refused): the metrics.
        self.on_error: Callable[[str], None] = on_error or _ignore_error
        self.connections: set[_IcapProtocol] = set()
        # Connections waiting for a complete request head, oldest first (a dict keeps insertion
        # order, and a connection enters it with the current time): the first is the one to
        # evict, and the head deadline sweep stops at the first one not yet expired.
        self.waiting_head: dict[_IcapProtocol, None] = {}
        self.closing = False
        self.all_closed = asyncio.Event()
        self.all_closed.set()
        self._istag_raw = ""
        self._istag = ""
        self.istag()  # a bad ISTag is a configuration error: fail at start, not per request

    def istag(self) -> str:
        raw = self.service.istag
        if raw != self._istag_raw:
            self._istag = format_istag(raw)
            self._istag_raw = raw
        return self._istag

    def options_reply(self, path: str, method: str) -> OptionsReply:
        return OptionsReply(
            methods=(method,),
            istag=self.istag(),
            service="patchcache ICAP service",
            service_id=path.strip("/") or None,
            options_ttl=self.limits.options_ttl,
            max_connections=self.limits.max_connections * self.workers,
            date=email.utils.formatdate(usegmt=True),
        )

    def add(self, proto: _IcapProtocol) -> None:
        self.connections.add(proto)
        self.all_closed.clear()

    def remove(self, proto: _IcapProtocol) -> None:
        self.connections.discard(proto)
        self.waiting_head.pop(proto, None)
        if not self.connections:
            self.all_closed.set()

    def make_room(self) -> bool:
        """Before admitting a connection: keep the reserve and the limit, evicting whoever
        waits longest without progress. False when the connection must be refused."""
        limits = self.limits
        full = len(self.connections) >= limits.max_connections
        if not full and len(self.waiting_head) < limits.fresh_slots:
            return True
        victim = next(iter(self.waiting_head), None)
        if victim is None and full:
            victim = self._longest_idle()
        if victim is None:
            return not full
        victim.evict()
        return True

    def _longest_idle(self) -> _IcapProtocol | None:
        # A scan, but only when every slot is taken and none waits for a head.
        found: _IcapProtocol | None = None
        for proto in self.connections:
            if proto.conn.idle and (found is None or proto.last_active < found.last_active):
                found = proto
        return found


class _IcapProtocol(asyncio.Protocol):
    """One client connection: feeds the core, asks the service, writes replies."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        limits = server.limits
        self.conn = IcapConnection(
            max_head_size=limits.max_head_size, max_preview=limits.max_preview
        )
        self.transport: asyncio.Transport | None = None
        self.last_active = time.monotonic()
        # When the connection started waiting for the current request head (None: not
        # waiting), and when the current request's head arrived: for the deadlines.
        self.head_since: float | None = None
        self.request_since = 0.0
        self.closing_since: float | None = None  # first seen closing by the sweep
        self.peer = "?"
        # Per-request plan, set when the head arrives.
        self.new_head: bytes | None = None
        self.echo = False  # streaming the body back in a 200
        self.keep_preview = False  # buffer preview bytes: we may have to echo them
        self.preview_chunks: list[bytes] = []

    # ---- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        server = self.server
        if server.closing or not server.make_room():
            log.warning("refusing connection from %s: %d open", self.peer, len(server.connections))
            server.stats.refused += 1
            server.on_error("refused")
            transport.write(serialize_error(503))
            transport.close()
            return
        server.stats.connections += 1
        server.add(self)
        # A new connection owes us its first head within head_timeout.
        self.head_since = self.last_active
        server.waiting_head[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.remove(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.server.stats.bytes_received += len(data)
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._process()
        return False

    def pause_writing(self) -> None:
        # Echoing a body faster than the client reads it: stop reading until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        # The client took our output: progress, even though it sent nothing.
        self.last_active = time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # ---- limits -----------------------------------------------------------------------------

    def shut(self) -> None:
        """Close after our pending output, or at once when there is some left: a client that
        stopped reading would keep a graceful close (and its slot) forever."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > 0:
            self.server.stats.aborted += 1
            transport.abort()
        else:
            transport.close()

    def evict(self) -> None:
        """Give this connection's slot to a new one (see `_Server.make_room`)."""
        log.debug("evicting ICAP connection from %s to make room", self.peer)
        self.server.stats.evicted += 1
        # Out of the books now: connection_lost only comes on a later loop iteration.
        self.server.remove(self)
        self.shut()

    def time_out(self, what: str) -> None:
        """A deadline passed: ``408`` if no reply of ours is under way, then close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("ICAP connection from %s timed out: %s", self.peer, what)
        self.server.stats.timed_out += 1
        self.server.on_error("timeout")
        conn = self.conn
        if not conn.response_started and (self.head_since is not None or conn.awaiting_response):
            transport.write(serialize_error(408, istag=self.server.istag()))
        self.shut()

    # ---- event loop over the core ---------------------------------------------------------

    def _process(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        conn = self.conn
        try:
            while True:
                try:
                    event = conn.next_event()
                except ProtocolError as exc:
                    self._protocol_error(exc)
                    return
                kind = type(event)
                if kind is NeedData or kind is Paused:
                    break
                if kind is RequestHead:
                    assert isinstance(event, RequestHead)
                    self._on_head(event)
                elif kind is BodyChunk:
                    assert isinstance(event, BodyChunk)
                    self._on_body(event.data)
                elif kind is PreviewEnd:
                    assert isinstance(event, PreviewEnd)
                    self._on_preview_end(event.ieof)
                elif kind is EndOfMessage:
                    self._on_end()
                elif kind is ConnectionClosed:
                    transport.close()
                    return
                if conn.must_close:
                    transport.close()
                    return
        except Exception:
            # A bug of ours must cost one connection, never the server.
            log.exception("internal error on ICAP connection from %s", self.peer)
            transport.abort()
            return
        if self.server.closing and conn.idle:
            transport.close()

    def _protocol_error(self, exc: ProtocolError) -> None:
        assert self.transport is not None
        log.info("ICAP protocol error from %s: %s", self.peer, exc)
        self.server.on_error("protocol")
        if not self.conn.response_started:
            self.transport.write(self.conn.send_error(exc.status_hint, istag=self.server.istag()))
            self.transport.close()
        else:
            self.transport.abort()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _on_head(self, head: RequestHead) -> None:
        server = self.server
        conn = self.conn
        if self.head_since is not None:
            self.head_since = None
            server.waiting_head.pop(self, None)
        self.request_since = self.last_active
        if server.closing:
            conn.close_after_response()
        server.stats.requests += 1
        istag = server.istag()
        self.new_head = None
        self.echo = False
        self.keep_preview = False
        self.preview_chunks = []
        method = server.service.service_paths.get(head.service)
        if method is None:
            self._write(conn.send_error(404, istag=istag))
            return
        if head.method == "OPTIONS":
            self._write(conn.send_options(server.options_reply(head.service, method)))
            return
        if method != head.method:
            self._write(conn.send_error(405, istag=istag))
            return
        try:
            service = server.service
            decision = service.respmod(head) if method == "RESPMOD" else service.reqmod(head)
            new_head = apply_decision(head, decision)
        except Exception:
            log.exception("ICAP service failed on %s %s", head.method, head.uri)
            server.on_error("service")
            self._write(conn.send_error(500, istag=istag))
            return
        self.new_head = new_head
        if not head.has_body:
            if new_head is None and conn.can_send_no_content:
                self._write(conn.send_no_content(istag))
            else:
                req_hdr, res_hdr = self._heads(head, new_head)
                self._write(conn.send_response(istag, req_hdr=req_hdr, res_hdr=res_hdr))
            return
        if head.preview is not None:
            # Decide at the end of the preview; keep its bytes only if we might echo them.
            self.keep_preview = new_head is not None and not head.allow_206
            return
        if (new_head is None and head.allow_204) or (new_head is not None and head.allow_206):
            return  # answer at EndOfMessage; the body is skipped
        self._start_echo(head)

    def _heads(
        self, head: RequestHead, new_head: bytes | None
    ) -> tuple[bytes | None, bytes | None]:
        """(req_hdr, res_hdr) of our reply: the adapted head, or the original one."""
        if head.method == "REQMOD":
            original = head.http_request.raw if head.http_request is not None else None
            return (new_head if new_head is not None else original), None
        original = head.http_response.raw if head.http_response is not None else None
        return None, (new_head if new_head is not None else original)

    def _start_echo(self, head: RequestHead) -> None:
        req_hdr, res_hdr = self._heads(head, self.new_head)
        body = BodyKind.REQ_BODY if head.method == "REQMOD" else BodyKind.RES_BODY
        istag = self.server.istag()
        self._write(self.conn.send_response(istag, req_hdr=req_hdr, res_hdr=res_hdr, body=body))
        self.echo = True
        for chunk in self.preview_chunks:
            self._write(self.conn.send_body(chunk))
        self.preview_chunks = []

    def _on_body(self, data: bytes) -> None:
        if self.echo:
            self._write(self.conn.send_body(data))
        elif self.keep_preview:
            self.preview_chunks.append(data)

    def _on_preview_end(self, ieof: bool) -> None:
        conn = self.conn
        head = conn.request
        if head is None or not conn.awaiting_response:
            return
        istag = self.server.istag()
        if self.new_head is None:
            self._write(conn.send_no_content(istag))
        elif head.allow_206:
            req_hdr, res_hdr = self._heads(head, self.new_head)
            self._write(conn.send_partial_content(istag, req_hdr=req_hdr, res_hdr=res_hdr))
        else:
            if not ieof:
                self._write(conn.send_continue())
            self._start_echo(head)

    def _on_end(self) -> None:
        conn = self.conn
        head = conn.request
        if self.echo:
            self.echo = False
            self._write(conn.send_end())
            return
        if head is None or not conn.awaiting_response:
            return
        istag = self.server.istag()
        if self.new_head is None and conn.can_send_no_content:
            self._write(conn.send_no_content(istag))
        elif self.new_head is not None and head.allow_206:
            req_hdr, res_hdr = self._heads(head, self.new_head)
            self._write(conn.send_partial_content(istag, req_hdr=req_hdr, res_hdr=res_hdr))
        else:  # pragma: no cover - _on_head starts an echo in every other case
            raise RuntimeError("request ended with no reply planned")


class RunningServer:
    """A started server: ``port`` is the bound port; ``await close()`` shuts it down gracefully."""

    def __init__(self, server: _Server, aserver: asyncio.base_events.Server, port: int) -> None:
        self._server = server
        self._aserver = aserver
        self.port = port
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    @property
    def connection_count(self) -> int:
        """Connections open now."""
        return len(self._server.connections)

    @property
    def stats(self) -> ServerStats:
        return self._server.stats

    async def _sweep_idle(self) -> None:
        # One periodic sweep instead of a timer per connection: cheaper per request.
        server = self._server
        period = server.limits.sweep_period
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep(time.monotonic())
            except Exception:  # pragma: no cover - a bug here must not stop the deadlines
                log.exception("ICAP deadline sweep failed")

    def sweep(self, now: float) -> None:
        """Apply the deadlines (see the module docstring) as of ``now`` (time.monotonic())."""
        server = self._server
        limits = server.limits
        for proto in server.connections:
            if proto.head_since is None and proto.conn.reading_head:
                # Part of a later head is buffered: its deadline runs from now. Found here
                # rather than on every read, which would cost each request a check; so that
                # deadline may start up to one sweep period late.
                proto.head_since = now
                server.waiting_head[proto] = None
        head_deadline = now - limits.head_timeout
        for proto in list(server.waiting_head):
            since = proto.head_since
            if since is not None and since > head_deadline:
                break  # the rest waited less
            proto.time_out(f"no complete request head within {limits.head_timeout:g} s")
            server.waiting_head.pop(proto, None)
        idle_deadline = now - limits.idle_timeout
        request_deadline = now - limits.request_timeout
        for proto in list(server.connections):
            transport = proto.transport
            if transport is None:
                continue
            if transport.is_closing():
                # Closed gracefully but the output never drained: the client stopped reading.
                if proto.closing_since is None:
                    proto.closing_since = now
                elif proto.closing_since < idle_deadline:
                    log.info("aborting ICAP connection from %s: output not taken", proto.peer)
                    server.stats.aborted += 1
                    transport.abort()
            elif proto.last_active < idle_deadline:
                log.info("closing idle ICAP connection from %s", proto.peer)
                server.stats.timed_out += 1
                server.on_error("timeout")
                proto.shut()
            elif (
                proto.head_since is None
                and not proto.conn.idle
                and proto.request_since < request_deadline
            ):
                proto.time_out(f"request not done within {limits.request_timeout:g} s")

    async def close(self) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish."""
        server = self._server
        if server.closing:
            await server.all_closed.wait()
            return
        server.closing = True
        self._aserver.close()
        self._sweeper.cancel()
        for proto in list(server.connections):
            if proto.transport is None:
                continue
            if proto.conn.idle:
                proto.transport.close()
            else:
                proto.conn.close_after_response()
        try:
            await asyncio.wait_for(server.all_closed.wait(), server.limits.shutdown_timeout)
        except TimeoutError:
            log.warning("aborting %d ICAP connections at shutdown", len(server.connections))
            for proto in list(server.connections):
                if proto.transport is not None:
                    proto.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.all_closed.wait(), 1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper


async def start_server(
    service: IcapService,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: ServerLimits | None = None,
    reuse_port: bool = False,
    workers: int = 1,
    on_error: Callable[[str], None] | None = None,
) -> RunningServer:
    """Start serving ``service`` on ``host:port`` in the running loop (port 0: any free port).

    Returns a `RunningServer`; its ``port`` is the bound port. ``workers`` only scales the
    ``Max-Connections`` advertised in OPTIONS (see `run_server` for real worker processes).
    ``on_error(kind)`` is called on each error: ``service`` (500), ``protocol``, ``timeout``,
    ``refused`` (503).
    """
    limits = limits or ServerLimits()
    server = _Server(service, limits, workers, on_error)
    loop = asyncio.get_running_loop()
    aserver = await loop.create_server(
        lambda: _IcapProtocol(server),
        host,
        port,
        reuse_port=reuse_port or None,
        backlog=min(4096, max(128, limits.max_connections)),
    )
    bound = aserver.sockets[0].getsockname()[1]
    log.info("ICAP server listening on %s:%d (pid %d)", host, bound, os.getpid())
    return RunningServer(server, aserver, bound)


async def _serve_until_signal(
    service: IcapService,
    host: str,
    port: int,
    limits: ServerLimits,
    reuse_port: bool,
    workers: int,
    ready: Callable[[int], None] | None,
    on_stop: Callable[[], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = await start_server(
        service,
        host,
        port,
        limits=limits,
        reuse_port=reuse_port,
        workers=workers,
        on_error=on_error,
    )
    if ready is not None:
        ready(running.port)
    await stop.wait()
    log.info("ICAP server %d shutting down", os.getpid())
    await running.close()
    if on_stop is not None:
        # E.g. finish the queued state writes; it may block, and nothing is served any more.
        on_stop()


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's event loop: uvloop's. Its transports are C, and a request costs the
    server about a fifth less CPU than with asyncio's own loop (bench/icap_rps.py)."""
    # asyncio.Runner rather than uvloop.run: Debian 12 ships uvloop 0.17, which has no run().
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def run_server(
    service: IcapService,
    host: str = "127.0.0.1",
    port: int = 1344,
    *,
    workers: int = 1,
    limits: ServerLimits | None = None,
    ready: Callable[[int], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    worker_init: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT. ``ready(port)`` is called once every worker listens;
    ``on_stop()`` in each worker once its server has closed; ``on_error(kind)`` on each error
    (see `start_server`); ``worker_init(index)`` in each worker process right after the fork
    (index 0..workers-1, kept by a restarted worker; not called with one worker).

    ``workers > 1`` forks that many processes sharing the port with ``SO_REUSEPORT`` (call this
    before any event loop or thread exists in the process).
    """
    limits = limits or ServerLimits()
    if workers <= 1:
        _run_loop(
            _serve_until_signal(service, host, port, limits, False, 1, ready, on_stop, on_error)
        )
        return
    _run_workers(service, host, port, workers, limits, ready, on_stop, on_error, worker_init)


def _run_workers(
    service: IcapService,
    host: str,
    port: int,
    workers: int,
    limits: ServerLimits,
    ready: Callable[[int], None] | None,
    on_stop: Callable[[], None] | None,
    on_error: Callable[[str], None] | None,
    worker_init: Callable[[int], None] | None,
) -> None:
    # Hold the port (bound, not listening, so the kernel routes no connection to it) so that
    # port 0 resolves once and every worker binds the same one.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserve = socket.socket(family, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind((host, port))
    port = reserve.getsockname()[1]
    ready_r, ready_w = os.pipe()
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                reserve.close()
                os.close(ready_r)
                if worker_init is not None:
                    worker_init(index)

                def child_ready(_port: int) -> None:
                    os.write(ready_w, b"r")

                _run_loop(
                    _serve_until_signal(
                        service, host, port, limits, True, workers, child_ready, on_stop, on_error
                    )
                )
            except BaseException:
                log.exception("ICAP worker %d failed", index)
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for index in range(workers):
        spawn(index)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # Wait (bounded) until every worker listens before announcing the port.
        seen = 0
        deadline = time.monotonic() + 30
        while seen < workers and time.monotonic() < deadline and not stopping:
            readable, _, _ = select.select([ready_r], [], [], 0.5)
            if readable:
                seen += len(os.read(ready_r, workers))
        if ready is not None and not stopping:
            ready(port)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            index = children.pop(pid, -1)
            if index < 0 or stopping:
                continue
            log.error(
                "ICAP worker %d (pid %d) died with status %#x; restarting", index, pid, status
            )
            time.sleep(1.0)  # no busy restart loop if a worker dies at once
            if not stopping:
                spawn(index)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        reserve.close()
        os.close(ready_r)
        os.close(ready_w)
