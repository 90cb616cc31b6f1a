"""The prefetcher's own metrics (one process: plain prometheus_client metrics in a registry of
their own; a fill is rare next to an ICAP request, so label lookups are fine here)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import CollectorRegistry

__all__ = ["FILL_OUTCOMES", "PrefetchMetrics"]

FILL_OUTCOMES: tuple[str, ...] = (
    "done",
    "failed",
    "parked",
    "refused",
    "too_big",
    "lost",
    "deferred",
    "released",
    "error",
)
# Fills last from a fraction of a second (a hit) to hours (a large image at a low rate).
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


class PrefetchMetrics:
    """Counters, gauges and a histogram of one prefetcher, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry, class_names: Iterable[str] = ()) -> None:
        self.jobs_started = Counter(
            "patchcache_prefetch_jobs_started",
            "Prefetch jobs taken from the queue (each attempt counts).",
            ("class",),
            registry=registry,
        )
        self.jobs_finished = Counter(
            "patchcache_prefetch_jobs_finished",
            "Prefetch jobs finished, by outcome: done (filled), failed (retry later), parked "
            "(out of attempts), refused (rules), too_big, lost (lease taken over), deferred "
            "(window closed), released (prefetcher stopped), error (state trouble).",
            ("class", "outcome"),
            registry=registry,
        )
        self.filled_bytes = Counter(
            "patchcache_prefetch_filled_bytes",
            "Bytes of completed fills (read through Squid).",
            ("class",),
            registry=registry,
        )
        self.fill_duration = Histogram(
            "patchcache_prefetch_fill_duration_seconds",
            "Duration of completed fills.",
            ("class",),
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.fills_in_progress = Gauge(
            "patchcache_prefetch_fills_in_progress",
            "Fills running now.",
            ("class",),
            registry=registry,
        )
        self.digest_mismatches = Counter(
            "patchcache_prefetch_digest_mismatches",
            "Fills whose body did not match the digest the URL names (purged and failed).",
            ("class",),
            registry=registry,
        )
        self.purges = Counter(
            "patchcache_prefetch_purges",
            "PURGE requests sent to Squid after a digest mismatch, by result.",
            ("result",),
            registry=registry,
        )
        # Series exist from the start, so that rate() and absent-value alerts see zeros.
        for name in class_names:
            self.jobs_started.labels(name)
            self.filled_bytes.labels(name)
            self.fills_in_progress.labels(name)
            self.digest_mismatches.labels(name)
            for outcome in FILL_OUTCOMES:
                self.jobs_finished.labels(name, outcome)
        for result in ("purged", "not_purged"):
            self.purges.labels(result)

    # The prefetcher's FillObserver (patchcache.prefetch.worker).

    def started(self, class_name: str) -> None:
        self.jobs_started.labels(class_name).inc()

    def finished(self, class_name: str, outcome: str) -> None:
        self.jobs_finished.labels(class_name, outcome).inc()

    def completed(self, class_name: str, size: int, seconds: float) -> None:
        self.filled_bytes.labels(class_name).inc(size)
        self.fill_duration.labels(class_name).observe(seconds)

    def running(self, class_name: str, delta: int) -> None:
        self.fills_in_progress.labels(class_name).inc(delta)

    def digest_mismatch(self, class_name: str, purged: tuple[bool, ...]) -> None:
        self.digest_mismatches.labels(class_name).inc()
        for done in purged:
            self.purges.labels("purged" if done else "not_purged").inc()
