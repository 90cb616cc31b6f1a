"""`JobQueue`: the prefetcher's jobs and leases, and the admins' requeue, defer and forget.

A job's slot sorts by due time (`patchcache.state.layout`), so `take_job` finds the oldest due
job with one indexed lookup. A leased job's slot moves to its lease expiry: a prefetcher killed
with SIGKILL leaves its job to come due again by itself. Each transition checks the caller's
lease (`LeaseLostError` once another took the job) and ends in `StateEntries._write`, which
moves the record and its job together.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets

from patchcache.errors import StateError
from patchcache.state.connection import STORAGE_ERRORS, check_size, clock
from patchcache.state.entries import StateEntries
from patchcache.state.layout import RECORD_PREFIX, SLOT_PREFIX, QueueEntry, job_from
from patchcache.state.records import DigestCheck, Job, ObjectRecord, ObjectState

_log = logging.getLogger(__name__)


class JobQueue(StateEntries):
    # ----------------------------------------------------------------- admins and the scheduler

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
        now = clock(now)
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
            requeued = dataclasses.replace(
                record,
                state=ObjectState.QUEUED,
                attempts=0 if reset_attempts else record.attempts,
                bytes_filled=0,
                digest_check=None,
            )
            self._write(requeued, old_slot, now, due_at=now if due_at is None else due_at)
            return True

    def defer(self, key: str, due_at: float, *, now: float | None = None) -> bool:
        """Move the due time of `key`'s waiting job to `due_at` (e.g. to the next opening of the
        class's prefetch window), keeping the record's state and attempts.

        Returns False if no job is queued or a live lease holds it. A job whose lease expired is
        no longer being filled: its lease is cancelled and the record goes back to queued.
        """
        now = clock(now)
        with self._transaction():
            found = self._load_job(key)
            if found is None or found[1].live_lease(now):
                return False
            record, entry = found
            state = ObjectState.QUEUED if record.state is ObjectState.FILLING else record.state
            self._write(dataclasses.replace(record, state=state), entry.slot, now, due_at=due_at)
            return True

    def forget(self, key: str) -> bool:
        """Admin: delete the record and any job of `key`. A lease holder gets `LeaseLostError`.
        Returns False if there was no record."""
        with self._transaction():
            found = self._load_job(key)
            if found is not None:
                self._drop_job(key, found[1].slot)
            return bool(self._cache.delete(RECORD_PREFIX + key))

    # ------------------------------------------------------------------------- the prefetcher

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
        now = clock(now)
        with self._transaction():
            while True:
                try:
                    slot, key = self._cache.peek(SLOT_PREFIX)
                except STORAGE_ERRORS as exc:
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
                taken = dataclasses.replace(
                    record,
                    state=ObjectState.FILLING,
                    attempts=record.attempts + 1,
                    bytes_filled=0,
                    digest_check=None,
                )
                token = secrets.token_hex(8)
                return self._lease(taken, entry.slot, now + lease_seconds, now, owner, token)

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
        check_size("bytes_filled", bytes_filled)
        check_size("total_size", total_size)
        now = clock(now)
        with self._transaction():
            record, entry = self._held(job)
            progressed = dataclasses.replace(
                record,
                bytes_filled=record.bytes_filled if bytes_filled is None else bytes_filled,
                total_size=record.total_size if total_size is None else total_size,
            )
            expires = now + lease_seconds
            return self._lease(progressed, entry.slot, expires, now, entry.owner, entry.lease_token)

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
        check_size("total_size", total_size)
        if digest_check not in (None, "ok", "mismatch"):
            raise ValueError(f"digest_check must be None, 'ok' or 'mismatch', not {digest_check!r}")
        now = clock(now)
        with self._transaction():
            record, entry = self._held(job)
            size = record.total_size if total_size is None else total_size
            done = dataclasses.replace(
                record,
                state=ObjectState.COMPLETE,
                total_size=size,
                bytes_filled=record.bytes_filled if size is None else size,
                digest_check=digest_check,
                last_error=None,
            )
            return self._write(done, entry.slot, now, due_at=None)[0]

    def release(self, job: Job, *, due_at: float | None = None, now: float | None = None) -> None:
        """Give the lease back without a result (graceful stop): the job is due again at
        `due_at` (default now), the record goes back to queued and this attempt is not counted.
        Raises `LeaseLostError` if the lease was lost."""
        now = clock(now)
        with self._transaction():
            record, entry = self._held(job)
            released = dataclasses.replace(
                record, state=ObjectState.QUEUED, attempts=max(record.attempts - 1, 0)
            )
            self._write(released, entry.slot, now, due_at=now if due_at is None else due_at)

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
        now = clock(now)
        with self._transaction():
            record, entry = self._held(job)
            parked = record.attempts >= max_attempts
            failed = dataclasses.replace(
                record,
                state=ObjectState.PARKED if parked else ObjectState.FAILED,
                last_error=error,
                digest_check=digest_check or record.digest_check,
            )
            self._write(failed, entry.slot, now, due_at=None if parked else retry_at)
            return not parked

    def mark_too_big(self, job: Job, total_size: int, *, now: float | None = None) -> ObjectRecord:
        """The prefetcher learnt that the object exceeds its class limit (typically a
        pre-positioned job queued without a size): remove the job, mark the record too_big."""
        check_size("total_size", total_size)
        now = clock(now)
        with self._transaction():
            record, entry = self._held(job)
            too_big = dataclasses.replace(record, state=ObjectState.TOO_BIG, total_size=total_size)
            return self._write(too_big, entry.slot, now, due_at=None)[0]

    # ------------------------------------------------------------------------------ internals

    def _lease(
        self,
        record: ObjectRecord,
        slot: str,
        expires: float,
        now: float,
        owner: str | None,
        token: str | None,
    ) -> Job:
        """Write `record` with its job (now at `slot`) leased to `owner` until `expires`, under
        `token`: a new one when taken, the holder's own when renewed."""
        record, leased = self._write(
            record, slot, now, due_at=expires, owner=owner, lease_token=token
        )
        assert leased is not None  # a job placed at a due time has an entry
        return job_from(record, leased)

    def _park_exhausted(
        self, record: ObjectRecord, entry: QueueEntry, max_attempts: int, now: float
    ) -> None:
        reason = f"parked after {record.attempts} attempts (max {max_attempts}) without a result"
        if record.last_error:
            reason += f"; last error: {record.last_error}"
        parked = dataclasses.replace(record, state=ObjectState.PARKED, last_error=reason)
        self._write(parked, entry.slot, now, due_at=None)

    def _heal_slot(self, slot: str, why: str) -> None:
        # Every write keeps slot and entry together inside one transaction, so this means
        # damage from outside (a hand-edited cache); drop the slot rather than block the queue.
        _log.warning("state dir %s: dropping queue slot %r: %s", self._path, slot, why)
        self._cache.delete(slot)
