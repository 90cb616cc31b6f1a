"""An ICAP server on a background event loop and raw-socket ICAP client helpers, for the
integration tests of the ICAP service (tests/integration/test_icap_*.py)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from patchcache.icap_service.server import RunningServer, ServerLimits, start_server
from patchcache.icap_service.service_interface import IcapService, NullService
from patchcache.testbed.squid_logs import wait_until

TIMEOUT = 10.0

REQ = b"GET http://wu.example/a.cab HTTP/1.1\r\nHost: wu.example\r\n\r\n"
RES = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"


class ServerThread:
    """`start_server` in an event loop on a background thread, for synchronous clients."""

    def __init__(
        self,
        service: IcapService,
        limits: ServerLimits | None,
        new_loop: Callable[[], asyncio.AbstractEventLoop],
    ) -> None:
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(start_server(service, limits=limits), self.loop)
        self.running: RunningServer = future.result(TIMEOUT)
        self.port = self.running.port

    def wait_for_requests(self, count: int) -> None:
        """Wait (bounded) until the server has begun ``count`` requests in all."""
        wait_until(
            lambda: self.running.stats.requests,
            lambda begun: begun >= count,
            timeout=TIMEOUT,
            interval=0.01,
            awaiting=f"{count} requests begun",
        )

    def wait_for_connections(self, count: int) -> None:
        """Wait (bounded) until exactly ``count`` connections are open."""
        wait_until(
            lambda: self.running.connection_count,
            lambda open_now: open_now == count,
            timeout=TIMEOUT,
            awaiting=f"{count} open connections",
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


ServerFactory = Callable[..., ServerThread]


# Every test runs on asyncio's own loop and on uvloop, the loop `run_server` uses.
@pytest.fixture(params=[asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def icap_server(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    started: list[ServerThread] = []
    new_loop: Callable[[], asyncio.AbstractEventLoop] = request.param

    def start(service: IcapService | None = None, **limits: Any) -> ServerThread:
        server = ServerThread(
            service or NullService(), ServerLimits(**limits) if limits else None, new_loop
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# ------------------------------------------------------------------------------------------------
# Raw socket helpers
# ------------------------------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def read_reply(sock: socket.socket, buf: bytearray | None = None) -> bytes:
    """One ICAP reply: head, encapsulated heads and chunked body if any. Leftovers stay in buf."""
    buf = buf if buf is not None else bytearray()

    def fill(predicate: Callable[[], bool]) -> None:
        for _ in range(10_000):
            if predicate():
                return
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed by server; have {bytes(buf)[:200]!r}")
            buf.extend(data)
        raise AssertionError("reply never completed")

    fill(lambda: b"\r\n\r\n" in buf)
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    found = re.search(rb"Encapsulated: ([^\r]*)", head)
    entries = dict(e.strip().split(b"=") for e in found.group(1).split(b",")) if found else {}
    body_names = (b"res-body", b"req-body", b"opt-body")
    if not any(name in entries for name in body_names):
        last = max((int(v) for v in entries.values()), default=0)
        fill(lambda: len(buf) >= end + last)
        reply = bytes(buf[: end + last])
        del buf[: end + last]
        return reply
    pos = end + max(int(v) for v in entries.values())
    while True:
        fill(lambda p=pos: buf.find(b"\r\n", p) >= 0)
        line_end = buf.index(b"\r\n", pos)
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            fill(lambda e=line_end: buf.find(b"\r\n", e + 2) >= 0)
            stop = buf.index(b"\r\n", line_end + 2) + 2
            reply = bytes(buf[:stop])
            del buf[:stop]
            return reply
        pos = line_end + 2 + size + 2
        fill(lambda p=pos: len(buf) >= p)


def respmod(port: int, extra: str = "", body: bytes = b"0\r\n\r\n", path: str = "respmod") -> bytes:
    enc = f"req-hdr=0, res-hdr={len(REQ)}, res-body={len(REQ) + len(RES)}"
    head = (
        f"RESPMOD icap://127.0.0.1:{port}/{path} ICAP/1.0\r\nHost: 127.0.0.1\r\n"
        f"{extra}Encapsulated: {enc}\r\n\r\n"
    )
    return head.encode() + REQ + RES + body


def options(port: int, path: str = "respmod") -> bytes:
    return f"OPTIONS icap://127.0.0.1:{port}/{path} ICAP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"ICAP/1.0 "), reply[:80]
    return int(reply[9:12])


def assert_closed(sock: socket.socket) -> None:
    assert sock.recv(1) == b""
