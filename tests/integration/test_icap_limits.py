"""The ICAP server's slot and time limits against misbehaving clients, over real loopback sockets:
floods of stalled connections, clients that trickle or stop reading, and a locked state store
(`patchcache icap` as a real process, another process holding the SQLite write lock)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.icap_wire import (
    TIMEOUT,
    ServerFactory,
    ServerThread,
    connect,
    options,
    read_reply,
    respmod,
    status_of,
)

from patchcache.cli import main
from patchcache.icap_service.server import ServerLimits
from patchcache.icap_service.service_interface import NullService
from patchcache.state import ObjectState, StateStore
from patchcache.testbed.squid_logs import wait_until

# A generous bound for "served now", not a speed figure: without the limits, the fresh client
# is refused (503), or waits for a deadline or a lock of several seconds.
ANSWER_BOUND = 1.0
FLOOD_LIMIT = 64  # max_connections in the flood tests (reserve: 64 // 8 = 8)
FLOOD = 96  # stalled connections: more than the limit


def timed_options(port: int) -> tuple[int, float]:
    """Status of an OPTIONS on a new connection, and the seconds it took."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_BOUND) as sock:
        sock.settimeout(ANSWER_BOUND)
        sock.sendall(options(port))
        status = status_of(read_reply(sock))
    return status, time.monotonic() - began


class Flood:
    """``count`` connections that each send ``first`` at once, then one byte of ``trickle``
    every ``period`` seconds (round-robin, from a thread) until stopped."""

    def __init__(self, port: int, count: int, first: bytes, trickle: bytes, period: float) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            with contextlib.suppress(OSError):  # refused or evicted meanwhile
                sock.sendall(first)
            self.socks.append(sock)
        self._trickle = trickle
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sent = 0
        while not self._stop.wait(self._period):
            byte = self._trickle[sent % len(self._trickle) : sent % len(self._trickle) + 1]
            sent += 1
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.send(byte)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for sock in self.socks:
            sock.close()


@contextlib.contextmanager
def flood(port: int, first: bytes, trickle: bytes, period: float) -> Iterator[Flood]:
    running = Flood(port, FLOOD, first, trickle, period)
    try:
        yield running
    finally:
        running.close()


OPTIONS_HEAD = b"OPTIONS icap://127.0.0.1/respmod ICAP/1.0\r\nHost: 127.0.0.1\r\n"


def half_respmod(port: int) -> bytes:
    whole = respmod(port, "Allow: 204, 206\r\nPreview: 0\r\n")
    return whole[: whole.index(b"\r\n\r\n") // 2]


# ------------------------------------------------------------------------------------------------
# Floods: a fresh client is still answered (the reserve), long before any deadline
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["slow", "half"])
def test_a_fresh_client_is_answered_during_a_flood_of_stalled_connections(
    icap_server: ServerFactory, kind: str
) -> None:
    # Deadlines far away: only the reserve can let the fresh client in.
    server = icap_server(max_connections=FLOOD_LIMIT, head_timeout=60.0, idle_timeout=60.0)
    port = server.port
    with connect(port) as squid:  # a connection that completed a request before the flood
        squid.sendall(options(port))
        assert status_of(read_reply(squid)) == 200
        first, trickle = (b"O", OPTIONS_HEAD[1:]) if kind == "slow" else (half_respmod(port), b" ")
        with flood(port, first, trickle, period=0.3):
            wait_until(
                lambda: server.running.stats.connections,
                lambda accepted: accepted >= FLOOD + 1,
                timeout=TIMEOUT,
                awaiting=f"{FLOOD + 1} connections accepted",
            )
            for _ in range(3):
                status, took = timed_options(port)
                assert status == 200
                assert took < ANSWER_BOUND
            squid.sendall(options(port))  # the earlier connection kept its slot
            assert status_of(read_reply(squid)) == 200
        stats = server.running.stats
        assert stats.refused == 0
        assert stats.evicted >= FLOOD - FLOOD_LIMIT  # the stalled ones made room
        assert stats.timed_out == 0


# ------------------------------------------------------------------------------------------------
# Deadlines
# ------------------------------------------------------------------------------------------------


def read_until_closed(sock: socket.socket) -> bytes:
    data = bytearray()
    for _ in range(10_000):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


def test_a_trickled_head_gets_408_at_the_head_deadline(icap_server: ServerFactory) -> None:
    # Each byte is activity for the idle timeout; the head deadline still runs out.
    server = icap_server(head_timeout=0.5, idle_timeout=60.0)
    with flood(server.port, b"O", OPTIONS_HEAD[1:], period=0.05) as running:
        for sock in running.socks:
            reply = read_until_closed(sock)  # blocks (TIMEOUT at most) until the server closes
            assert status_of(reply) == 408
            assert b"Connection: close\r\n" in reply
        server.wait_for_connections(0)
    assert server.running.stats.timed_out == FLOOD


def test_a_connection_that_never_sends_a_head_is_closed_at_the_head_deadline(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(head_timeout=0.3, idle_timeout=60.0)
    with connect(server.port) as sock:
        assert status_of(read_until_closed(sock)) == 408


def test_a_later_half_head_on_a_used_connection_gets_the_head_deadline(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(head_timeout=0.3, idle_timeout=60.0)
    with connect(server.port) as sock:
        buf = bytearray()
        sock.sendall(options(server.port))
        assert status_of(read_reply(sock, buf)) == 200
        time.sleep(0.6)  # idle between requests is fine: that is the idle timeout's business
        sock.sendall(options(server.port))
        assert status_of(read_reply(sock, buf)) == 200
        sock.sendall(half_respmod(server.port))
        assert status_of(read_until_closed(sock)) == 408


def test_half_a_head_behind_a_whole_request_gets_the_head_deadline(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(head_timeout=0.3, idle_timeout=60.0)
    with connect(server.port) as sock:
        buf = bytearray()
        sock.sendall(options(server.port) + half_respmod(server.port))  # one write
        assert status_of(read_reply(sock, buf)) == 200
        assert status_of(bytes(buf) + read_until_closed(sock)) == 408


def test_a_trickled_body_gets_408_at_the_request_deadline(icap_server: ServerFactory) -> None:
    server = icap_server(request_timeout=0.5, idle_timeout=60.0)
    with connect(server.port) as sock:
        # No preview, Allow: 204: our answer waits for the end of the body, which never comes.
        sock.sendall(respmod(server.port, "Allow: 204\r\n", b"100000\r\n"))
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.05):
                with contextlib.suppress(OSError):
                    sock.send(b"x")

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            reply = read_until_closed(sock)
        finally:
            stop.set()
            thread.join(TIMEOUT)
    assert status_of(reply) == 408
    assert server.running.stats.timed_out == 1


def test_a_client_that_stops_reading_is_aborted_after_the_idle_timeout(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(idle_timeout=1.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # A small receive buffer: our replies back up into the server's transport quickly.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        server.wait_for_connections(1)
        sock.setblocking(False)
        request = options(server.port) * 100
        # Pipeline OPTIONS and never read, until the server has stopped reading too: sending
        # blocks for a while (bounded loop).
        blocked = 0
        for _ in range(20_000):
            try:
                sock.send(request)
                blocked = 0
            except BlockingIOError:
                blocked += 1
                if blocked == 4:
                    break
                time.sleep(0.05)
            except OSError:  # already aborted: fine, checked below
                break
        assert blocked == 4 or server.running.stats.aborted == 1
        assert server.running.stats.requests > 100  # it answered until our window closed
        server.wait_for_connections(0)
        assert server.running.stats.aborted == 1
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        read_until_closed(sock)  # what had reached our socket, then the reset: not a hang
    finally:
        sock.close()


def test_a_graceful_close_that_never_drains_is_aborted() -> None:
    # asyncio's loop only: it keeps unsent output in the transport, where a graceful close waits
    # for it. uvloop hands part of it to libuv at random, and then its close does not wait.
    server = ServerThread(NullService(), ServerLimits(idle_timeout=1.0), asyncio.new_event_loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", server.port))
        server.wait_for_connections(1)

        def shrink_and_hold() -> None:
            # A small kernel send buffer on the server's side too (else it would swallow the
            # replies), then hold the loop for a moment so that the whole pipeline is one read:
            # every request is answered and the last one's "Connection: close" closes the
            # transport while most replies still wait for a client that does not read.
            for proto in server.running._server.connections:
                assert proto.transport is not None
                raw = proto.transport.get_extra_info("socket")
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            time.sleep(0.5)

        server.loop.call_soon_threadsafe(shrink_and_hold)
        last = options(server.port).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        sock.sendall(options(server.port) * 999 + last)
        wait_until(
            lambda: server.running.stats.requests,
            lambda requests: requests == 1000,
            timeout=TIMEOUT,
            awaiting="1000 requests",
        )
        server.wait_for_connections(0)
        assert server.running.stats.aborted == 1
        assert server.running.stats.timed_out == 0  # not the idle path: the close lingered
    finally:
        sock.close()
        server.close()


# ------------------------------------------------------------------------------------------------
# A locked state store stalls nothing but the state write (`patchcache icap`, real processes)
# ------------------------------------------------------------------------------------------------

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU_URL = f"http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb_{D40}.msu"
WU_KEY = f"http://windows-update.patchcache.squid.internal/sha1/{D40}"

LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # the state's write lock, as a busy prefetcher holds it
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def first_sight_respmod(port: int) -> bytes:
    req = f"GET {WU_URL} HTTP/1.1\r\nHost: download.windowsupdate.com\r\n\r\n".encode()
    res = (
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1048575/104857600\r\n"
        b'Content-Length: 1048576\r\nETag: "e1"\r\n\r\n'
    )
    head = (
        f"RESPMOD icap://127.0.0.1:{port}/respmod ICAP/1.0\r\nHost: 127.0.0.1\r\n"
        f"Allow: 204, 206\r\nPreview: 0\r\n"
        f"Encapsulated: req-hdr=0, res-hdr={len(req)}, res-body={len(req) + len(res)}\r\n\r\n"
    )
    return head.encode() + req + res + b"0\r\n\r\n"


@pytest.fixture
def icap_process(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`patchcache icap` on a free port with a state directory: (port, state dir)."""
    state_dir = tmp_path / "state"
    StateStore(state_dir).close()
    patchcache = Path(sys.executable).with_name("patchcache")
    with subprocess.Popen(
        [str(patchcache), "icap", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir)],
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            port = 0
            for _ in range(200):
                line = proc.stderr.readline()
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if found or not line:
                    port = int(found.group(1)) if found else 0
                    break
            assert port, "patchcache icap did not start"
            # Keep draining its log so it never blocks on a full pipe.
            log: list[str] = []
            stderr = proc.stderr
            drain = threading.Thread(target=lambda: log.extend(stderr), daemon=True)
            drain.start()
            yield port, state_dir
            proc.terminate()
            assert proc.wait(TIMEOUT + 5) == 0, "".join(log)
            drain.join(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)


def test_a_locked_state_store_stalls_no_icap_answer(icap_process: tuple[int, Path]) -> None:
    port, state_dir = icap_process
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(state_dir / "cache.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "locked"
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                sock.settimeout(ANSWER_BOUND)
                sock.sendall(first_sight_respmod(port))  # a first sight: a state write
                assert status_of(read_reply(sock)) == 204
                for _ in range(3):
                    status, took = timed_options(port)  # other connections are not held up
                    assert status == 200
                    assert took < ANSWER_BOUND
                    sock.sendall(first_sight_respmod(port))  # nor is this one
                    assert status_of(read_reply(sock)) == 204
        finally:
            holder.stdin.write("\n")
            holder.stdin.close()
            assert holder.wait(TIMEOUT) == 0
    with StateStore(state_dir) as store:
        # Once the lock is free, the queued write lands.
        record = wait_until(
            lambda: store.get(WU_KEY),
            lambda found: found is not None,
            timeout=TIMEOUT,
            awaiting="the queued first sight to land",
        )
        assert record is not None and record.state is ObjectState.QUEUED
        assert record.total_size == 104857600


def test_lock_holder_really_blocks_writers(tmp_path: Path) -> None:
    """The stand-in for a busy process does hold the lock a state write needs."""
    StateStore(tmp_path).close()
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "cache.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        db = sqlite3.connect(str(tmp_path / "cache.db"), timeout=0.1, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                db.execute("BEGIN IMMEDIATE")
        finally:
            db.close()
            holder.stdin.write("\n")
            holder.stdin.close()
            assert holder.wait(TIMEOUT) == 0


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


def test_limits_are_checked_and_the_reserve_defaults_to_an_eighth() -> None:
    assert ServerLimits().fresh_slots == 512 - 64
    assert ServerLimits(max_connections=4).fresh_slots == 4
    assert ServerLimits(max_connections=100, reserve=10).fresh_slots == 90
    with pytest.raises(ValueError, match=r"reserve must be in 0\.\.max_connections-1"):
        ServerLimits(max_connections=10, reserve=10)
    with pytest.raises(ValueError, match="head_timeout must be positive"):
        ServerLimits(head_timeout=0)


def test_icap_cli_refuses_a_reserve_as_large_as_the_limit() -> None:
    result = CliRunner().invoke(main, ["icap", "--max-connections", "8", "--reserve", "8"])
    assert result.exit_code == 2
    assert "reserve must be in 0..max_connections-1 (7), got 8" in result.output
