"""`RedisStateStore`: the shared state in a Redis database, for several boxes.

It is a `StateStore` whose key-value map is Redis (`patchcache.state.redis_kv`) instead of a
diskcache directory: every transition runs the same code, so the semantics are the directory's
(first sight once, one lease per job, the queue order, the key-scheme guard), now across every
box that opens the same database. With Redis persistence on (appendonly), a Redis restart loses
no job; while Redis is away, calls raise `StateError` and the callers' usual handling applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from patchcache.errors import StateError
from patchcache.state.redis_get import FastGet
from patchcache.state.redis_kv import RedisKV
from patchcache.state.redis_url import RedisTarget
from patchcache.state.store import StateStore

# The whole-state lock expires this long after a holder died with it; transactions are a few
# round trips, so any live holder is done long before.
_LOCK_TTL = 5.0
_CONNECT_TIMEOUT = 2.0


class _Where(str):
    """The Redis URL (without password) where `StateStore` puts its directory in messages."""


class RedisStateStore(StateStore):
    """The state of one patchcache installation in the Redis database `target` names.

    Same contract as `StateStore` (see there). Raises `StateError` naming the URL if Redis
    cannot be reached, holds another schema version, or holds foreign keys in our namespace.
    """

    def __init__(self, target: RedisTarget, *, timeout: float = 10.0) -> None:
        self._target = target
        client = redis.Redis(
            host=target.host,
            port=target.port,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.tls,
            decode_responses=True,
            socket_connect_timeout=min(timeout, _CONNECT_TIMEOUT),
            socket_timeout=timeout,
            # A short retry rides out a reconnect; a Redis that stays away must fail fast (the
            # store-ID helper then answers without expansion) rather than stall Squid.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
        )
        kv = RedisKV(
            client,
            target.namespace,
            timeout=timeout,
            lock_ttl=_LOCK_TTL,
            fast_get=FastGet(target, timeout=min(timeout, _CONNECT_TIMEOUT)),
        )
        self._attach(kv, cast(Path, _Where(target.display)))

    @property
    def path(self) -> Path:
        raise StateError(f"the state at {self._target.display} is in Redis, not a directory")

    @property
    def location(self) -> str:
        return self._target.display

    def _names_with_prefix(self, prefix: str) -> Iterator[str]:
        # Straight to the prefix in the sorted name index rather than walking from the start.
        cache = cast(RedisKV, self._cache)
        try:
            for name in cache.names_from(prefix):
                if not name.startswith(prefix):
                    return
                yield name
        except OSError as exc:
            raise self._storage_error("list", exc) from exc
