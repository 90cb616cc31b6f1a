"""`StateBackend`: what a shared-state implementation offers the rest of patchcache.

Two implementations: `StateStore` (a diskcache directory, one box) and `RedisStateStore` (a
Redis database, any number of boxes). Both pass the same contract tests
(tests/unit/test_state.py runs its semantic tests over both).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from patchcache.state.keyschemes import ClassScheme, Retirement
from patchcache.state.records import DigestCheck, Job, ObjectRecord, ObjectState


class StateBackend(Protocol):
    @property
    def location(self) -> str: ...
    def close(self) -> None: ...

    # reads
    def get(self, key: str) -> ObjectRecord | None: ...
    def expandable(self, key: str) -> bool: ...
    def get_job(self, key: str) -> Job | None: ...
    def records(self, states: Iterable[ObjectState] | None = None) -> list[ObjectRecord]: ...
    def jobs(self) -> list[Job]: ...
    def queue_length(self) -> int: ...
    def counts_by_state(self) -> dict[ObjectState, int]: ...
    def key_schemes(self) -> dict[str, ClassScheme] | None: ...
    def retirements(self) -> list[Retirement]: ...

    # the key-scheme guard
    def apply_key_schemes(
        self, current: Mapping[str, ClassScheme], *, now: float | None = None
    ) -> list[Retirement]: ...

    # first sight and admin changes
    def record_first_sight(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
        *,
        now: float | None = None,
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
        *,
        now: float | None = None,
    ) -> bool: ...
    def enqueue_url(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        *,
        due_at: float | None = None,
        now: float | None = None,
    ) -> bool: ...
    def requeue(
        self,
        key: str,
        *,
        due_at: float | None = None,
        reset_attempts: bool = True,
        now: float | None = None,
    ) -> bool: ...
    def forget(self, key: str) -> bool: ...
    def defer(self, key: str, due_at: float, *, now: float | None = None) -> bool: ...

    # the queue and leases
    def take_job(
        self,
        owner: str,
        lease_seconds: float,
        *,
        max_attempts: int | None = None,
        now: float | None = None,
    ) -> Job | None: ...
    def renew(
        self,
        job: Job,
        *,
        lease_seconds: float,
        bytes_filled: int | None = None,
        total_size: int | None = None,
        now: float | None = None,
    ) -> Job: ...
    def complete(
        self,
        job: Job,
        *,
        digest_check: DigestCheck | None = None,
        total_size: int | None = None,
        now: float | None = None,
    ) -> ObjectRecord: ...
    def release(
        self, job: Job, *, due_at: float | None = None, now: float | None = None
    ) -> None: ...
    def fail(
        self,
        job: Job,
        error: str,
        *,
        retry_at: float,
        max_attempts: int,
        digest_check: DigestCheck | None = None,
        now: float | None = None,
    ) -> bool: ...
    def mark_too_big(
        self, job: Job, total_size: int, *, now: float | None = None
    ) -> ObjectRecord: ...


def _implementations_conform() -> None:
    """Checked by mypy, never run: both stores are StateBackends."""
    from patchcache.state.redis_store import RedisStateStore
    from patchcache.state.store import StateStore

    backends: list[type[StateBackend]] = [StateStore, RedisStateStore]
    del backends
