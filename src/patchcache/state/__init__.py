"""Shared state of patchcache: one record per update object and a persistent job queue.

The store-ID helper (many processes started by Squid), the ICAP service (one or more worker
processes) and the prefetcher sidecar share one state directory (``--state-dir``) through
`StateStore`. It is a `diskcache <https://grantjenks.com/docs/diskcache/>`_ Cache, i.e. one
SQLite database in WAL mode: every change is one SQLite transaction (``BEGIN IMMEDIATE``), so
it is atomic across processes; reads take no lock and never wait for writers.

Who calls what
--------------

=====================  ==============================================================
store-ID helper        ``expandable(key)`` on every matching request: answer ``expand=1``
                       only when it returns True (hot path: one SQLite SELECT).
ICAP service           ``record_first_sight(...)`` on the first ranged (206) miss of an
                       object whose class allows prefetch and whose total size is known
                       and within the class limit; ``record_too_big(...)`` when the size is
                       over the limit; ``record_unstorable(...)`` when a response of an
                       expandable object is one Squid will not store (it is parked).
prefetcher             ``take_job`` -> fetch the whole object through Squid, calling
                       ``renew`` (heartbeat + progress) at least every lease period ->
                       ``complete`` / ``fail`` / ``mark_too_big``, or ``release`` on a
                       graceful stop; ``defer`` to hold a due job until its class's
                       prefetch window opens.
pre-positioning        ``enqueue_url(...)`` to fill a URL before any client asks
                       (size may be unknown until the prefetcher fetches it).
admin / status CLI     ``records``, ``jobs``, ``queue_length``, ``counts_by_state``,
                       ``get``, ``get_job``, ``requeue``, ``forget``, ``key_schemes``,
                       ``retirements``.
services at start      ``apply_key_schemes(...)``: the key-scheme guard (see
                       `patchcache.state.keyschemes`) retires the records of classes
                       whose key scheme changed since they were written.
=====================  ==============================================================

The record
----------

`ObjectRecord` (frozen; ``to_dict``/``from_dict`` give the JSON form): ``key`` (store-ID),
``url`` (what to fetch), ``class_name``, ``total_size`` (None while unknown), ``etag``,
``last_modified``, ``state``, ``attempts`` (times taken by a prefetcher), ``bytes_filled``
(progress of the current or last fill), ``digest_check`` (None / "ok" / "mismatch"),
``first_seen`` and ``updated`` (epoch seconds), ``last_error``, ``next_attempt_at`` (when the
waiting job is due; None when no job waits).

An object is *expandable* when its record exists, its total size is known and its state is
queued, filling or complete.

States and transitions
----------------------

::

    (none) --record_first_sight / enqueue_url--> queued
    (none) --record_too_big--> too_big
    queued | failed --take_job--> filling           (attempts += 1, bytes_filled = 0)
    filling --renew--> filling                       (lease extended, progress recorded)
    filling --lease expires, take_job--> filling     (prefetcher died: taken again)
    filling --complete--> complete                   (job removed)
    filling --fail, attempts < max--> failed         (job due again at retry_at)
    filling --fail, attempts >= max--> parked        (job removed, record kept)
    queued | failed --take_job(max_attempts), attempts >= max--> parked
    filling --mark_too_big--> too_big                (job removed)
    queued | filling | complete | failed --record_unstorable--> parked   (job removed)
    filling --release--> queued                      (attempt not counted, due again)
    queued | failed --defer--> same state            (only the due time moves)
    filling, lease expired --defer--> queued         (the dead holder's lease is cancelled)
    any --requeue--> queued                          (unless a live lease holds the job)
    any --forget--> (none)

``failed`` means "the last attempt failed and a retry waits": it is not expandable, so clients
get plain ranged answers while the origin misbehaves. ``parked`` and ``too_big`` are final
until an admin calls ``requeue``.

Queue semantics
---------------

- At most one job per key, so at most one live lease per key (single flight). A job exists
  exactly while the record is queued, filling or failed.
- Persistent and at-least-once: a job disappears only through ``complete``, ``mark_too_big``,
  parking (``fail`` or ``take_job(max_attempts=)``) or ``forget``. A prefetcher killed with
  SIGKILL leaves its lease to expire; the job is then due again (at its lease expiry time).
- ``take_job`` hands out the job with the earliest due time (enqueue time, retry time, or
  expiry of an abandoned lease), ties in write order.
- A lease is a random token in the `Job`. ``renew``, ``complete``, ``fail``,
  ``mark_too_big`` and ``release`` raise `LeaseLostError` once another prefetcher took the job
  (or an admin requeued or forgot it); a caller whose lease merely expired, with nobody taking
  the job meanwhile, may still renew or finish it.
- Every method that depends on the time takes ``now=`` (epoch seconds) for tests and
  simulation; default ``time.time()``.

Deployment notes
----------------

The directory must be on a local filesystem (SQLite WAL needs shared memory, not NFS) and
writable by every process that opens it, including readers: opening updates diskcache's
settings table and WAL readers need the ``-shm`` file. Squid runs helpers as its effective user
(``proxy`` on Debian), so create the directory owned by that user (or a shared group with a
group-writable umask). Records are never evicted. Changes survive process crashes; with
SQLite ``synchronous=NORMAL`` the last changes before a power loss may be rolled back.
"""

from patchcache.state.keyschemes import ClassScheme, Retirement
from patchcache.state.layout import SCHEMA_VERSION
from patchcache.state.records import (
    EXPANDABLE_STATES,
    DigestCheck,
    Job,
    ObjectRecord,
    ObjectState,
)
from patchcache.state.store import LeaseLostError, StateStore

__all__ = [
    "EXPANDABLE_STATES",
    "SCHEMA_VERSION",
    "ClassScheme",
    "DigestCheck",
    "Job",
    "LeaseLostError",
    "ObjectRecord",
    "ObjectState",
    "Retirement",
    "StateStore",
]
