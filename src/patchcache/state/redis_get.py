"""A bare ``GET`` over its own socket: the store-ID helper's lookup on the Redis state.

The helper asks `expandable(key)` once per request Squid sends it, on Squid's request path.
Through redis-py a loopback ``GET`` took p50 144 us / p99 4.1 ms on the 2-core test box
(connection-pool, retry and observability layers around every call); the same ``GET`` written
and read on a plain socket took p50 26 us / p99 0.5 ms (bench/state_redis.py). So plain reads
outside a transaction use this: one connection per thread (and per process: never across a
fork), RESP2 by hand, reconnecting once on failure. Everything else goes through redis-py.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading

from patchcache.state.redis_url import RedisTarget


class RedisGetError(OSError):
    """The GET failed even after one reconnect."""


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Connection:
    def __init__(self, target: RedisTarget, timeout: float) -> None:
        raw = socket.create_connection((target.host, target.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.tls:
            context = ssl.create_default_context()
            self._sock: socket.socket = context.wrap_socket(raw, server_hostname=target.host)
        else:
            self._sock = raw
        if target.password is not None:
            if target.username is not None:
                self._call(b"AUTH", target.username.encode(), target.password.encode())
            else:
                self._call(b"AUTH", target.password.encode())
        if target.db:
            self._call(b"SELECT", str(target.db).encode())

    def _call(self, *parts: bytes) -> bytes | None:
        # One recv usually holds the whole reply (records are small): one wake-up per lookup.
        self._sock.sendall(_command(*parts))
        buf = self._recv(b"")
        while b"\r\n" not in buf:
            buf = self._recv(buf)
        head, _, body = buf.partition(b"\r\n")
        kind, rest = head[:1], head[1:]
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            while len(body) < length + 2:
                body = self._recv(body)
            return body[:length]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RedisGetError(rest.decode("utf-8", "replace"))
        raise ConnectionError(f"unexpected reply {head[:20]!r}")

    def _recv(self, buf: bytes) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by Redis")
        return buf + chunk

    def get(self, key: bytes) -> bytes | None:
        return self._call(b"GET", key)

    def close(self) -> None:
        self._sock.close()


class FastGet:
    """GET `key` on the database `target` names; thread- and fork-safe."""

    def __init__(self, target: RedisTarget, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._local = threading.local()
        # Every thread's connection, so that close() closes them all (threads come and go).
        self._all: list[_Connection] = []
        self._all_lock = threading.Lock()

    def get(self, key: str) -> str | None:
        encoded = key.encode()
        for attempt in (1, 2):
            conn = self._connection()
            try:
                raw = conn.get(encoded)
            except RedisGetError:
                raise
            except (OSError, ValueError) as exc:  # reconnect once: Redis restarted, idle drop
                self._drop()
                if attempt == 2:
                    raise RedisGetError(str(exc) or type(exc).__name__) from exc
                continue
            return None if raw is None else raw.decode()
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:  # after a fork, closing the child's copy leaves the parent's open
            conn.close()
        self._local.conn = None

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = _Connection(self._target, self._timeout)
            except OSError as exc:
                raise RedisGetError(
                    f"Error connecting to {self._target.host}:{self._target.port}: {exc}"
                ) from exc
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn: _Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            with self._all_lock:
                if conn in self._all:
                    self._all.remove(conn)
            conn.close()
