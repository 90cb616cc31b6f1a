"""The key-scheme guard's data and decisions, as pure functions (no I/O).

Like Lancache's CONFIGHASH, but per class: the state remembers, for every class, the fingerprint
of the key scheme its records were written with (`patchcache.rules.keyscheme` says what is in a
scheme) and the class's ``max_object_size``. When a service starts with rules whose scheme of
some class differs, the records of that class (and their queued jobs) are deleted: a key may
now name other content, so neither ``expand=1`` nor a prefetch may rely on them. Other classes
keep their records.

A changed ``max_object_size`` does not retire the class; its records are re-judged by size
(`SizeRejudge`): an expandable or queued object over the new limit becomes ``too_big`` (left as
it is, the store-ID helper would keep asking Squid to fetch whole an object Squid will not
store: the refetch loop the limit is there to prevent), and a ``too_big`` object within the new
limit is forgotten, so the next ranged miss judges it afresh.

Decisions taken here:

- A state dir without recorded schemes (new, or written before the guard existed) adopts the
  current ones and retires nothing: there is nothing to compare with.
- A class that first appears is adopted. A class that disappears (removed or disabled) keeps its
  recorded scheme: its keys carry its name, so no URL reaches them meanwhile, and when it comes
  back with another scheme its old records are retired then.
- Every service compares at start; the first to see a change records it in one transaction and
  logs it (one warning line, however many processes start together); the others find it
  recorded and only wait for the records to be retired.
- A record first seen at or after the change was written under the new scheme and is kept.

Stored under ``meta:keyschemes`` (JSON: class -> `ClassScheme`) and ``meta:retired`` (JSON list
of `Retirement`, newest last, at most `MAX_EVENTS` plus any unfinished), both read by
``patchcache status``.

The decision (compare, record the new schemes, note the retirements) is one transaction. The
records are then retired in transactions of at most `CHUNK` records: one transaction over a class
of 20000 records held the write lock for 9-12 s on the test machine (bench/keyscheme_guard.py:
a write of another process waited 12 s), beyond the 10 s other processes wait for it; in chunks
that write waited at most 0.1 s. One process does the work, under a lease
(``meta:retiring``) renewed with every chunk; every other service that starts meanwhile waits for
it to finish before it serves, and takes the work over if the lease expires (its holder died).
A retirement whose every process died is finished by the next service start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_EVENTS = 100
"""Retirements kept for `patchcache status`; older ones are dropped."""

CHUNK = 100
"""Records looked at per transaction while retiring."""

EventKind = Literal["key_scheme", "size_limit"]


@dataclass(frozen=True, slots=True)
class ClassScheme:
    """What the state remembers of one class."""

    fingerprint: str
    """Hash of `fields`."""
    fields: Mapping[str, Any]
    """The scheme itself (JSON values), kept to name what changed."""
    max_object_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "fields": dict(self.fields),
            "max_object_size": self.max_object_size,
        }

    @classmethod
    def from_dict(cls, data: object) -> ClassScheme:
        if not isinstance(data, dict):
            raise ValueError("a class scheme must be a JSON object")
        fingerprint = data.get("fingerprint")
        fields = data.get("fields")
        size = data.get("max_object_size")
        if not isinstance(fingerprint, str):
            raise ValueError(f"fingerprint: expected a string, got {fingerprint!r}")
        if not isinstance(fields, dict):
            raise ValueError("fields: expected a JSON object")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"max_object_size: expected a byte count, got {size!r}")
        return cls(fingerprint=fingerprint, fields=fields, max_object_size=size)


@dataclass(frozen=True, slots=True)
class Retirement:
    """One class's records retired (`key_scheme`) or re-judged (`size_limit`), decided at `at`.

    Only records first seen before `at` are touched: they were written under the old scheme.
    The work is done in short transactions after the decision (`done` is False meanwhile), so
    that a class of many records never holds the state's write lock for long."""

    class_name: str
    at: float
    kind: EventKind
    changed: tuple[str, ...]
    """Names of the scheme fields that changed, or ``("max_object_size",)``."""
    records: int = 0
    """Records deleted (key_scheme) or marked too_big / forgotten (size_limit) so far."""
    jobs: int = 0
    """Queued jobs dropped with them so far."""
    limit: int | None = None
    """The new max_object_size (size_limit only)."""
    detail: str = ""
    done: bool = False

    @property
    def identity(self) -> tuple[str, str, float]:
        return (self.class_name, self.kind, self.at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "at": self.at,
            "kind": self.kind,
            "changed": list(self.changed),
            "records": self.records,
            "jobs": self.jobs,
            "limit": self.limit,
            "detail": self.detail,
            "done": self.done,
        }

    @classmethod
    def from_dict(cls, data: object) -> Retirement:
        if not isinstance(data, dict):
            raise ValueError("a retirement must be a JSON object")
        name, at, kind = data.get("class"), data.get("at"), data.get("kind")
        changed, records, jobs = data.get("changed"), data.get("records"), data.get("jobs")
        limit, detail, done = data.get("limit"), data.get("detail", ""), data.get("done")
        if not isinstance(name, str):
            raise ValueError(f"class: expected a string, got {name!r}")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise ValueError(f"at: expected an epoch time, got {at!r}")
        if kind not in ("key_scheme", "size_limit"):
            raise ValueError(f"kind: unknown {kind!r}")
        if not isinstance(changed, list) or not all(isinstance(x, str) for x in changed):
            raise ValueError("changed: expected a list of field names")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise ValueError(f"limit: expected a byte count, got {limit!r}")
        if not isinstance(detail, str):
            raise ValueError("detail: expected a string")
        if not isinstance(done, bool):
            raise ValueError(f"done: expected true or false, got {done!r}")
        return cls(
            name,
            float(at),
            kind,
            tuple(changed),
            _count("records", records),
            _count("jobs", jobs),
            limit,
            detail,
            done,
        )


def _count(label: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{label}: expected a count, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class SizeRejudge:
    """A class whose limit changed while its key scheme did not."""

    old_limit: int
    new_limit: int


@dataclass(frozen=True, slots=True)
class SchemePlan:
    """What the guard has to do, from the recorded and the current schemes."""

    retire: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Classes whose records go, with the names of the fields that changed."""
    rejudge: Mapping[str, SizeRejudge] = field(default_factory=dict)
    recorded: Mapping[str, ClassScheme] = field(default_factory=dict)
    """What to record from now on."""
    write: bool = False
    """Anything to store (a retirement, a new class, a first adoption...)."""


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of the scheme fields that differ (a fingerprint change with equal fields, from an
    older format of the fields, reads as ``("fingerprint",)``)."""
    names = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
    return tuple(names) or ("fingerprint",)


def plan(
    recorded: Mapping[str, ClassScheme] | None, current: Mapping[str, ClassScheme]
) -> SchemePlan:
    """Compare the recorded schemes (None: never recorded) with the current ones."""
    if recorded is None:
        return SchemePlan(recorded=dict(current), write=True)
    retire: dict[str, tuple[str, ...]] = {}
    rejudge: dict[str, SizeRejudge] = {}
    merged = dict(recorded)
    for name, scheme in current.items():
        old = recorded.get(name)
        if old == scheme:
            continue
        merged[name] = scheme
        if old is None:
            continue
        if old.fingerprint != scheme.fingerprint:
            retire[name] = changed_fields(old.fields, scheme.fields)
        elif old.max_object_size != scheme.max_object_size:
            rejudge[name] = SizeRejudge(old.max_object_size, scheme.max_object_size)
    return SchemePlan(
        retire=retire, rejudge=rejudge, recorded=merged, write=merged != dict(recorded)
    )


def encode_schemes(schemes: Mapping[str, ClassScheme]) -> str:
    return json.dumps(
        {name: schemes[name].to_dict() for name in sorted(schemes)}, separators=(",", ":")
    )


def decode_schemes(text: object) -> dict[str, ClassScheme]:
    """Read `encode_schemes()` output; raises `ValueError` naming the bad class."""
    if not isinstance(text, str):
        raise ValueError("recorded key schemes are not JSON text")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("recorded key schemes are not a JSON object")
    out: dict[str, ClassScheme] = {}
    for name, value in data.items():
        try:
            out[name] = ClassScheme.from_dict(value)
        except ValueError as exc:
            raise ValueError(f"class {name!r}: {exc}") from None
    return out


def encode_events(events: list[Retirement]) -> str:
    """The stored list: the newest `MAX_EVENTS`, and every one whose work is not done."""
    kept = [e for n, e in enumerate(events) if not e.done or n >= len(events) - MAX_EVENTS]
    return json.dumps([event.to_dict() for event in kept], separators=(",", ":"))


def started_events(todo: SchemePlan, at: float) -> list[Retirement]:
    """The retirements a plan starts, their work still to do."""
    events = [
        Retirement(name, at, "key_scheme", fields) for name, fields in sorted(todo.retire.items())
    ]
    for name, limits in sorted(todo.rejudge.items()):
        detail = f"{limits.old_limit} -> {limits.new_limit} bytes"
        events.append(
            Retirement(
                name, at, "size_limit", ("max_object_size",), limit=limits.new_limit, detail=detail
            )
        )
    return events


def class_needle(class_name: str) -> str:
    """Text found in the stored JSON of every record of `class_name` (see
    `patchcache.state.layout.encode_record`): lets a scan skip other classes' records without
    parsing them. A match is always confirmed on the parsed record."""
    return '"class_name":' + json.dumps(class_name) + ","


def decode_events(text: object) -> list[Retirement]:
    """Read `encode_events()` output; raises `ValueError` on anything else."""
    if not isinstance(text, str):
        raise ValueError("recorded retirements are not JSON text")
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("recorded retirements are not a JSON list")
    return [Retirement.from_dict(item) for item in data]


def describe(events: list[Retirement], state_dir: str) -> list[str]:
    """The log lines for what one guard run did: one for retired classes, one for re-judged
    limits (none when nothing happened)."""
    lines: list[str] = []
    retired = [e for e in events if e.kind == "key_scheme"]
    if retired:
        names = ", ".join(f"{e.class_name} ({', '.join(e.changed)})" for e in retired)
        records = sum(e.records for e in retired)
        jobs = sum(e.jobs for e in retired)
        lines.append(
            f"state dir {state_dir}: key scheme changed for class(es) {names}: retired "
            f"{records} record(s) and {jobs} queued job(s) of those classes; other classes "
            "keep their state"
        )
    resized = [e for e in events if e.kind == "size_limit"]
    if resized:
        names = ", ".join(f"{e.class_name} ({e.detail})" for e in resized)
        records = sum(e.records for e in resized)
        lines.append(
            f"state dir {state_dir}: max_object_size changed for class(es) {names}: "
            f"{records} record(s) re-judged by size"
        )
    return lines
