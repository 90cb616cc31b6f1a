"""`StateConnection`: the key-value map under a state store, its transactions and its errors.

The store keeps everything in one sorted key-value map (`patchcache.state.layout` says what is
where): a diskcache directory (`StateStore`) or a Redis database (`RedisStateStore`, through
`patchcache.state.redis_kv`, which offers the same surface). This layer is all the rest of the
store knows of it: plain reads, one atomic read-modify-write at a time (``transact()``, SQLite
``BEGIN IMMEDIATE`` or the Redis state lock), listing names by prefix, and the schema check at
open. Storage failures become `StateError` naming where the state lives.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import diskcache  # type: ignore[import-untyped]

from patchcache.errors import StateError
from patchcache.state.layout import SCHEMA_VERSION

SCHEMA_KEY = "meta:schema"

# What diskcache and SQLite raise when the directory or database is unusable or locked too
# long; the Redis map raises `OSError` (`RedisStorageError`).
STORAGE_ERRORS = (sqlite3.Error, diskcache.Timeout, OSError)


class KeyValueMap(Protocol):
    """The part of `diskcache.Cache` the store uses (diskcache ships no type hints);
    `patchcache.state.redis_kv.RedisKV` offers the same on Redis."""

    def get(self, key: str, default: object = None) -> object: ...
    def set(self, key: str, value: object) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def incr(self, key: str, delta: int = 1, default: int = 0) -> int: ...
    def peek(self, prefix: str) -> tuple[object, object]: ...
    def transact(self) -> contextlib.AbstractContextManager[None]: ...
    def iterkeys(self) -> Iterator[object]: ...
    def close(self) -> None: ...


def clock(now: float | None) -> float:
    """`now` if the caller passed one (tests, simulation), else the wall clock."""
    return time.time() if now is None else now


def check_size(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} cannot be negative, got {value}")


class StateConnection:
    """An open key-value map and where it lives (`_path`: the directory, or for Redis the URL
    standing in for one in messages). Subclasses open the map and call `_attach`."""

    _cache: KeyValueMap
    _path: Path

    def _attach(self, cache: KeyValueMap, path: Path) -> None:
        """Use `cache` as the state at `path`; closes it again if its schema is refused."""
        self._cache = cache
        self._path = path
        try:
            self._check_schema()
        except BaseException:
            cache.close()
            raise

    def close(self) -> None:
        self._cache.close()

    def _check_schema(self) -> None:
        with self._transaction():
            version = self._cache.get(SCHEMA_KEY)
            if version is None:
                if next(iter(self._cache.iterkeys()), None) is not None:
                    raise StateError(
                        f"{self._path} holds a diskcache that is not a patchcache state dir"
                    )
                self._cache.set(SCHEMA_KEY, SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise StateError(
                    f"state dir {self._path} has schema version {version!r}; this patchcache "
                    f"reads version {SCHEMA_VERSION}"
                )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One atomic read-modify-write across processes; storage failures become StateError."""
        try:
            with self._cache.transact():
                yield
        except STORAGE_ERRORS as exc:
            raise self._storage_error("update", exc) from exc

    def _read(self, name: str) -> object:
        """The value at `name` (None if none), read without taking the lock."""
        try:
            return self._cache.get(name)
        except STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc

    def _names_with_prefix(self, prefix: str) -> Iterator[str]:
        """Cache keys starting with `prefix`, in sort order (keys are iterated sorted, so the
        walk stops once past the prefix)."""
        try:
            for name in self._cache.iterkeys():
                if not isinstance(name, str) or name < prefix:
                    continue
                if not name.startswith(prefix):
                    return
                yield name
        except STORAGE_ERRORS as exc:
            raise self._storage_error("list", exc) from exc

    def _storage_error(self, doing: str, exc: BaseException) -> StateError:
        if isinstance(exc, diskcache.Timeout):
            reason = "timed out waiting for the lock held by another process"
        else:
            reason = str(exc) or type(exc).__name__
        return StateError(f"cannot {doing} state dir {self._path}: {reason}")
