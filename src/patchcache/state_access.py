"""Open the shared state store lazily, once per process.

Squid starts helper processes and the ICAP service may fork workers: a diskcache (SQLite)
connection must not cross a fork, so each process opens its own store on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from patchcache.state import StateStore
from patchcache.state_ports import ForwardingRecorder, StateWrite
from patchcache.state_spec import StateSpec


class LazyState(ForwardingRecorder):
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

    def _forward(self, kind: str, tag: str, write: StateWrite) -> bool:
        return write(self.store())
