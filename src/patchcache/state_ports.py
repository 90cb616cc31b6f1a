"""The parts of the state store that components write through, as Protocols.

Kept apart from `patchcache.state` so that a helper or the ICAP service can name what it needs
without importing the store (and diskcache) at start-up.
"""

from __future__ import annotations

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
