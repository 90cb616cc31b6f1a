"""A byte-counting TCP relay on loopback: the wire between two Squids, measured.

Used to measure the link between a branch Squid and its parent (or a farm's front and a back
end): the child's `cache_peer` points at the relay, which forwards every connection to the real
port and counts the bytes each way as they cross. Counting on the wire, rather than reading the
parent's access.log, sees everything the link carries: headers, bodies of aborted transfers, and
the transfers Squid logs late or not at all (a collapsed fill is logged once, after the last
byte), which is the link cost a branch office pays for.

One thread per direction per connection (a few connections at a time here); a connection ends
when either side closes, and `stop()` closes everything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Final

from patchcache.errors import StateError
from patchcache.testbed.lifecycle import StartStop
from patchcache.testbed.ports import LOOPBACK
from patchcache.testbed.squid_logs import wait_until

_CHUNK: Final = 256 * 1024


class CountingRelay(StartStop):
    """Listen on a free loopback port, forward to ``target_port``; ``start()``/``stop()``."""

    def __init__(self, target_port: int, *, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._up = 0  # bytes toward the target (requests)
        self._down = 0  # bytes from the target (replies)
        self._connections = 0
        self._server: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            raise StateError("relay not started")
        port: int = self._server.getsockname()[1]
        return port

    @property
    def bytes_down(self) -> int:
        """Bytes the target sent back (the parent's replies to the child)."""
        with self._lock:
            return self._down

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._up

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def reset(self) -> None:
        with self._lock:
            self._up = self._down = 0

    def settled_bytes_down(self, *, quiet: float = 1.0, timeout: float = 30.0) -> int:
        """``bytes_down`` once it has not changed for ``quiet`` seconds (bounded by timeout)."""
        last, since = self.bytes_down, time.monotonic()

        def quiet_for() -> float:
            """Seconds since ``bytes_down`` last changed."""
            nonlocal last, since
            now = self.bytes_down
            if now != last:
                last, since = now, time.monotonic()
            return time.monotonic() - since

        wait_until(quiet_for, lambda still: still >= quiet, timeout=timeout, interval=0.1)
        return last

    def start(self) -> CountingRelay:
        server = socket.create_server((LOOPBACK, 0))
        server.settimeout(0.2)
        self._server = server
        thread = threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._server is not None:
            self._server.close()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._connections += 1
                self._sockets.update((client, upstream))
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, up), name="relay-pump", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                sink.sendall(data)
                with self._lock:
                    if up:
                        self._up += len(data)
                    else:
                        self._down += len(data)
        except OSError:
            pass
        finally:
            # Half-close toward the sink so the other direction can finish; the last pump of a
            # connection closes both.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with self._lock:
                done = source not in self._sockets or sink not in self._sockets
                self._sockets.discard(source)
            if done:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.close()
                with self._lock:
                    self._sockets.discard(sink)
