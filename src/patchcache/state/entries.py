"""`StateEntries`: an object's record and its job in the key-value map, written in step.

Every transition of the store (first sight, take, renew, complete, fail, release, defer,
requeue, park, too big, the key-scheme guard) ends in `StateEntries._write`: the new record and
where its job now stands, written together inside the caller's transaction. That one place keeps
the queue's invariants, which `patchcache.state` promises:

- a job (``job:<key>`` and its slot) exists exactly while its record is queued, filling or
  failed; a record without a job is complete, too_big or parked;
- the record's ``next_attempt_at`` is its waiting job's due time, None while a lease holds the
  job or when there is none;
- the slot and the queue entry move together (the slot's name is the due time).

The record's other fields are the caller's (`dataclasses.replace` of the old record); its
``updated`` is the time of the transition.
"""

from __future__ import annotations

import dataclasses
import logging

from patchcache.errors import StateError
from patchcache.state.connection import StateConnection
from patchcache.state.layout import (
    JOB_PREFIX,
    RECORD_PREFIX,
    QueueEntry,
    decode_record,
    encode_record,
    slot_key,
    stored_expandable,
)
from patchcache.state.records import Job, ObjectRecord

SEQUENCE_KEY = "meta:seq"

_log = logging.getLogger(__name__)


class LeaseLostError(StateError):
    """The job's lease is no longer held by the caller: another prefetcher took the job after the
    lease expired, or an admin requeued or forgot it. The caller must stop working on the job."""

    status_hint = 409


class StateEntries(StateConnection):
    """Reads and writes of records and queue entries; the writes run inside a transaction."""

    def _write(
        self,
        record: ObjectRecord,
        old_slot: str | None,
        now: float,
        *,
        due_at: float | None,
        owner: str | None = None,
        lease_token: str | None = None,
    ) -> tuple[ObjectRecord, QueueEntry | None]:
        """Write `record` (its ``next_attempt_at`` and ``updated`` set here) and its job.

        `old_slot` is the slot of the job the record had, None if it had none. With `due_at`
        None the record has no job any more (the old one is removed); otherwise its job is
        (re)placed at `due_at`: waiting until then, or with `lease_token` leased to `owner`
        until then (an expired lease makes the job due again by itself). Returns the record
        as written and the job's new queue entry (None when it has none)."""
        entry = None
        if due_at is None:
            if old_slot is not None:
                self._drop_job(record.key, old_slot)
        else:
            if old_slot is not None:
                self._cache.delete(old_slot)
            slot = slot_key(due_at, self._cache.incr(SEQUENCE_KEY))
            self._cache.set(slot, record.key)
            entry = QueueEntry(
                slot=slot,
                due_at=due_at,
                owner=owner,
                lease_token=lease_token,
                lease_expires=None if lease_token is None else due_at,
            )
            self._cache.set(JOB_PREFIX + record.key, entry.to_json())
        waiting = due_at if lease_token is None else None
        record = dataclasses.replace(record, next_attempt_at=waiting, updated=now)
        self._put_record(record)
        return record, entry

    def _put_record(self, record: ObjectRecord) -> None:
        """Write `record` alone, its job untouched."""
        self._cache.set(RECORD_PREFIX + record.key, encode_record(record))

    def _load_record(self, key: str) -> ObjectRecord | None:
        raw = self._cache.get(RECORD_PREFIX + key)
        return None if raw is None else self._decode_record(key, raw)

    def _decode_record(self, key: str, raw: object) -> ObjectRecord:
        try:
            return decode_record(raw)
        except ValueError as exc:
            raise self._unreadable(key, exc) from exc

    def _stored_expandable(self, key: str, raw: object) -> bool:
        """The expandable flag of `key`'s stored record `raw`, without parsing its JSON."""
        try:
            return stored_expandable(raw)
        except ValueError as exc:
            raise self._unreadable(key, exc) from exc

    def _unreadable(self, key: str, exc: ValueError) -> StateError:
        return StateError(f"state dir {self._path}: record {key!r} is unreadable: {exc}")

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

    def _drop_job(self, key: str, slot: str) -> None:
        self._cache.delete(slot)
        self._cache.delete(JOB_PREFIX + key)

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
