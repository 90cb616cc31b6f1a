"""What the shared state holds, read when Prometheus scrapes (bounded cost: one full read of
the records and the queue at most every `min_interval` seconds; scrapes in between get the
last figures)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from patchcache.errors import StateError
from patchcache.state import ObjectState, StateStore

__all__ = ["StateCollector", "StateFigures", "read_figures"]

_log = logging.getLogger("patchcache.metrics")


@dataclass(slots=True)
class StateFigures:
    objects: dict[tuple[str, str], int] = field(default_factory=dict)  # (class, state) -> n
    expandable: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    oldest_due_age: float = 0.0


def read_figures(store: StateStore, now: float, class_names: Iterable[str] = ()) -> StateFigures:
    """One pass over the records and the queue."""
    figures = StateFigures()
    for name in class_names:
        figures.expandable[name] = 0
        figures.queued[name] = 0
        for state in ObjectState:
            figures.objects[(name, state.value)] = 0
    for record in store.records():
        slot = (record.class_name, record.state.value)
        figures.objects[slot] = figures.objects.get(slot, 0) + 1
        figures.expandable.setdefault(record.class_name, 0)
        if record.expandable:
            figures.expandable[record.class_name] += 1
    oldest: float | None = None
    for job in store.jobs():
        figures.queued[job.class_name] = figures.queued.get(job.class_name, 0) + 1
        if job.due_at <= now and not job.leased_at(now):
            oldest = job.due_at if oldest is None else min(oldest, job.due_at)
    figures.oldest_due_age = 0.0 if oldest is None else max(0.0, now - oldest)
    return figures


class StateCollector(Collector):
    """Gauges of the state directory: objects per class and state, expandable objects, queued
    jobs per class, age of the oldest due job nobody has taken."""

    def __init__(
        self,
        open_store: Callable[[], StateStore],
        class_names: Iterable[str] = (),
        *,
        min_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open_store = open_store
        self._class_names = tuple(class_names)
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._store: StateStore | None = None
        self._figures: StateFigures | None = None
        self._read_at = -float("inf")

    def figures(self) -> StateFigures | None:
        with self._lock:
            now = self._clock()
            if self._figures is None or now - self._read_at >= self._min_interval:
                try:
                    if self._store is None:
                        self._store = self._open_store()
                    self._figures = read_figures(self._store, now, self._class_names)
                    self._read_at = now
                except StateError as exc:
                    _log.warning("metrics: cannot read the state: %s", exc)
            return self._figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self.figures()
        if figures is None:
            return
        objects = GaugeMetricFamily(
            "patchcache_state_objects",
            "Objects known to the shared state, by rules class and state.",
            labels=("class", "state"),
        )
        for (name, state), n in sorted(figures.objects.items()):
            objects.add_metric((name, state), n)
        yield objects
        expandable = GaugeMetricFamily(
            "patchcache_state_expandable_objects",
            "Objects the store-ID helper expands (size known; queued, filling or complete).",
            labels=("class",),
        )
        for name, n in sorted(figures.expandable.items()):
            expandable.add_metric((name,), n)
        yield expandable
        queued = GaugeMetricFamily(
            "patchcache_prefetch_queue_jobs",
            "Prefetch jobs in the queue (leased ones included), by class.",
            labels=("class",),
        )
        for name, n in sorted(figures.queued.items()):
            queued.add_metric((name,), n)
        yield queued
        yield GaugeMetricFamily(
            "patchcache_prefetch_oldest_due_job_age_seconds",
            "How long the oldest due, untaken prefetch job has waited (0: none waits).",
            value=figures.oldest_due_age,
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
