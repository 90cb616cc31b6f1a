"""ICAP request counters that add up across worker processes, and their Prometheus collector.

Why not prometheus_client's multiprocess mode: it keeps every sample in a per-pid mmap file
under PROMETHEUS_MULTIPROC_DIR and takes a lock on each increment; the directory must be made,
cleaned of dead workers' files and exported to the environment before prometheus_client is
first imported. Here the parent maps one anonymous shared memory block before it forks the
workers: one row of 64-bit counters per worker index. A worker adds to its own row only (no
lock: no other process writes it); a restarted worker takes over the row of the index it
replaces, so the sums never go backwards. The parent's `/metrics` sums the rows on scrape.

Hot path: `IcapCounters.count(class_name, decision)` is one dict lookup (class name -> the
row offset, computed once) and one in-place add on a memoryview: no label lookup, no lock.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from patchcache.metrics import Listen, MetricsServer, serve_metrics

__all__ = [
    "BYPASS",
    "DECISIONS",
    "ERROR_KINDS",
    "FIRST_SIGHT",
    "REFUSE",
    "STORE",
    "IcapCollector",
    "IcapCounters",
    "IcapMetricsEndpoint",
]

# Decision slots (the order of DECISIONS): what the service did with one response.
STORE = 0  # a class's response Squid may store (within its limit)
REFUSE = 1  # marked X-PatchCache-Store: no (class does not cache, over its limit, size unknown)
FIRST_SIGHT = 2  # a ranged 206 of a prefetchable class, handed to the state as a first sight
BYPASS = 3  # not judged: outside every class, no HTTP head, or a status other than 200/206
DECISIONS: tuple[str, ...] = ("store", "refuse", "first_sight", "bypass")
METHODS: tuple[str, ...] = ("RESPMOD", "REQMOD")
# Errors the server answers or sees: a service exception (500), a malformed request (4xx/5xx),
# a connection past a deadline, a connection refused because every slot was busy (503).
ERROR_KINDS: tuple[str, ...] = ("service", "protocol", "timeout", "refused")

OTHER_CLASS = ""
"""Class label of traffic outside every class (Prometheus treats an empty label as absent)."""


class IcapCounters:
    """Request and error counters of up to `workers` processes, in shared memory.

    Make it in the parent before forking; call `bind(index)` in each worker after the fork.
    """

    def __init__(self, class_names: Iterable[str], workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        names = [OTHER_CLASS, *dict.fromkeys(n for n in class_names if n != OTHER_CLASS)]
        self.class_names: tuple[str, ...] = tuple(names)
        self.workers = workers
        per_method = len(names) * len(DECISIONS)
        self._width = len(METHODS) * per_method + len(ERROR_KINDS)
        self._errors_at = len(METHODS) * per_method
        # Offsets of each class's first decision slot, per method.
        self._respmod = {name: i * len(DECISIONS) for i, name in enumerate(names)}
        self._reqmod = {name: per_method + off for name, off in self._respmod.items()}
        # Anonymous mappings are MAP_SHARED: forked workers write into the parent's pages.
        self._memory = mmap.mmap(-1, 8 * self._width * workers)
        self._all = memoryview(self._memory).cast("q")
        self._row = self._all[: self._width]

    def bind(self, worker: int) -> None:
        """Make this process count into the row of worker `worker` (0-based)."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker index {worker} out of 0..{self.workers - 1}")
        self._row = self._all[worker * self._width : (worker + 1) * self._width]

    def count(self, class_name: str, decision: int) -> None:
        """One RESPMOD answered with `decision` (STORE, REFUSE, FIRST_SIGHT, BYPASS)."""
        self._row[self._respmod.get(class_name, 0) + decision] += 1

    def count_reqmod(self, class_name: str, decision: int) -> None:
        self._row[self._reqmod.get(class_name, self._reqmod[OTHER_CLASS]) + decision] += 1

    def error(self, kind: str) -> None:
        """One error of `kind` (one of ERROR_KINDS; rare, so the index is looked up)."""
        self._row[self._errors_at + ERROR_KINDS.index(kind)] += 1

    def totals(self) -> list[int]:
        """Every slot summed over the workers."""
        sums = [0] * self._width
        for worker in range(self.workers):
            row = self._all[worker * self._width : (worker + 1) * self._width]
            for i, value in enumerate(row):
                sums[i] += value
        return sums

    def requests(self) -> Iterator[tuple[str, str, str, int]]:
        """(method, decision, class, count) for every slot, summed over the workers."""
        sums = self.totals()
        per_method = len(self.class_names) * len(DECISIONS)
        for m, method in enumerate(METHODS):
            for c, name in enumerate(self.class_names):
                for d, decision in enumerate(DECISIONS):
                    yield method, decision, name, sums[m * per_method + c * len(DECISIONS) + d]

    def errors(self) -> dict[str, int]:
        sums = self.totals()
        return {kind: sums[self._errors_at + i] for i, kind in enumerate(ERROR_KINDS)}


class IcapCollector(Collector):
    """Exports `IcapCounters` (read on each scrape; cost: workers x slots additions)."""

    def __init__(self, counters: IcapCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily(
            "patchcache_icap_requests",
            "ICAP requests answered, by ICAP method, decision and rules class "
            "(class empty: outside every class).",
            labels=("method", "decision", "class"),
        )
        for method, decision, name, value in self.requests_nonzero():
            requests.add_metric((method, decision, name), value)
        yield requests
        errors = CounterMetricFamily(
            "patchcache_icap_errors",
            "ICAP errors: service (500), protocol (malformed request), timeout (a deadline "
            "passed), refused (503, every connection slot busy).",
            labels=("kind",),
        )
        for kind, value in self._counters.errors().items():
            errors.add_metric((kind,), value)
        yield errors

    def requests_nonzero(self) -> Sequence[tuple[str, str, str, int]]:
        # Every class's store/refuse/bypass series exists from the start (so rate() has a
        # zero to start from) for RESPMOD; REQMOD series appear once counted.
        return [row for row in self._counters.requests() if row[0] == "RESPMOD" or row[3] > 0]

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class IcapMetricsEndpoint:
    """The ICAP service's `/metrics`: counters made before the fork, served by the parent."""

    def __init__(self, listen: Listen, class_names: Iterable[str], workers: int) -> None:
        self.listen = listen
        self.counters = IcapCounters(class_names, workers)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(IcapCollector(self.counters))
        self.server: MetricsServer | None = None

    def start(self) -> str:
        """Serve `/metrics`; returns ``host:port``. Idempotent."""
        if self.server is None:
            self.server = serve_metrics(self.listen, self.registry)
        host = self.listen.host
        return f"[{host}]:{self.server.port}" if ":" in host else f"{host}:{self.server.port}"
