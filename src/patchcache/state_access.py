"""Open the shared state store lazily, once per process.

Squid starts helper processes and the ICAP service may fork workers: a diskcache (SQLite)
connection must not cross a fork, so each process opens its own store on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from patchcache.state import StateStore
from patchcache.state_spec import StateSpec


class LazyState:
    """Forwards the calls the helpers and the ICAP service make to a per-process StateStore
    (a Redis client's connections must not cross a fork either)."""

    def __init__(self, state: StateSpec | Path) -> None:
        self._state = state if isinstance(state, StateSpec) else StateSpec(str(state))
        self._store: StateStore | None = None
        self._pid = -1

    def store(self) -> StateStore:
        if self._store is None or self._pid != os.getpid():
            self._store = self._state.open()
            self._pid = os.getpid()
        return self._store

    def expandable(self, key: str) -> bool:
        return self.store().expandable(key)

    def record_first_sight(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
        *,
        due_at: float | None = None,
    ) -> bool:
        return self.store().record_first_sight(
            key, url, class_name, total_size, etag, last_modified, due_at=due_at
        )

    def record_too_big(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
    ) -> bool:
        return self.store().record_too_big(key, url, class_name, total_size, etag, last_modified)

    def record_demand(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
        *,
        client: str,
        first: int,
        last: int,
        clients_needed: int,
        fraction: float,
        due_at: float | None = None,
    ) -> bool:
        return self.store().record_demand(
            key,
            url,
            class_name,
            total_size,
            etag,
            last_modified,
            client=client,
            first=first,
            last=last,
            clients_needed=clients_needed,
            fraction=fraction,
            due_at=due_at,
        )
