"""How records and the job queue are laid out in the diskcache, as pure functions (no I/O).

- ``meta:schema`` holds `SCHEMA_VERSION`; ``meta:seq`` a counter that orders queue writes.
- ``rec:<key>`` holds the object's record as text: one flag character, ``1`` if the object is
  expandable and ``0`` if not, followed by the JSON of `ObjectRecord.to_dict()`. The flag lets
  the store-ID helper's hot path answer without parsing JSON; it is always written together
  with the JSON, from it.
- ``job:<key>`` holds the job's `QueueEntry` (JSON): when the job is due, who leases it, and
  the name of its slot.
- ``dem:<key>`` holds the demand seen so far for an object whose class expands only after
  some demand (`expand_after`): distinct clients and the byte ranges asked (JSON), until its
  record is written.
- a *slot* ``q-<due in ms, 15 digits>-<sequence, 12 digits>`` whose value is the object key.

Slots sort (as text) in due order, oldest first, ties broken by the sequence number. That lets
`StateStore.take_job` find the oldest due job with one indexed lookup: diskcache's
``Cache.peek(prefix="q")`` returns the smallest key between ``q-000000000000000`` and
``q-999999999999999``. A leased job's slot is moved to its lease expiry, so an expired lease (a
prefetcher killed with SIGKILL) makes the job due again without anyone cleaning up.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from patchcache.state.records import Job, ObjectRecord

SCHEMA_VERSION = 1
"""Version of this layout; a state dir holding another version is refused."""

RECORD_PREFIX = "rec:"
DEMAND_PREFIX = "dem:"
JOB_PREFIX = "job:"
SLOT_PREFIX = "q"

# peek() only looks between "q-000000000000000" and "q-999999999999999"; stay inside that range.
_MAX_SLOT_MS = 999_999_999_999_998
_MAX_SEQUENCE = 999_999_999_999


def encode_record(record: ObjectRecord) -> str:
    """The stored text of `record`: expandable flag, then compact JSON."""
    flag = "1" if record.expandable else "0"
    return flag + json.dumps(record.to_dict(), separators=(",", ":"))


def decode_record(text: object) -> ObjectRecord:
    """Read `encode_record()` output; raises `ValueError` on anything else."""
    if not isinstance(text, str) or text[:1] not in ("0", "1"):
        raise ValueError("stored value is not a flagged JSON record")
    data = json.loads(text[1:])
    if not isinstance(data, dict):
        raise ValueError("stored value is not a JSON object")
    record = ObjectRecord.from_dict(data)
    if (text[0] == "1") != record.expandable:
        raise ValueError("expandable flag disagrees with the record")
    return record


def stored_expandable(text: object) -> bool:
    """The expandable flag of `encode_record()` output, without parsing the JSON."""
    if isinstance(text, str):
        if text.startswith("1"):
            return True
        if text.startswith("0"):
            return False
    raise ValueError("stored value is not a flagged JSON record")


def slot_key(due_at: float, sequence: int) -> str:
    """The slot name for a job due at `due_at` (epoch seconds), unique by `sequence`."""
    due_ms = min(max(math.ceil(due_at * 1000), 0), _MAX_SLOT_MS)
    return f"{SLOT_PREFIX}-{due_ms:015d}-{sequence % (_MAX_SEQUENCE + 1):012d}"


def is_slot_key(name: str) -> bool:
    return name.startswith(SLOT_PREFIX + "-")


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """The queue's own view of one job; the object's details live in its `ObjectRecord`."""

    slot: str
    due_at: float
    owner: str | None = None
    lease_token: str | None = None
    lease_expires: float | None = None

    def live_lease(self, now: float) -> bool:
        return (
            self.lease_token is not None
            and self.lease_expires is not None
            and (now < self.lease_expires)
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "slot": self.slot,
                "due_at": self.due_at,
                "owner": self.owner,
                "lease_token": self.lease_token,
                "lease_expires": self.lease_expires,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> QueueEntry:
        """Parse `to_json()` output; raises `ValueError` on anything else."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("queue entry is not a JSON object")
        slot = data.get("slot")
        due_at = data.get("due_at")
        owner = data.get("owner")
        token = data.get("lease_token")
        expires = data.get("lease_expires")
        if not isinstance(slot, str) or not is_slot_key(slot):
            raise ValueError(f"queue entry: bad slot {slot!r}")
        if not isinstance(due_at, int | float) or isinstance(due_at, bool):
            raise ValueError(f"queue entry: bad due_at {due_at!r}")
        if owner is not None and not isinstance(owner, str):
            raise ValueError(f"queue entry: bad owner {owner!r}")
        if token is not None and not isinstance(token, str):
            raise ValueError(f"queue entry: bad lease_token {token!r}")
        if expires is not None and (
            not isinstance(expires, int | float) or isinstance(expires, bool)
        ):
            raise ValueError(f"queue entry: bad lease_expires {expires!r}")
        return cls(
            slot=slot,
            due_at=float(due_at),
            owner=owner,
            lease_token=token,
            lease_expires=None if expires is None else float(expires),
        )


def job_from(record: ObjectRecord, entry: QueueEntry) -> Job:
    """The Job handed to prefetchers: the object's details from its record, lease from the queue."""
    return Job(
        key=record.key,
        url=record.url,
        class_name=record.class_name,
        total_size=record.total_size,
        etag=record.etag,
        last_modified=record.last_modified,
        attempt=record.attempts,
        due_at=entry.due_at,
        owner=entry.owner,
        lease_token=entry.lease_token,
        lease_expires=entry.lease_expires,
    )


# Bounds of one object's demand: beyond them the lists stop growing (clients) or the closest
# ranges are merged (which can only overstate coverage: expansion comes sooner, never later).
MAX_DEMAND_CLIENTS = 256
MAX_DEMAND_RANGES = 512


@dataclass(frozen=True, slots=True)
class Demand:
    """Distinct clients and the disjoint, sorted byte ranges (inclusive) asked of one object."""

    clients: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]

    @property
    def covered(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)


def encode_demand(demand: Demand) -> str:
    return json.dumps({"c": list(demand.clients), "r": [list(r) for r in demand.ranges]})


def decode_demand(text: object) -> Demand:
    """Read `encode_demand()` output (None: no demand yet); anything unreadable starts afresh."""
    if not isinstance(text, str):
        return Demand((), ())
    try:
        data = json.loads(text)
        clients = tuple(str(c) for c in data["c"])
        ranges = tuple((int(a), int(b)) for a, b in data["r"])
    except (ValueError, KeyError, TypeError):
        return Demand((), ())
    return Demand(clients, ranges)


def add_demand(demand: Demand, client: str, first: int, last: int, total: int) -> Demand:
    """`demand` with `client` and bytes `first`..`last` (clipped to the object) added."""
    clients = demand.clients
    if client not in clients and len(clients) < MAX_DEMAND_CLIENTS:
        clients = (*clients, client)
    first, last = max(0, first), min(last, total - 1)
    if first > last:
        return Demand(clients, demand.ranges)
    merged: list[tuple[int, int]] = []
    for a, b in sorted((*demand.ranges, (first, last))):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    while len(merged) > MAX_DEMAND_RANGES:
        gap = min(range(len(merged) - 1), key=lambda i: merged[i + 1][0] - merged[i][1])
        merged[gap : gap + 2] = [(merged[gap][0], merged[gap + 1][1])]
    return Demand(clients, tuple(merged))
