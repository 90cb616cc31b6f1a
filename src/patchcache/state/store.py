"""`StateStore`: the records and the job queue in one diskcache directory, safe across processes.

Every method that changes anything runs inside one ``Cache.transact()`` (SQLite ``BEGIN
IMMEDIATE``), so a read-check-write is atomic against every other process using the same
directory. Plain reads (`get`, `expandable`) take no lock: SQLite in WAL mode lets them run while
a writer holds the lock. See `patchcache.state` for the states, transitions and queue semantics.

The store is put together from one part per job, each in its own module, all over the same
key-value map (`RedisStateStore` runs the same parts over Redis):

- `patchcache.state.connection`: the map, its transactions and errors, the schema check;
- `patchcache.state.entries`: a record and its job, written in step (`LeaseLostError`);
- `patchcache.state.reads`: lookups and listings;
- `patchcache.state.sightings`: first sights, too big, demand and pre-positioning;
- `patchcache.state.queue`: the prefetcher's jobs and leases, requeue, defer, forget;
- `patchcache.state.keyscheme_guard`: the key-scheme guard at a service's start.

This module opens the directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import cast

import diskcache  # type: ignore[import-untyped]

from patchcache.errors import StateError
from patchcache.state.connection import STORAGE_ERRORS, KeyValueMap
from patchcache.state.entries import LeaseLostError
from patchcache.state.keyscheme_guard import KeySchemeGuard
from patchcache.state.queue import JobQueue
from patchcache.state.reads import StateReads
from patchcache.state.sightings import Sightings

__all__ = ["LeaseLostError", "StateStore"]

# diskcache settings. The state must never be evicted (eviction_policy "none"), and reads must
# not write (statistics off), so that `get` stays a single SELECT without a transaction.
_CACHE_SETTINGS: dict[str, object] = {
    "eviction_policy": "none",
    "statistics": 0,
    "tag_index": 0,
    "cull_limit": 0,
    "size_limit": 2**62,
}


class StateStore(Sightings, JobQueue, KeySchemeGuard, StateReads):
    """The shared state of one patchcache installation, kept in `state_dir`.

    Open it once at the edge of a program and pass it inward. Each process opens its own
    StateStore; one StateStore may be used from several threads. The directory is created if
    missing. Raises `StateError` (with the path) if the directory cannot be opened, holds a
    different schema version, or is not a patchcache state directory.
    """

    def __init__(self, state_dir: Path, *, timeout: float = 10.0) -> None:
        path = Path(state_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            cache = diskcache.Cache(str(path), timeout=timeout, **_CACHE_SETTINGS)
        except STORAGE_ERRORS as exc:
            raise StateError(f"cannot open state dir {path}: {exc}") from exc
        self._attach(cast(KeyValueMap, cache), path)
        _files_to_directory_owner(path)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        """Where the state lives, for messages and status: the directory or the Redis URL."""
        return str(self._path)

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _files_to_directory_owner(path: Path) -> None:
    """Give the database files root just created or opened in a directory another user owns
    back to that user. Squid runs the helpers as `proxy`; had root (an admin's `patchcache
    status`, a test) created ``cache.db`` or its ``-wal``/``-shm`` first, SQLite would open it
    read-only for them ("attempt to write a readonly database") and nothing would be expanded
    again, silently. Only regular files directly in the directory are touched."""
    if os.geteuid() != 0:
        return
    try:
        owner = path.stat()
        if owner.st_uid == 0:
            return
        for child in path.iterdir():
            info = child.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_uid != owner.st_uid:
                os.chown(child, owner.st_uid, owner.st_gid, follow_symlinks=False)
    except OSError as exc:
        raise StateError(f"cannot give the files of state dir {path} to its owner: {exc}") from exc
