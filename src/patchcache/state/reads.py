"""`StateReads`: what the store-ID helper, the status commands and the tests read.

Plain reads take no lock (SQLite in WAL mode, or one Redis ``GET``), so the store-ID helper's
hot path (`expandable`) never waits for a writer. Listings are not snapshots: a record changed
while listing appears in its old or new form.
"""

from __future__ import annotations

from collections.abc import Iterable

from patchcache.state.entries import StateEntries
from patchcache.state.layout import (
    DEMAND_PREFIX,
    JOB_PREFIX,
    RECORD_PREFIX,
    SLOT_PREFIX,
    Demand,
    decode_demand,
    job_from,
)
from patchcache.state.records import SIZE_LEARNABLE_STATES, Job, ObjectRecord, ObjectState


class StateReads(StateEntries):
    def get(self, key: str) -> ObjectRecord | None:
        """The record for `key`, or None."""
        raw = self._read(RECORD_PREFIX + key)
        return None if raw is None else self._decode_record(key, raw)

    def expandable(self, key: str) -> bool:
        """True if the store-ID helper should answer expand=1 for `key`.

        That is: a record exists, its total size is known and it is queued, filling or complete.
        One key-value get (a single SQLite SELECT, no lock); only the record's stored
        expandable flag is read, the JSON is not parsed (see `patchcache.state.layout`).
        """
        raw = self._read(RECORD_PREFIX + key)
        return raw is not None and self._stored_expandable(key, raw)

    def expansion(self, key: str) -> bool | None:
        """`expandable(key)` with a third answer: None while nothing is known of the object's size
        (no record, or a pre-positioned record still waiting without one). The store-ID helper
        then looks the size up itself before answering (a HEAD, see `patchcache.helpers`).

        Same cost as `expandable` for records that expand; a record that does not is parsed."""
        raw = self._read(RECORD_PREFIX + key)
        if raw is None:
            return None
        if self._stored_expandable(key, raw):
            return True
        record = self._decode_record(key, raw)
        if record.total_size is None and record.state in SIZE_LEARNABLE_STATES:
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

    def demand(self, key: str) -> Demand | None:
        """What was asked of `key` so far, while its class waits for demand; None if nothing."""
        raw = self._read(DEMAND_PREFIX + key)
        return None if raw is None else decode_demand(raw)

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
            key = self._read(name)
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
