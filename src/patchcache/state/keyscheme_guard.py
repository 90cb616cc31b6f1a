"""`KeySchemeGuard`: at a service's start, retire what a change of the rules made wrong.

When a class's key scheme changed since its records were written, their keys no longer match
what the store-ID helper computes: the records and their jobs are retired. When a class's
max_object_size changed, its records are judged again by size (too_big, or forgotten so the
next ranged miss is judged afresh). What changed and what to do is pure
(`patchcache.state.keyschemes`); this module runs it against the stored records, in short
transactions under a lease so that one process does the work while the others wait.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from patchcache.errors import StateError
from patchcache.key_host import class_key_prefix
from patchcache.state.connection import clock
from patchcache.state.entries import StateEntries
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
from patchcache.state.layout import DEMAND_PREFIX, RECORD_PREFIX, decode_record
from patchcache.state.records import EXPANDABLE_STATES, ObjectState

SCHEMES_KEY = "meta:keyschemes"
RETIRED_KEY = "meta:retired"
# "<token> <expiry>": which process is retiring records, until when (see _finish_retirements).
RETIRE_LEASE_KEY = "meta:retiring"
_RETIRE_LEASE = 30.0
_RETIRE_POLL = 0.2

# States whose records a smaller max_object_size turns too_big: those the store-ID helper
# expands or the prefetcher will fill.
_SIZE_JUDGED = frozenset({*EXPANDABLE_STATES, ObjectState.FAILED})

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


class KeySchemeGuard(StateEntries):
    def key_schemes(self) -> dict[str, ClassScheme] | None:
        """The key scheme recorded for each class, or None if none was ever recorded."""
        return self._schemes(self._read(SCHEMES_KEY))

    def retirements(self) -> list[Retirement]:
        """What the key-scheme guard retired or re-judged, oldest first."""
        return self._events(self._read(RETIRED_KEY))

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
        now = clock(now)
        started: list[Retirement] = []
        with self._transaction():
            todo = plan(self._schemes(self._cache.get(SCHEMES_KEY)), current)
            if todo.write:
                started = started_events(todo, now)
                self._cache.set(SCHEMES_KEY, encode_schemes(todo.recorded))
                if started:
                    self._cache.set(RETIRED_KEY, encode_events(self._load_events() + started))
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
                self._cache.set(RETIRED_KEY, encode_events(_add_counts(events, counts)))
            # SQLite's lock is not fair: a writer of another process waiting in its busy
            # handler would find it taken again at once. Leave it as long as we held it.
            time.sleep(min(time.monotonic() - began, 0.1))
        if not self._forget_demand(pending, token):
            return
        with self._transaction():
            if not self._renew_retire_lease(token):
                return
            events = [
                dataclasses.replace(e, done=True) if e.identity in pending else e
                for e in self._load_events()
            ]
            self._cache.set(RETIRED_KEY, encode_events(events))
            self._cache.delete(RETIRE_LEASE_KEY)

    def _forget_demand(
        self, pending: Mapping[tuple[str, str, float], Retirement], token: str
    ) -> bool:
        """Delete the demand counted for objects of classes whose key scheme changed (it was
        counted under keys the helper no longer makes, and a new scheme may make the same key
        for other content), `CHUNK` entries per transaction. A demand entry carries only its
        key: the class is found by the key's prefix. False if the lease was lost."""
        prefixes = tuple(
            class_key_prefix(e.class_name) for e in pending.values() if e.kind == "key_scheme"
        )
        if not prefixes:
            return True
        names = [
            name
            for name in self._names_with_prefix(DEMAND_PREFIX)  # lock-free scan
            if name[len(DEMAND_PREFIX) :].startswith(prefixes)
        ]
        for start in range(0, len(names), CHUNK):
            with self._transaction():
                if not self._renew_retire_lease(token):
                    return False
                for name in names[start : start + CHUNK]:
                    self._cache.delete(name)
        return True

    def _retire_lease_free(self, token: str) -> bool:
        """Lock-free look: nobody else holds a live lease on the retirement work."""
        return _lease_free(self._read(RETIRE_LEASE_KEY), token, time.time())

    def _take_retire_lease(self, token: str) -> bool:
        with self._transaction():
            return self._renew_retire_lease(token)

    def _renew_retire_lease(self, token: str) -> bool:
        """Take or renew the lease on the retirement work; inside a transaction."""
        now = time.time()
        if not _lease_free(self._cache.get(RETIRE_LEASE_KEY), token, now):
            return False
        self._cache.set(RETIRE_LEASE_KEY, f"{token} {now + _RETIRE_LEASE}")
        return True

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
                too_big = dataclasses.replace(
                    record,
                    state=ObjectState.TOO_BIG,
                    last_error=f"over the new max_object_size of {limit} bytes",
                )
                self._write(too_big, None, event.at, due_at=None)
            elif record.state is ObjectState.TOO_BIG and size <= limit:
                # Forgotten, not queued: the ICAP service judges its next ranged miss afresh.
                count(event, 0)
                self._cache.delete(name)
        return counts

    def _load_events(self) -> list[Retirement]:
        """`retirements()` inside a transaction."""
        return self._events(self._cache.get(RETIRED_KEY))

    def _schemes(self, raw: object) -> dict[str, ClassScheme] | None:
        return None if raw is None else self._decode_meta(decode_schemes, raw, "key schemes")

    def _events(self, raw: object) -> list[Retirement]:
        return [] if raw is None else self._decode_meta(decode_events, raw, "retirements")

    def _decode_meta(self, decode: Callable[[object], _T], raw: object, what: str) -> _T:
        try:
            return decode(raw)
        except ValueError as exc:
            raise StateError(
                f"state dir {self._path}: recorded {what} are unreadable: {exc}"
            ) from exc
