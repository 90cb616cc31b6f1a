"""`Sightings`: the writes that give an object its first record.

The ICAP service records a first sight (queued, one job) or an object too big for its class;
for classes that expand only after some demand it adds to the object's demand until that is
met; pre-positioning queues a URL before any client asked. Of many processes seeing the same
object at once exactly one creates the record: each call re-checks inside its transaction.
A later first sight with the size may still teach it to a record that waits without one.
"""

from __future__ import annotations

import dataclasses

from patchcache.state.connection import check_size, clock
from patchcache.state.entries import StateEntries
from patchcache.state.layout import (
    DEMAND_PREFIX,
    RECORD_PREFIX,
    add_demand,
    decode_demand,
    encode_demand,
)
from patchcache.state.records import (
    EXPANDABLE_STATES,
    SIZE_LEARNABLE_STATES,
    ObjectRecord,
    ObjectState,
)

# States an unstorable answer parks: those the store-ID helper expands, and a retry waiting.
_UNSTORABLE_PARKS = frozenset({*EXPANDABLE_STATES, ObjectState.FAILED})


def _new_record(
    key: str,
    url: str,
    class_name: str,
    total_size: int | None,
    etag: str | None,
    last_modified: str | None,
    state: ObjectState,
    now: float,
) -> ObjectRecord:
    """The first record of an object (its job and due time are written by `_write`)."""
    return ObjectRecord(
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
        next_attempt_at=None,
    )


class Sightings(StateEntries):
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
        check_size("total_size", total_size)
        now = clock(now)
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
            record = _new_record(
                key, url, class_name, total_size, etag, last_modified, ObjectState.QUEUED, now
            )
            self._write(record, None, now, due_at=now if due_at is None else due_at)
            return True

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

    def record_unstorable(self, key: str, reason: str, *, now: float | None = None) -> bool:
        """The origin now answers for `key` with a response Squid will not store (`no-store`,
        `private`, `Vary: *`; `patchcache.cacheability`). Left expandable, every client range
        would make Squid fetch the whole object again and drop it, so a record that is
        expandable or waiting for a retry is parked (its job removed; a prefetcher holding it
        gets LeaseLostError), with the reason. Returns True if this call parked it; any other
        record, or none, is left alone. ``requeue`` makes it expandable again."""
        raw = self._read(RECORD_PREFIX + key)  # lock-free: usually nothing to do
        if raw is None or self._decode_record(key, raw).state not in _UNSTORABLE_PARKS:
            return False
        now = clock(now)
        with self._transaction():
            record = self._load_record(key)
            if record is None or record.state not in _UNSTORABLE_PARKS:
                return False
            self._drop_job_of(key)
            parked = dataclasses.replace(
                record, state=ObjectState.PARKED, last_error=f"Squid will not store it: {reason}"
            )
            self._write(parked, None, now, due_at=None)
            return True

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
        check_size("total_size", total_size)
        now = clock(now)
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
            record = _new_record(key, url, class_name, total_size, etag, last_modified, state, now)
            self._write(record, None, now, due_at=due)
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
        if record.total_size is not None or record.state not in SIZE_LEARNABLE_STATES:
            return
        learnt = dataclasses.replace(
            record,
            total_size=total_size,
            etag=record.etag or etag,
            last_modified=record.last_modified or last_modified,
            updated=now,
        )
        if state is not ObjectState.TOO_BIG:
            self._put_record(learnt)  # the job waits on as it was
        elif record.state is not ObjectState.FILLING:  # if filling, the prefetcher finds it
            self._drop_job_of(key)
            self._write(dataclasses.replace(learnt, state=state), None, now, due_at=None)

    def _may_create_or_learn(self, key: str, total_size: int | None) -> bool:
        """Lock-free first look for `_create`: False when the call would change nothing."""
        raw = self._read(RECORD_PREFIX + key)
        if raw is None:
            return True
        if total_size is None or not isinstance(raw, str) or raw.startswith("1"):
            return False
        record = self._decode_record(key, raw)
        return record.total_size is None and record.state in SIZE_LEARNABLE_STATES
