"""State writes of the ICAP service, off the event loop: a queue to one writer thread per process.

A state write is one SQLite transaction (``BEGIN IMMEDIATE``); while another process holds the
state's write lock it waits, up to the store's timeout (10 s). Made on the event loop, that wait
stopped every connection of the worker. The decisions (patchcache_service.py) never depend on
a write's outcome: Squid gets the same answer whether the first sight was recorded or not. So the
loop only enqueues the write and answers at once; one thread makes the writes, in order. A slow
or locked store then delays only the writes (the prefetch they queue), never an ICAP answer.

The queue is bounded (``max_pending``): when the store has been stuck for that many writes, new
ones are dropped with a warning; the object is then just not prefetched, as after any state
failure. A write for a key that already waits is not queued again (the store deduplicates first
sights anyway; this keeps a stall from filling the queue with one popular object).

The thread starts on first use in each process: the ICAP service forks its workers before any
request, and neither a thread nor its queue survives a fork. Writes come from one thread per
process (the event loop's). `QueuedStateWriter.flush` waits (bounded) until the queue is empty:
the server calls it at shutdown (`run_server`'s ``on_stop``).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from patchcache.state_ports import DemandRecorder, ForwardingRecorder, StateWrite

__all__ = ["QueuedStateWriter", "WriterStats"]

log = logging.getLogger(__name__)

_Write = tuple[tuple[str, str], Callable[[], object]]


@dataclass(slots=True)
class WriterStats:
    """Counters of one process's writer."""

    written: int = 0
    failed: int = 0
    dropped: int = 0


class _Queue:
    """The queue and thread of one process."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: collections.deque[_Write] = collections.deque()
        self.keys: set[tuple[str, str]] = set()  # queued or being written
        self.busy = False
        self.stats = WriterStats()
        self.thread = threading.Thread(target=self.run, name="patchcache-state-writer", daemon=True)
        self.thread.start()

    def run(self) -> None:
        cond = self.cond
        while True:
            with cond:
                self.busy = False
                while not self.items:
                    cond.notify_all()  # flush() waiters
                    cond.wait()
                key, write = self.items.popleft()
                self.busy = True
            try:
                write()
            except Exception as exc:
                # Same policy as a failed write on the loop had: log, the object is not
                # prefetched, the service goes on.
                self.stats.failed += 1
                log.warning("state update for %s failed: %s", key[1], exc)
            else:
                self.stats.written += 1
            with cond:
                self.keys.discard(key)


class QueuedStateWriter(ForwardingRecorder):
    """A `DemandRecorder` that queues the calls to ``inner`` for a writer thread.

    The methods return True when the write was queued (or the same one already waits), False
    when it was dropped because the queue is full; never the store's own answer.
    """

    def __init__(self, inner: DemandRecorder, *, max_pending: int = 10_000) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._inner = inner
        self._max_pending = max_pending
        self._queue: _Queue | None = None
        self._pid = -1
        self._last_drop_log = 0.0

    @property
    def stats(self) -> WriterStats:
        """This process's counters."""
        return self._current().stats

    def _current(self) -> _Queue:
        if self._queue is None or self._pid != os.getpid():
            self._queue = _Queue()
            self._pid = os.getpid()
        return self._queue

    def _forward(self, kind: str, tag: str, write: StateWrite) -> bool:
        queue = self._current()
        queued = (kind, tag)
        with queue.cond:
            if queued in queue.keys:
                return True
            if len(queue.items) >= self._max_pending:
                queue.stats.dropped += 1
                dropped = queue.stats.dropped
            else:
                queue.keys.add(queued)
                queue.items.append((queued, functools.partial(write, self._inner)))
                queue.cond.notify()
                return True
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # one line per 10 s while the store is stuck
            self._last_drop_log = now
            log.warning(
                "state store too slow: %d writes waiting, %s for %s dropped (%d so far)",
                self._max_pending,
                kind,
                tag,
                dropped,
            )
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until every queued write is done, at most ``timeout`` seconds. True if done."""
        queue = self._queue
        if queue is None or self._pid != os.getpid():
            return True
        with queue.cond:
            return queue.cond.wait_for(lambda: not queue.items and not queue.busy, timeout)
