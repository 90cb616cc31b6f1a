"""A Redis database behind the small key-value surface `StateStore` uses from diskcache
(`patchcache.state.connection.KeyValueMap`).

`StateStore` keeps every rule of the state (first sight, leases, queue, key-scheme guard) in
read-check-write transactions over a sorted key-value map. This module gives it the same map on
Redis, so the Redis state runs exactly the code the directory state runs:

* Plain reads outside a transaction are one ``GET`` (the store-ID helper's `expandable`).
* ``transact()`` takes one lock for the whole state (``SET NX PX``, like SQLite's ``BEGIN
  IMMEDIATE``), buffers the writes, and commits them with one Lua script that first checks the
  lock is still ours (a fencing check: a holder paused past the lock's expiry cannot commit over
  a newer holder). A process killed with -9 mid-transaction commits nothing; its lock expires
  after `lock_ttl` seconds and the others go on.
* Key names are also kept in one sorted set (all scores 0, so it sorts by name), giving the
  ordered iteration and ``peek`` of the queue slots that diskcache gives.

Values keep their Python type (diskcache stores ints and strs as such): a one-letter tag.
Every Redis failure is raised as `RedisStorageError`, an `OSError`, which `StateStore` turns
into a `StateError` naming the state.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import redis

from patchcache.state.redis_get import FastGet, RedisGetError

# Sorted-set pages read per round trip when listing names.
_PAGE = 500
# How long a waiter sleeps between tries for the lock, at most (it starts at 1 ms).
_MAX_BACKOFF = 0.02

_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ns = ARGV[2]
local i = 3
while i <= #ARGV do
  local name = ARGV[i]
  if ARGV[i + 1] == '1' then
    redis.call('SET', ns .. 'v:' .. name, ARGV[i + 2])
    redis.call('ZADD', KEYS[2], 0, name)
  else
    redis.call('DEL', ns .. 'v:' .. name)
    redis.call('ZREM', KEYS[2], name)
  end
  i = i + 3
end
redis.call('DEL', KEYS[1])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_DELETED = object()


class RedisStorageError(OSError):
    """Redis could not be reached or refused a command, or the state lock was not had."""


def _encode(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"the Redis state stores str and int values, not {type(value).__name__}")
    return ("i" if isinstance(value, int) else "s") + str(value)


def _decode(raw: str | None) -> object:
    if raw is None:
        return None
    if raw.startswith("i"):
        return int(raw[1:])
    return raw[1:]  # "s" or anything foreign: StateStore's decoders judge it


class _Txn:
    """One thread's open transaction: its lock token and buffered writes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.depth = 1
        self.writes: dict[str, object] = {}


class RedisKV:
    """The diskcache subset `StateStore` needs, on database `client` under key `namespace`.

    Thread-safe like `diskcache.Cache`: each thread has its own transaction; the client's
    connection pool is shared.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        timeout: float,
        lock_ttl: float,
        fast_get: FastGet | None = None,
    ) -> None:
        self._client = client
        # Plain reads outside a transaction (the store-ID helper's lookup) skip redis-py.
        self._fast_get = fast_get
        self._ns = namespace
        self._index = namespace + "names"
        self._lock = namespace + "lock"
        self._timeout = timeout
        self._lock_ms = max(int(lock_ttl * 1000), 1)
        self._local = threading.local()
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)

    # -------------------------------------------------------------------------- the map

    def get(self, key: str, default: object = None) -> object:
        txn = self._txn()
        if txn is not None and key in txn.writes:
            value = txn.writes[key]
            return default if value is _DELETED else value
        if self._fast_get is not None and txn is None:
            try:
                raw = self._fast_get.get(self._ns + "v:" + key)
            except RedisGetError as exc:
                raise RedisStorageError(str(exc)) from exc
        else:
            with _errors():
                raw = cast(str | None, self._client.get(self._ns + "v:" + key))
        value = _decode(raw)
        return default if value is None else value

    def set(self, key: str, value: object) -> bool:
        _encode(value)  # refuse a type the commit could not store, here rather than there
        txn = self._txn()
        if txn is None:
            with self.transact():
                return self.set(key, value)
        txn.writes[key] = value
        return True

    def delete(self, key: str) -> bool:
        txn = self._txn()
        if txn is None:
            with self.transact():
                return self.delete(key)
        existed = self.get(key) is not None
        txn.writes[key] = _DELETED
        return existed

    def incr(self, key: str, delta: int = 1, default: int = 0) -> int:
        with self.transact():
            value = self.get(key, default)
            if not isinstance(value, int):
                raise RedisStorageError(f"{key!r} does not hold a number")
            self.set(key, value + delta)
            return value + delta

    def peek(self, prefix: str) -> tuple[object, object]:
        """The smallest ``prefix-…`` name and its value, or (None, None); sees the writes of
        this thread's open transaction."""
        start = prefix + "-"
        txn = self._txn()
        buffered = {} if txn is None else txn.writes
        best: str | None = None
        for name in self.names_from(start):
            if not name.startswith(start):
                break
            if buffered.get(name) is not _DELETED:
                best = name
                break
        for name, value in buffered.items():
            if value is not _DELETED and name.startswith(start) and (best is None or name < best):
                best = name
        if best is None:
            return None, None
        return best, self.get(best)

    def iterkeys(self) -> Iterator[object]:
        """Every committed name, sorted; with none, any other key in our namespace (so that a
        namespace another program uses is not taken for an empty state)."""
        empty = True
        for name in self.names_from(""):
            empty = False
            yield name
        if empty:
            with _errors():
                for raw in self._client.scan_iter(match=self._ns + "*", count=100):
                    if raw != self._lock:
                        yield str(raw)[len(self._ns) :]
                        return

    def names_from(self, start: str) -> Iterator[str]:
        """Committed names from `start` on, sorted, read a page at a time."""
        low = "[" + start if start else "-"
        while True:
            with _errors():
                page = cast(list[str], self._client.zrangebylex(self._index, low, "+", 0, _PAGE))
            yield from page
            if len(page) < _PAGE:
                return
            low = "(" + page[-1]

    def close(self) -> None:
        if self._fast_get is not None:
            self._fast_get.close()
        self._client.close()

    # ------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        txn = self._txn()
        if txn is not None:  # nested: part of the outer transaction, as in diskcache
            txn.depth += 1
            try:
                yield
            finally:
                txn.depth -= 1
            return
        txn = _Txn(self._acquire())
        self._local.txn = txn
        try:
            yield
        except BaseException:
            self._local.txn = None
            with contextlib.suppress(redis.RedisError):
                self._release(keys=[self._lock], args=[txn.token])
            raise
        self._local.txn = None
        args: list[Any] = [txn.token, self._ns]
        for name, value in txn.writes.items():
            if value is _DELETED:
                args += [name, "0", ""]
            else:
                args += [name, "1", _encode(value)]
        with _errors():
            committed = self._commit(keys=[self._lock, self._index], args=args)
        if not committed:
            raise RedisStorageError(
                f"the state lock was no longer ours at the commit (held over {self._lock_ms} "
                "ms, or a commit retried after a lost reply)"
            )

    def _acquire(self) -> str:
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self._timeout
        pause = 0.001
        while True:
            with _errors():
                if self._client.set(self._lock, token, nx=True, px=self._lock_ms):
                    return token
                # A SET retried after its reply was lost finds the lock taken, by us.
                if self._client.get(self._lock) == token:
                    return token
            if time.monotonic() >= deadline:
                raise RedisStorageError("timed out waiting for the lock held by another process")
            time.sleep(pause)
            pause = min(pause * 2, _MAX_BACKOFF)

    def _txn(self) -> _Txn | None:
        txn: _Txn | None = getattr(self._local, "txn", None)
        return txn


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise RedisStorageError(str(exc) or type(exc).__name__) from exc
