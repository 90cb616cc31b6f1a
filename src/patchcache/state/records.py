"""The values kept in the shared state: one `ObjectRecord` per object, one `Job` per queued fill.

Both are frozen and JSON-friendly: `to_dict()` gives plain str/int/float/None values (the form
stored on disk and printed by `patchcache status --json`), `from_dict()` reads that form back and
raises `ValueError` on anything else. See `patchcache.state` for the states and transitions.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypedDict, cast

JSONScalar: TypeAlias = str | int | float | None


class ObjectState(enum.StrEnum):
    """Where an object is in the prefetch loop (see the module docs of `patchcache.state`)."""

    QUEUED = "queued"
    FILLING = "filling"
    COMPLETE = "complete"
    TOO_BIG = "too_big"
    FAILED = "failed"
    PARKED = "parked"


# States in which the store-ID helper answers expand=1 (Squid fetches the whole object).
EXPANDABLE_STATES: frozenset[str] = frozenset(
    {ObjectState.QUEUED, ObjectState.FILLING, ObjectState.COMPLETE}
)

# States of a record whose size, still unknown, a first sight may fill in: a pre-positioned
# job held by `--delay` or an off-peak window (queued), or being fetched (filling).
SIZE_LEARNABLE_STATES: frozenset[str] = frozenset({ObjectState.QUEUED, ObjectState.FILLING})

DigestCheck: TypeAlias = Literal["ok", "mismatch"]
_DIGEST_CHECKS: frozenset[str] = frozenset({"ok", "mismatch"})


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """What patchcache knows about one update object, keyed by its store-ID."""

    key: str
    """The store-ID (Squid's cache key for the object)."""
    url: str
    """The URL the prefetcher fetches (through Squid) to fill the cache."""
    class_name: str
    """The rules class that matched the object."""
    total_size: int | None
    """Full size in bytes, from Content-Range or Content-Length; None while unknown."""
    etag: str | None
    last_modified: str | None
    state: ObjectState
    attempts: int
    """How many times a prefetcher has taken the job (counted when taken)."""
    bytes_filled: int
    """Progress of the current (or last) fill, reported by the prefetcher."""
    digest_check: DigestCheck | None
    """Outcome of the prefetcher's digest check of the last complete fill, if any."""
    first_seen: float
    updated: float
    last_error: str | None
    next_attempt_at: float | None
    """When a queued job becomes (or became) due; None when no job waits."""

    @property
    def expandable(self) -> bool:
        """True when the store-ID helper should answer expand=1 for this object."""
        return self.total_size is not None and self.state in EXPANDABLE_STATES

    def to_dict(self) -> dict[str, JSONScalar]:
        return {
            **_identity_dict(self),
            "state": self.state.value,
            "attempts": self.attempts,
            "bytes_filled": self.bytes_filled,
            "digest_check": self.digest_check,
            "first_seen": self.first_seen,
            "updated": self.updated,
            "last_error": self.last_error,
            "next_attempt_at": self.next_attempt_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ObjectRecord:
        """Read the `to_dict()` form; raises `ValueError` naming the first bad field."""
        state = _str(data, "state")
        try:
            object_state = ObjectState(state)
        except ValueError:
            raise ValueError(f"state: unknown state {state!r}") from None
        digest = _opt_str(data, "digest_check")
        if digest is not None and digest not in _DIGEST_CHECKS:
            raise ValueError(f"digest_check: must be 'ok', 'mismatch' or null, not {digest!r}")
        return cls(
            **_identity(data),
            state=object_state,
            attempts=_count(data, "attempts"),
            bytes_filled=_count(data, "bytes_filled"),
            digest_check=cast("DigestCheck | None", digest),
            first_seen=_time(data, "first_seen"),
            updated=_time(data, "updated"),
            last_error=_opt_str(data, "last_error"),
            next_attempt_at=_opt_time(data, "next_attempt_at"),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A queued fill of one object; at most one exists per key.

    `take_job()` hands out a Job with `owner`, `lease_token` and `lease_expires` set; the holder
    passes it back to `renew()`, `complete()`, `fail()` or `mark_too_big()`. A Job listed by
    `StateStore.jobs()` that nobody holds has those three set to None (or holds an expired lease).
    """

    key: str
    url: str
    class_name: str
    total_size: int | None
    etag: str | None
    last_modified: str | None
    attempt: int
    """The record's attempt count when the job was last taken (1 on the first take)."""
    due_at: float
    """When the job becomes takeable: enqueue or retry time, or the lease expiry while leased."""
    owner: str | None
    lease_token: str | None
    lease_expires: float | None

    def leased_at(self, now: float) -> bool:
        """True while a live (unexpired) lease holds the job."""
        return self.lease_expires is not None and now < self.lease_expires

    def to_dict(self) -> dict[str, JSONScalar]:
        return {
            **_identity_dict(self),
            "attempt": self.attempt,
            "due_at": self.due_at,
            "owner": self.owner,
            "lease_token": self.lease_token,
            "lease_expires": self.lease_expires,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Job:
        """Read the `to_dict()` form; raises `ValueError` naming the first bad field."""
        return cls(
            **_identity(data),
            attempt=_count(data, "attempt"),
            due_at=_time(data, "due_at"),
            owner=_opt_str(data, "owner"),
            lease_token=_opt_str(data, "lease_token"),
            lease_expires=_opt_time(data, "lease_expires"),
        )


class _Identity(TypedDict):
    """What an `ObjectRecord` and its `Job` both say of the object: which one it is, where it is
    fetched, its class and what its origin told of it."""

    key: str
    url: str
    class_name: str
    total_size: int | None
    etag: str | None
    last_modified: str | None


def _identity_dict(item: ObjectRecord | Job) -> dict[str, JSONScalar]:
    """The `to_dict()` fields the record and the job share (first in both, in this order)."""
    return {
        "key": item.key,
        "url": item.url,
        "class_name": item.class_name,
        "total_size": item.total_size,
        "etag": item.etag,
        "last_modified": item.last_modified,
    }


def _identity(data: Mapping[str, object]) -> _Identity:
    """Read the shared fields of the `to_dict()` form (`ValueError` naming the first bad one)."""
    return {
        "key": _str(data, "key"),
        "url": _str(data, "url"),
        "class_name": _str(data, "class_name"),
        "total_size": _opt_count(data, "total_size"),
        "etag": _opt_str(data, "etag"),
        "last_modified": _opt_str(data, "last_modified"),
    }


def _field(data: Mapping[str, object], name: str) -> object:
    if name not in data:
        raise ValueError(f"{name}: missing")
    return data[name]


def _str(data: Mapping[str, object], name: str) -> str:
    value = _field(data, name)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _opt_str(data: Mapping[str, object], name: str) -> str | None:
    value = _field(data, name)
    return None if value is None else _str(data, name)


def _count(data: Mapping[str, object], name: str) -> int:
    value = _field(data, name)
    # bool is an int subclass; a JSON true here is a bug, not a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _opt_count(data: Mapping[str, object], name: str) -> int | None:
    value = _field(data, name)
    return None if value is None else _count(data, name)


def _time(data: Mapping[str, object], name: str) -> float:
    value = _field(data, name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite epoch time, got {value!r}")
    return float(value)


def _opt_time(data: Mapping[str, object], name: str) -> float | None:
    value = _field(data, name)
    return None if value is None else _time(data, name)
