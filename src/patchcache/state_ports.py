"""The parts of the state store that components write through, as Protocols, and the base of
the components that pass those writes on to a store.

Kept apart from `patchcache.state` so that a helper or the ICAP service can name what it needs
without importing the store (and diskcache) at start-up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol


class FirstSightRecorder(Protocol):
    """What the ICAP service and the store-ID helper's size look-up write to the state."""

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
    ) -> bool: ...

    def record_too_big(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
    ) -> bool: ...


class DemandRecorder(FirstSightRecorder, Protocol):
    """A `FirstSightRecorder` that also counts the demand for objects of classes that expand
    only after some (`expand_after`), and parks an expandable object whose responses Squid will
    no longer store: what the ICAP service writes when the state has it."""

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
    ) -> bool: ...

    def record_unstorable(self, key: str, reason: str) -> bool: ...


StateWrite = Callable[[DemandRecorder], bool]
"""One write, made on the recorder it is given; returns that recorder's answer."""


class ForwardingRecorder(ABC):
    """A `DemandRecorder` that passes each write on, as a `StateWrite`, to `_forward`: which
    decides on what recorder, when and in what thread it is made, and what to answer."""

    @abstractmethod
    def _forward(self, kind: str, tag: str, write: StateWrite) -> bool:
        """Make or schedule `write`: a `kind` of write ("first sight", "too big", "demand",
        "unstorable")
        that `tag` tells apart from other writes of that kind (the key, for demand the key
        and the range asked)."""

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
        return self._forward(
            "first sight",
            key,
            lambda state: state.record_first_sight(
                key, url, class_name, total_size, etag, last_modified, due_at=due_at
            ),
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
        return self._forward(
            "too big",
            key,
            lambda state: state.record_too_big(
                key, url, class_name, total_size, etag, last_modified
            ),
        )

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
        return self._forward(
            "demand",
            f"{key} {client} {first}-{last}",
            lambda state: state.record_demand(
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
            ),
        )

    def record_unstorable(self, key: str, reason: str) -> bool:
        return self._forward("unstorable", key, lambda state: state.record_unstorable(key, reason))
