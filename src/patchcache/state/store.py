"""`StateStore`: the records and the job queue in one diskcache directory, safe across processes.

Every method that changes anything runs inside one ``Cache.transact()`` (SQLite ``BEGIN
IMMEDIATE``), so a read-check-write is atomic against every other process using the same
directory. Plain reads (`get`, `expandable`) take no lock: SQLite in WAL mode lets them run while
a writer holds the lock. See `patchcache.state` for the states, transitions and queue semantics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, TypeVar, cast

import diskcache  # type: ignore[import-untyped]

from patchcache.errors import StateError
from patchcache.state.keyschemes import (
    CHUNK,
    ClassScheme,
    Retirement,
    class_needle,
    decode_events,
    decode_schemes,
    encode_events,
    encode_schemes,
    plan,
    started_events,
)
from patchcache.state.layout import (
    DEMAND_PREFIX,
    JOB_PREFIX,
    RECORD_PREFIX,
    SCHEMA_VERSION,
    SLOT_PREFIX,
    Demand,
    QueueEntry,
    add_demand,
    decode_demand,
    decode_record,
    encode_demand,
    encode_record,
    job_from,
    slot_key,
    stored_expandable,
)
from patchcache.state.records import (
    EXPANDABLE_STATES,
    DigestCheck,
    Job,
    ObjectRecord,
    ObjectState,
)

_SCHEMA_KEY = "meta:schema"
_SEQUENCE_KEY = "meta:seq"
_SCHEMES_KEY = "meta:keyschemes"
_RETIRED_KEY = "meta:retired"
# "<token> <expiry>": which process is retiring records, until when (see _finish_retirements).
_RETIRE_LEASE_KEY = "meta:retiring"
_RETIRE_LEASE = 30.0
_RETIRE_POLL = 0.2

# diskcache settings. The state must never be evicted (eviction_policy "none"), and reads must
# not write (statistics off), so that `get` stays a single SELECT without a transaction.
_CACHE_SETTINGS: dict[str, object] = {
    "eviction_policy": "none",
    "statistics": 0,
    "tag_index": 0,
    "cull_limit": 0,
    "size_limit": 2**62,
}

# What diskcache and SQLite raise when the directory or database is unusable or locked too long.
_STORAGE_ERRORS = (sqlite3.Error, diskcache.Timeout, OSError)

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
# States whose records a smaller max_object_size turns too_big: those the store-ID helper
# expands or the prefetcher will fill.
_SIZE_JUDGED = frozenset({*EXPANDABLE_STATES, ObjectState.FAILED})
# States of a record whose size, still unknown, a first sight may fill in: a pre-positioned
# job held by `--delay` or an off-peak window (queued), or being fetched (filling).
_SIZE_LEARNABLE = frozenset({ObjectState.QUEUED, ObjectState.FILLING})


class LeaseLostError(StateError):
    """The job's lease is no longer held by the caller: another prefetcher took the job after the
    lease expired, or an admin requeued or forgot it. The caller must stop working on the job."""

    status_hint = 409


class _Cache(Protocol):
    """The part of `diskcache.Cache` this module uses (diskcache ships no type hints)."""

    def get(self, key: str, default: object = None) -> object: ...
    def set(self, key: str, value: object) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def incr(self, key: str, delta: int = 1, default: int = 0) -> int: ...
    def peek(self, prefix: str) -> tuple[object, object]: ...
    def transact(self) -> contextlib.AbstractContextManager[None]: ...
    def iterkeys(self) -> Iterator[object]: ...
    def close(self) -> None: ...


def _clock(now: float | None) -> float:
    return time.time() if now is None else now


def _lease_free(raw: object, token: str, now: float) -> bool:
    """True unless `raw` (the stored lease) is another holder's and not yet expired."""
    if not isinstance(raw, str):
        return True
    holder, _, expires = raw.partition(" ")
    try:
        return holder == token or float(expires) <= now
    except ValueError:
        return True


def _add_counts(
    events: list[Retirement], counts: Mapping[tuple[str, str, float], tuple[int, int]]
) -> list[Retirement]:
    out = []
    for event in events:
        records, jobs = counts.get(event.identity, (0, 0))
        if records or jobs:
            event = dataclasses.replace(
                event, records=event.records + records, jobs=event.jobs + jobs
            )
        out.append(event)
    return out


def _check_size(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} cannot be negative, got {value}")


class StateStore:
    """The shared state of one patchcache installation, kept in `state_dir`.

    Open it once at the edge of a program and pass it inward. Each process opens its own
    StateStore; one StateStore may be used from several threads. The directory is created if
    missing. Raises `StateError` (with the path) if the directory cannot be opened, holds a
    different schema version, or is not a patchcache state directory.
    """

    def __init__(self, state_dir: Path, *, timeout: float = 10.0) -> None:
        self._path = Path(state_dir)
        try:
            self._path.mkdir(parents=True, exist_ok=True)
            cache = diskcache.Cache(str(self._path), timeout=timeout, **_CACHE_SETTINGS)
        except _STORAGE_ERRORS as exc:
            raise StateError(f"cannot open state dir {self._path}: {exc}") from exc
        self._cache = cast(_Cache, cache)
        try:
            self._check_schema()
        except BaseException:
            self._cache.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        """Where the state lives, for messages and status: the directory or the Redis URL."""
        return str(self._path)

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reads (no lock taken)

    def get(self, key: str) -> ObjectRecord | None:
        """The record for `key`, or None."""
        try:
            raw = self._cache.get(RECORD_PREFIX + key)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc
        return None if raw is None else self._decode_record(key, raw)

    def expandable(self, key: str) -> bool:
        """True if the store-ID helper should answer expand=1 for `key`.

        That is: a record exists, its total size is known, and it is queued, filling or complete.
        One diskcache get (a single SQLite SELECT, no lock); only the record's stored
        expandable flag is read, the JSON is not parsed (see `patchcache.state.layout`).
        """
        try:
            raw = self._cache.get(RECORD_PREFIX + key)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc
        if raw is None:
            return False
        try:
            return stored_expandable(raw)
        except ValueError as exc:
            raise self._unreadable(key, exc) from exc

    def expansion(self, key: str) -> bool | None:
        """`expandable(key)` with a third answer: None while nothing is known of the object's size
        (no record, or a pre-positioned record still waiting without one). The store-ID helper
        then looks the size up itself before answering (a HEAD, see `patchcache.helpers`).

        Same cost as `expandable` for records that expand; a record that does not is parsed."""
        try:
            raw = self._cache.get(RECORD_PREFIX + key)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc
        if raw is None:
            return None
        try:
            if stored_expandable(raw):
                return True
        except ValueError as exc:
            raise self._unreadable(key, exc) from exc
        record = self._decode_record(key, raw)
        if record.total_size is None and record.state in _SIZE_LEARNABLE:
            return None
        return False

    def get_job(self, key: str) -> Job | None:
        """The queued job for `key` (leased or not), or None if no job is queued."""
        with self._transaction():
            found = self._load_job(key)
            if found is None:
                return None
            record, entry = found
            return job_from(record, entry)

    def records(self, states: Iterable[ObjectState] | None = None) -> list[ObjectRecord]:
        """All records (optionally only those in `states`), oldest first.

        Not a snapshot: records changed while listing appear in their old or new form.
        """
        wanted = None if states is None else frozenset(states)
        found: list[ObjectRecord] = []
        for name in self._names_with_prefix(RECORD_PREFIX):
            record = self.get(name[len(RECORD_PREFIX) :])
            if record is not None and (wanted is None or record.state in wanted):
                found.append(record)
        found.sort(key=lambda record: (record.first_seen, record.key))
        return found

    def jobs(self) -> list[Job]:
        """All queued jobs (leased or not) in queue order: the next one `take_job` considers
        first. A leased job sorts by its lease expiry."""
        found: list[Job] = []
        for name in self._names_with_prefix(SLOT_PREFIX + "-"):
            try:
                key = self._cache.get(name)
            except _STORAGE_ERRORS as exc:
                raise self._storage_error("read", exc) from exc
            if isinstance(key, str):
                job = self.get_job(key)
                if job is not None:
                    found.append(job)
        return found

    def queue_length(self) -> int:
        """How many jobs are queued, leased ones included."""
        return sum(1 for _ in self._names_with_prefix(JOB_PREFIX))

    def counts_by_state(self) -> dict[ObjectState, int]:
        """Number of records in each state (every state present, zero if none)."""
        counts = dict.fromkeys(ObjectState, 0)
        for record in self.records():
            counts[record.state] += 1
        return counts

    def key_schemes(self) -> dict[str, ClassScheme] | None:
        """The key scheme recorded for each class, or None if none was ever recorded."""
        try:
            raw = self._cache.get(_SCHEMES_KEY)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc
        return None if raw is None else self._decode_meta(decode_schemes, raw, "key schemes")

    def retirements(self) -> list[Retirement]:
        """What the key-scheme guard retired or re-judged, oldest first."""
        try:
            raw = self._cache.get(_RETIRED_KEY)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc
        return [] if raw is None else self._decode_meta(decode_events, raw, "retirements")

    # ------------------------------------------------------------- the key-scheme guard (start)

    def apply_key_schemes(
        self, current: Mapping[str, ClassScheme], *, now: float | None = None
    ) -> list[Retirement]:
        """At a service's start: compare `current` (class -> scheme, from the rules) with what
        was recorded, retire the records and jobs of every class whose key scheme changed,
        re-judge by size the records of classes whose max_object_size changed, and record
        `current`. Returns the retirements this call started, with their final counts (empty
        when nothing changed or another process had already started them).

        The decision is one transaction: of several processes starting together, one decides
        and the others find the schemes recorded. Every caller then waits until no retirement is
        unfinished; one of them does the work, in short transactions
        (`patchcache.state.keyschemes`)."""
        # Lock-free first look: every helper process Squid starts runs this, and usually
        # nothing changed.
        events = self.retirements()
        if not plan(self.key_schemes(), current).write and all(e.done for e in events):
            return []
        now = _clock(now)
        started: list[Retirement] = []
        with self._transaction():
            raw = self._cache.get(_SCHEMES_KEY)
            recorded = (
                None if raw is None else self._decode_meta(decode_schemes, raw, "key schemes")
            )
            todo = plan(recorded, current)
            if todo.write:
                started = started_events(todo, now)
                self._cache.set(_SCHEMES_KEY, encode_schemes(todo.recorded))
                if started:
                    self._cache.set(_RETIRED_KEY, encode_events(self._load_events() + started))
        self._finish_retirements()
        final = {event.identity: event for event in self.retirements()}
        return [final.get(event.identity, event) for event in started]

    def _finish_retirements(self) -> None:
        """Do the work of every unfinished retirement. One process does it, under a lease it
        renews with every chunk; the others wait, and take over if the lease expires (its
        holder died)."""
        token = secrets.token_hex(8)
        while True:
            pending = {e.identity: e for e in self.retirements() if not e.done}
            if not pending:
                return
            if self._retire_lease_free(token) and self._take_retire_lease(token):
                self._retire_pending(pending, token)
            else:
                time.sleep(_RETIRE_POLL)

    def _retire_pending(
        self, pending: Mapping[tuple[str, str, float], Retirement], token: str
    ) -> None:
        """Retire the records of `pending`, `CHUNK` records per transaction, while the lease
        `token` is held."""
        needles = {class_needle(e.class_name) for e in pending.values()}
        names = []
        renewed = time.monotonic()
        for name in self._names_with_prefix(RECORD_PREFIX):  # lock-free scan
            raw = self._read(name)
            if isinstance(raw, str) and any(needle in raw for needle in needles):
                names.append(name)
            if time.monotonic() - renewed > _RETIRE_LEASE / 4:
                if not self._take_retire_lease(token):
                    return
                renewed = time.monotonic()
        for start in range(0, len(names), CHUNK):
            began = time.monotonic()
            with self._transaction():
                if not self._renew_retire_lease(token):
                    return
                events = self._load_events()
                live = [e for e in events if not e.done and e.identity in pending]
                if not live:
                    break
                counts = self._retire_chunk(names[start : start + CHUNK], live)
                self._cache.set(_RETIRED_KEY, encode_events(_add_counts(events, counts)))
            # SQLite's lock is not fair: a writer of another process waiting in its busy
            # handler would find it taken again at once. Leave it as long as we held it.
            time.sleep(min(time.monotonic() - began, 0.1))
        with self._transaction():
            if not self._renew_retire_lease(token):
                return
            events = [
                dataclasses.replace(e, done=True) if e.identity in pending else e
                for e in self._load_events()
            ]
            self._cache.set(_RETIRED_KEY, encode_events(events))
            self._cache.delete(_RETIRE_LEASE_KEY)

    def _retire_lease_free(self, token: str) -> bool:
        """Lock-free look: nobody else holds a live lease on the retirement work."""
        return _lease_free(self._read(_RETIRE_LEASE_KEY), token, time.time())

    def _take_retire_lease(self, token: str) -> bool:
        with self._transaction():
            return self._renew_retire_lease(token)

    def _renew_retire_lease(self, token: str) -> bool:
        """Take or renew the lease on the retirement work; inside a transaction."""
        now = time.time()
        if not _lease_free(self._cache.get(_RETIRE_LEASE_KEY), token, now):
            return False
        self._cache.set(_RETIRE_LEASE_KEY, f"{token} {now + _RETIRE_LEASE}")
        return True

    # ------------------------------------------------------- writers: ICAP service and admins

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
        now: float | None = None,
    ) -> bool:
        """First ranged miss of a prefetchable object: create its record (queued) and queue one job,
        due at `due_at` (default now). The record is expandable at once, whatever the due time.

        Returns True if this call created the record. If `key` already has a record in any
        state, changes nothing and returns False, so that of many concurrent callers exactly one
        queues the job.
        """
        return self._create(
            key, url, class_name, total_size, etag, last_modified, ObjectState.QUEUED, now, due_at
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
        now: float | None = None,
    ) -> bool:
        """A ranged miss (bytes `first`..`last`, asked by `client`) of an object whose class
        expands only after some demand (`expand_after`). Adds it to the object's demand and,
        once `clients_needed` distinct clients asked (0: not a condition) or the distinct bytes
        asked reach `fraction` of `total_size` (0: not a condition), records the first sight
        (`record_first_sight`: expandable from then on, one job queued) and forgets the demand.
        Returns True when this call recorded it; False (and nothing changes) once a record
        exists. The demand is kept under ``dem:<key>``, bounded (see `layout.add_demand`)."""
        _check_size("total_size", total_size)
        now = _clock(now)
        if self._read(RECORD_PREFIX + key) is not None:  # lock-free: usually already known
            return False
        with self._transaction():
            if self._cache.get(RECORD_PREFIX + key) is not None:
                return False
            demand = decode_demand(self._cache.get(DEMAND_PREFIX + key))
            demand = add_demand(demand, client, first, last, total_size)
            met = (clients_needed > 0 and len(demand.clients) >= clients_needed) or (
                fraction > 0 and demand.covered >= fraction * total_size
            )
            if not met:
                self._cache.set(DEMAND_PREFIX + key, encode_demand(demand))
                return False
            self._cache.delete(DEMAND_PREFIX + key)
            due = now if due_at is None else due_at
            self._put_entry(key, due, None)
            self._put_record(
                ObjectRecord(
                    key=key,
                    url=url,
                    class_name=class_name,
                    total_size=total_size,
                    etag=etag,
                    last_modified=last_modified,
                    state=ObjectState.QUEUED,
                    attempts=0,
                    bytes_filled=0,
                    digest_check=None,
                    first_seen=now,
                    updated=now,
                    last_error=None,
                    next_attempt_at=due,
                )
            )
            return True

    def demand(self, key: str) -> Demand | None:
        """What was asked of `key` so far, while its class waits for demand; None if nothing."""
        raw = self._read(DEMAND_PREFIX + key)
        return None if raw is None else decode_demand(raw)

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
    ) -> bool:
        """Remember an object larger than its class allows (state too_big, never queued).

        Same dedup as `record_first_sight`: returns False and changes nothing if a record exists.
        """
        return self._create(
            key, url, class_name, total_size, etag, last_modified, ObjectState.TOO_BIG, now, None
        )

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
    ) -> bool:
        """Pre-positioning: queue a fill of `url` ahead of any client asking for it.

        The size may be unknown (None) until the prefetcher learns it (`renew`/`complete`);
        until then `expandable(key)` is False. The job is due at `due_at` (default now).
        Returns False and changes nothing if `key` already has a record; use `requeue` to fill
        a known object again.
        """
        return self._create(
            key, url, class_name, total_size, etag, last_modified, ObjectState.QUEUED, now, due_at
        )

    def requeue(
        self,
        key: str,
        *,
        due_at: float | None = None,
        reset_attempts: bool = True,
        now: float | None = None,
    ) -> bool:
        """Admin: queue `key` for a fresh fill, whatever its state (parked, complete, too_big...).

        Returns False if there is no record, or if a live lease holds the job (single flight: the
        running fill is left alone). An expired lease is cancelled: its holder gets
        `LeaseLostError` on its next call. The record becomes queued, due at `due_at` (default
        now), with attempts reset to 0 unless `reset_attempts` is False. Requeuing a too_big
        record overrides the class size limit: Squid will be told to fetch it whole.
        """
        now = _clock(now)
        due = now if due_at is None else due_at
        with self._transaction():
            record = self._load_record(key)
            if record is None:
                return False
            found = self._load_job(key)
            old_slot = None
            if found is not None:
                old_slot = found[1].slot
                if found[1].live_lease(now):
                    return False
            self._put_entry(key, due, old_slot)
            self._put_record(
                dataclasses.replace(
                    record,
                    state=ObjectState.QUEUED,
                    attempts=0 if reset_attempts else record.attempts,
                    bytes_filled=0,
                    digest_check=None,
                    next_attempt_at=due,
                    updated=now,
                )
            )
            return True

    def defer(self, key: str, due_at: float, *, now: float | None = None) -> bool:
        """Move the due time of `key`'s waiting job to `due_at` (e.g. to the next opening of the
        class's prefetch window), keeping the record's state and attempts.

        Returns False if no job is queued or a live lease holds it. A job whose lease expired is
        no longer being filled: its lease is cancelled and the record goes back to queued.
        """
        now = _clock(now)
        with self._transaction():
            found = self._load_job(key)
            if found is None or found[1].live_lease(now):
                return False
            record, entry = found
            self._put_entry(key, due_at, entry.slot)
            state = ObjectState.QUEUED if record.state is ObjectState.FILLING else record.state
            self._put_record(
                dataclasses.replace(record, state=state, next_attempt_at=due_at, updated=now)
            )
            return True

    def forget(self, key: str) -> bool:
        """Admin: delete the record and any job of `key`. A lease holder gets `LeaseLostError`.
        Returns False if there was no record."""
        with self._transaction():
            found = self._load_job(key)
            if found is not None:
                self._drop_job(key, found[1].slot)
            return bool(self._cache.delete(RECORD_PREFIX + key))

    # ------------------------------------------------------------------- prefetcher: the queue

    def take_job(
        self,
        owner: str,
        lease_seconds: float,
        *,
        max_attempts: int | None = None,
        now: float | None = None,
    ) -> Job | None:
        """Lease the oldest due job, or return None if no job is due.

        A job is due when its enqueue/retry time has come and no live lease holds it (a lease
        expires `lease_seconds` after it was taken or last renewed). The record becomes filling,
        its attempts count goes up by one and bytes_filled restarts at 0. `owner` names the
        taker in status output. If `max_attempts` is given, a due job whose record already used
        that many attempts (its holders died without a result) is parked instead of handed out.
        """
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        now = _clock(now)
        with self._transaction():
            while True:
                try:
                    slot, key = self._cache.peek(SLOT_PREFIX)
                except _STORAGE_ERRORS as exc:
                    raise self._storage_error("read the queue", exc) from exc
                if slot is None:
                    return None
                if not isinstance(slot, str):
                    raise StateError(f"state dir {self._path}: queue slot {slot!r} is unreadable")
                if not isinstance(key, str):
                    self._heal_slot(slot, "slot value is not an object key")
                    continue
                found = self._load_job(key)
                if found is None or found[1].slot != slot:
                    self._heal_slot(slot, f"no job for {key!r} points at this slot")
                    continue
                record, entry = found
                if entry.due_at > now:
                    return None
                if max_attempts is not None and record.attempts >= max_attempts:
                    self._park_exhausted(record, entry, max_attempts, now)
                    continue
                lease_expires = now + lease_seconds
                entry = self._put_entry(
                    key,
                    lease_expires,
                    entry.slot,
                    owner=owner,
                    lease_token=secrets.token_hex(8),
                    lease_expires=lease_expires,
                )
                record = dataclasses.replace(
                    record,
                    state=ObjectState.FILLING,
                    attempts=record.attempts + 1,
                    bytes_filled=0,
                    digest_check=None,
                    next_attempt_at=None,
                    updated=now,
                )
                self._put_record(record)
                return job_from(record, entry)

    def renew(
        self,
        job: Job,
        *,
        lease_seconds: float,
        bytes_filled: int | None = None,
        total_size: int | None = None,
        now: float | None = None,
    ) -> Job:
        """Heartbeat: extend the lease to now + `lease_seconds` and record progress.

        `bytes_filled` is the progress of this fill; `total_size` the size once learnt (a
        pre-positioned job may start without one). Returns the Job with its new expiry. Works
        even after the lease expired, as long as nobody took the job meanwhile; otherwise raises
        `LeaseLostError`.
        """
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        _check_size("bytes_filled", bytes_filled)
        _check_size("total_size", total_size)
        now = _clock(now)
        with self._transaction():
            record, entry = self._held(job)
            lease_expires = now + lease_seconds
            entry = self._put_entry(
                job.key,
                lease_expires,
                entry.slot,
                owner=entry.owner,
                lease_token=entry.lease_token,
                lease_expires=lease_expires,
            )
            record = dataclasses.replace(
                record,
                bytes_filled=record.bytes_filled if bytes_filled is None else bytes_filled,
                total_size=record.total_size if total_size is None else total_size,
                updated=now,
            )
            self._put_record(record)
            return job_from(record, entry)

    def complete(
        self,
        job: Job,
        *,
        digest_check: DigestCheck | None = None,
        total_size: int | None = None,
        now: float | None = None,
    ) -> ObjectRecord:
        """The fill finished: remove the job, mark the record complete. Returns the new record.

        bytes_filled becomes the total size when known. Raises `LeaseLostError` if the lease
        was lost (the new holder will report instead).
        """
        _check_size("total_size", total_size)
        if digest_check not in (None, "ok", "mismatch"):
            raise ValueError(f"digest_check must be None, 'ok' or 'mismatch', not {digest_check!r}")
        now = _clock(now)
        with self._transaction():
            record, entry = self._held(job)
            size = record.total_size if total_size is None else total_size
            self._drop_job(job.key, entry.slot)
            record = dataclasses.replace(
                record,
                state=ObjectState.COMPLETE,
                total_size=size,
                bytes_filled=record.bytes_filled if size is None else size,
                digest_check=digest_check,
                last_error=None,
                next_attempt_at=None,
                updated=now,
            )
            self._put_record(record)
            return record

    def release(self, job: Job, *, due_at: float | None = None, now: float | None = None) -> None:
        """Give the lease back without a result (graceful stop): the job is due again at
        `due_at` (default now), the record goes back to queued and this attempt is not counted.
        Raises `LeaseLostError` if the lease was lost."""
        now = _clock(now)
        due = now if due_at is None else due_at
        with self._transaction():
            record, entry = self._held(job)
            self._put_entry(job.key, due, entry.slot)
            self._put_record(
                dataclasses.replace(
                    record,
                    state=ObjectState.QUEUED,
                    attempts=max(record.attempts - 1, 0),
                    next_attempt_at=due,
                    updated=now,
                )
            )

    def fail(
        self,
        job: Job,
        error: str,
        *,
        retry_at: float,
        max_attempts: int,
        digest_check: DigestCheck | None = None,
        now: float | None = None,
    ) -> bool:
        """The fill failed with `error` (`digest_check="mismatch"` when the bytes were wrong).

        If the record has used fewer than `max_attempts` attempts, the job is queued again, due
        at `retry_at`, the record becomes failed (not expandable while it waits) and True is
        returned. Otherwise the job is removed, the record becomes parked and False is returned.
        Raises `LeaseLostError` if the lease was lost.
        """
        now = _clock(now)
        with self._transaction():
            record, entry = self._held(job)
            parked = record.attempts >= max_attempts
            if parked:
                self._drop_job(job.key, entry.slot)
            else:
                self._put_entry(job.key, retry_at, entry.slot)
            self._put_record(
                dataclasses.replace(
                    record,
                    state=ObjectState.PARKED if parked else ObjectState.FAILED,
                    last_error=error,
                    digest_check=digest_check or record.digest_check,
                    next_attempt_at=None if parked else retry_at,
                    updated=now,
                )
            )
            return not parked

    def mark_too_big(self, job: Job, total_size: int, *, now: float | None = None) -> ObjectRecord:
        """The prefetcher learnt that the object exceeds its class limit (typically a
        pre-positioned job queued without a size): remove the job, mark the record too_big."""
        _check_size("total_size", total_size)
        now = _clock(now)
        with self._transaction():
            record, entry = self._held(job)
            self._drop_job(job.key, entry.slot)
            record = dataclasses.replace(
                record,
                state=ObjectState.TOO_BIG,
                total_size=total_size,
                next_attempt_at=None,
                updated=now,
            )
            self._put_record(record)
            return record

    # ------------------------------------------------------------------------------ internals

    def _retire_chunk(
        self, names: list[str], live: list[Retirement]
    ) -> dict[tuple[str, str, float], tuple[int, int]]:
        """Retire or re-judge the records `names` (a chunk of the scan) for the unfinished
        retirements `live`; inside a transaction. Returns (records, jobs) per retirement."""
        counts: dict[tuple[str, str, float], tuple[int, int]] = {}

        def count(event: Retirement, jobs: int) -> None:
            records_before, jobs_before = counts.get(event.identity, (0, 0))
            counts[event.identity] = (records_before + 1, jobs_before + jobs)

        for name in names:
            raw = self._cache.get(name)
            if raw is None:
                continue  # retired by another process meanwhile
            key = name[len(RECORD_PREFIX) :]
            try:
                record = decode_record(raw)
            except ValueError as exc:
                _log.warning("state dir %s: key-scheme guard skips %r: %s", self._path, key, exc)
                continue
            # Records first seen at or after a retirement were written under the new scheme.
            mine = [
                e for e in live if e.class_name == record.class_name and record.first_seen < e.at
            ]
            retired = next((e for e in mine if e.kind == "key_scheme"), None)
            if retired is not None:
                count(retired, self._drop_job_of(key))
                self._cache.delete(name)
                continue
            # Of several limit changes not yet applied, the latest decides.
            resized = [e for e in mine if e.kind == "size_limit" and e.limit is not None]
            size = record.total_size
            if not resized or size is None:
                continue
            event = resized[-1]
            limit = event.limit or 0
            if record.state in _SIZE_JUDGED and size > limit:
                # Left expandable, Squid would be told to fetch whole an object it will not
                # store, once per client range.
                count(event, self._drop_job_of(key))
                self._put_record(
                    dataclasses.replace(
                        record,
                        state=ObjectState.TOO_BIG,
                        next_attempt_at=None,
                        last_error=f"over the new max_object_size of {limit} bytes",
                        updated=event.at,
                    )
                )
            elif record.state is ObjectState.TOO_BIG and size <= limit:
                # Forgotten, not queued: the ICAP service judges its next ranged miss afresh.
                count(event, 0)
                self._cache.delete(name)
        return counts

    def _load_events(self) -> list[Retirement]:
        raw = self._cache.get(_RETIRED_KEY)
        return [] if raw is None else self._decode_meta(decode_events, raw, "retirements")

    def _read(self, name: str) -> object:
        try:
            return self._cache.get(name)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc

    def _drop_job_of(self, key: str) -> int:
        """Remove `key`'s job if it has one (its holder gets LeaseLostError); 1 if it had."""
        raw = self._cache.get(JOB_PREFIX + key)
        if raw is None:
            return 0
        try:
            if not isinstance(raw, str):
                raise ValueError("not JSON text")
            self._cache.delete(QueueEntry.from_json(raw).slot)
        except ValueError:
            pass  # the orphaned slot, if any, is healed by take_job
        self._cache.delete(JOB_PREFIX + key)
        return 1

    def _decode_meta(self, decode: Callable[[object], _T], raw: object, what: str) -> _T:
        try:
            return decode(raw)
        except ValueError as exc:
            raise StateError(
                f"state dir {self._path}: recorded {what} are unreadable: {exc}"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One atomic read-modify-write across processes; storage failures become StateError."""
        try:
            with self._cache.transact():
                yield
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("update", exc) from exc

    def _storage_error(self, doing: str, exc: BaseException) -> StateError:
        if isinstance(exc, diskcache.Timeout):
            reason = "timed out waiting for the lock held by another process"
        else:
            reason = str(exc) or type(exc).__name__
        return StateError(f"cannot {doing} state dir {self._path}: {reason}")

    def _check_schema(self) -> None:
        with self._transaction():
            version = self._cache.get(_SCHEMA_KEY)
            if version is None:
                if next(iter(self._cache.iterkeys()), None) is not None:
                    raise StateError(
                        f"{self._path} holds a diskcache that is not a patchcache state dir"
                    )
                self._cache.set(_SCHEMA_KEY, SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise StateError(
                    f"state dir {self._path} has schema version {version!r}; this patchcache "
                    f"reads version {SCHEMA_VERSION}"
                )

    def _create(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int | None,
        etag: str | None,
        last_modified: str | None,
        state: ObjectState,
        now: float | None,
        due_at: float | None,
    ) -> bool:
        if not key:
            raise ValueError("the object key (store-ID) cannot be empty")
        _check_size("total_size", total_size)
        now = _clock(now)
        queued = state is ObjectState.QUEUED
        due = (now if due_at is None else due_at) if queued else None
        # Most calls are duplicates (many clients fetch the same object at once): answer those
        # with a lock-free read, and re-check inside the transaction for the real decision.
        if not self._may_create_or_learn(key, total_size):
            return False
        with self._transaction():
            raw = self._cache.get(RECORD_PREFIX + key)
            if raw is not None:
                if total_size is not None:
                    self._learn_size(key, raw, total_size, etag, last_modified, state, now)
                return False
            if due is not None:
                self._put_entry(key, due, None)
            self._put_record(
                ObjectRecord(
                    key=key,
                    url=url,
                    class_name=class_name,
                    total_size=total_size,
                    etag=etag,
                    last_modified=last_modified,
                    state=state,
                    attempts=0,
                    bytes_filled=0,
                    digest_check=None,
                    first_seen=now,
                    updated=now,
                    last_error=None,
                    next_attempt_at=due,
                )
            )
            return True

    def _learn_size(
        self,
        key: str,
        raw: object,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
        state: ObjectState,
        now: float,
    ) -> None:
        """A first sight of an object whose record waits without a size (pre-positioned, held by
        `--delay` or an off-peak window): fill the size in, so the clients' ranges expand now
        instead of when the job runs. Over the limit (`state` too_big): the job is dropped and
        the record becomes too_big. Any other record is left alone. Inside a transaction."""
        record = self._decode_record(key, raw)
        if record.total_size is not None or record.state not in _SIZE_LEARNABLE:
            return
        if state is ObjectState.TOO_BIG:
            if record.state is ObjectState.FILLING:
                return  # the prefetcher holds it and will find the size itself
            self._drop_job_of(key)
            record = dataclasses.replace(record, state=state, next_attempt_at=None)
        record = dataclasses.replace(
            record,
            total_size=total_size,
            etag=record.etag or etag,
            last_modified=record.last_modified or last_modified,
            updated=now,
        )
        self._put_record(record)

    def _may_create_or_learn(self, key: str, total_size: int | None) -> bool:
        """Lock-free first look for `_create`: False when the call would change nothing."""
        try:
            raw = self._cache.get(RECORD_PREFIX + key)
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("read", exc) from exc
        if raw is None:
            return True
        if total_size is None or not isinstance(raw, str) or raw.startswith("1"):
            return False
        record = self._decode_record(key, raw)
        return record.total_size is None and record.state in _SIZE_LEARNABLE

    def _decode_record(self, key: str, raw: object) -> ObjectRecord:
        try:
            return decode_record(raw)
        except ValueError as exc:
            raise self._unreadable(key, exc) from exc

    def _unreadable(self, key: str, exc: ValueError) -> StateError:
        return StateError(f"state dir {self._path}: record {key!r} is unreadable: {exc}")

    def _load_record(self, key: str) -> ObjectRecord | None:
        raw = self._cache.get(RECORD_PREFIX + key)
        return None if raw is None else self._decode_record(key, raw)

    def _put_record(self, record: ObjectRecord) -> None:
        self._cache.set(RECORD_PREFIX + record.key, encode_record(record))

    def _load_job(self, key: str) -> tuple[ObjectRecord, QueueEntry] | None:
        """The record and queue entry of `key`'s job, or None if no job is queued. Call inside a
        transaction. A job whose record vanished is removed (it cannot be filled)."""
        raw = self._cache.get(JOB_PREFIX + key)
        if raw is None:
            return None
        try:
            if not isinstance(raw, str):
                raise ValueError(f"stored value is {type(raw).__name__}, not JSON text")
            entry = QueueEntry.from_json(raw)
        except ValueError as exc:
            raise StateError(f"state dir {self._path}: job {key!r} is unreadable: {exc}") from exc
        record = self._load_record(key)
        if record is None:
            _log.warning("state dir %s: dropping job %r that has no record", self._path, key)
            self._drop_job(key, entry.slot)
            return None
        return record, entry

    def _put_entry(
        self,
        key: str,
        due_at: float,
        old_slot: str | None,
        *,
        owner: str | None = None,
        lease_token: str | None = None,
        lease_expires: float | None = None,
    ) -> QueueEntry:
        """Write `key`'s queue entry and (re)place its slot at `due_at`; inside a transaction."""
        if old_slot is not None:
            self._cache.delete(old_slot)
        slot = slot_key(due_at, self._cache.incr(_SEQUENCE_KEY))
        self._cache.set(slot, key)
        entry = QueueEntry(
            slot=slot,
            due_at=due_at,
            owner=owner,
            lease_token=lease_token,
            lease_expires=lease_expires,
        )
        self._cache.set(JOB_PREFIX + key, entry.to_json())
        return entry

    def _drop_job(self, key: str, slot: str) -> None:
        self._cache.delete(slot)
        self._cache.delete(JOB_PREFIX + key)

    def _held(self, job: Job) -> tuple[ObjectRecord, QueueEntry]:
        """The record and entry of `job` if the caller's lease still holds it, else
        LeaseLostError. Call inside a transaction."""
        found = self._load_job(job.key)
        if job.lease_token is None or found is None or found[1].lease_token != job.lease_token:
            if found is None:
                now_held = "the job is no longer queued"
            elif found[1].lease_token is None:
                now_held = "the job was requeued"
            else:
                now_held = f"now leased by {found[1].owner!r}"
            raise LeaseLostError(
                f"state dir {self._path}: lease of {job.owner!r} on {job.key!r} was lost: "
                f"{now_held}"
            )
        return found

    def _park_exhausted(
        self, record: ObjectRecord, entry: QueueEntry, max_attempts: int, now: float
    ) -> None:
        reason = f"parked after {record.attempts} attempts (max {max_attempts}) without a result"
        if record.last_error:
            reason += f"; last error: {record.last_error}"
        self._drop_job(record.key, entry.slot)
        self._put_record(
            dataclasses.replace(
                record,
                state=ObjectState.PARKED,
                last_error=reason,
                next_attempt_at=None,
                updated=now,
            )
        )

    def _heal_slot(self, slot: str, why: str) -> None:
        # Every write keeps slot and entry together inside one transaction, so this means
        # damage from outside (a hand-edited cache); drop the slot rather than block the queue.
        _log.warning("state dir %s: dropping queue slot %r: %s", self._path, slot, why)
        self._cache.delete(slot)

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
        except _STORAGE_ERRORS as exc:
            raise self._storage_error("list", exc) from exc
