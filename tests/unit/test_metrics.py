"""Metrics: ICAP counters (per decision, class, worker), prefetch metrics, state gauges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from patchcache.icap_service import patchcache_service
from patchcache.icap_service.patchcache_service import PatchcacheService
from patchcache.icap_service.protocol import IcapConnection, RequestHead
from patchcache.metrics import parse_listen
from patchcache.metrics.icap import (
    BYPASS,
    FIRST_SIGHT,
    REFUSE,
    STORE,
    IcapCollector,
    IcapCounters,
)
from patchcache.metrics.prefetch import PrefetchMetrics
from patchcache.metrics.state import StateCollector, read_figures
from patchcache.rules import CompiledRules, load_rules
from patchcache.state import StateStore

D40 = "3b1a4b1e3bc8a0e5a0a4b2a3f1c2d4e5f6a7b8c9"
WU_URL = f"http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb_{D40}.msu"


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> CompiledRules:
    path: Path = tmp_path_factory.mktemp("rules") / "rules.toml"
    path.write_text(
        """
packs = ["windows-update"]
[settings]
default_max_object_size = "8 MiB"
[classes.windows-update]
max_object_size = "256 MiB"
[classes.nocache]
hosts = ["nocache.example"]
cache = false
"""
    )
    return load_rules(path)


class _State:
    def record_first_sight(self, *args: object, due_at: float | None = None) -> bool:
        return True

    def record_too_big(self, *args: object) -> bool:
        return True


def head(url: str, status_line: str, headers: list[str]) -> RequestHead:
    host = url.split("/")[2]
    req = f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    res = (status_line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    icap = (
        (
            "RESPMOD icap://127.0.0.1:1344/respmod ICAP/1.0\r\nHost: 127.0.0.1:1344\r\n"
            f"Encapsulated: req-hdr=0, res-hdr={len(req)}, null-body={len(req) + len(res)}\r\n\r\n"
        ).encode()
        + req
        + res
    )
    conn = IcapConnection()
    conn.receive_data(icap)
    event = conn.next_event()
    assert isinstance(event, RequestHead), event
    return event


def by_labels(counters: IcapCounters) -> dict[tuple[str, str, str], int]:
    return {(m, d, c): n for m, d, c, n in counters.requests() if n}


def test_decision_slots_agree_with_the_service() -> None:
    # patchcache_service.py does not import prometheus_client, so it repeats the slot numbers.
    assert (
        patchcache_service._STORE,
        patchcache_service._REFUSE,
        patchcache_service._FIRST_SIGHT,
        patchcache_service._BYPASS,
    ) == (
        STORE,
        REFUSE,
        FIRST_SIGHT,
        BYPASS,
    )


def test_service_counts_each_decision_by_class(rules: CompiledRules) -> None:
    counters = IcapCounters([c.name for c in rules.classes])
    service = PatchcacheService(rules, _State(), counters=counters)
    service.respmod(head(WU_URL, "HTTP/1.1 206 Partial", ["Content-Range: bytes 0-9/5000"]))
    service.respmod(head(WU_URL, "HTTP/1.1 200 OK", ["Content-Length: 5000"]))
    service.respmod(head(WU_URL, "HTTP/1.1 200 OK", [f"Content-Length: {1 << 30}"]))
    service.respmod(head("http://nocache.example/a", "HTTP/1.1 200 OK", ["Content-Length: 1"]))
    service.respmod(head("http://other.example/a", "HTTP/1.1 200 OK", ["Content-Length: 1"]))
    service.respmod(head(WU_URL, "HTTP/1.1 404 Not Found", ["Content-Length: 1"]))
    service.reqmod(head(WU_URL, "HTTP/1.1 200 OK", []))
    assert by_labels(counters) == {
        ("RESPMOD", "first_sight", "windows-update"): 1,
        ("RESPMOD", "store", "windows-update"): 1,
        ("RESPMOD", "refuse", "windows-update"): 1,
        ("RESPMOD", "refuse", "nocache"): 1,
        ("RESPMOD", "bypass", ""): 1,
        ("RESPMOD", "bypass", "windows-update"): 1,
        ("REQMOD", "bypass", ""): 1,
    }


def test_counters_add_up_across_forked_workers() -> None:
    counters = IcapCounters(["a", "b"], workers=3)
    pids = []
    for index in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: count into its own row, as run_server's children do
            code = 0
            try:
                counters.bind(index)
                for _ in range(1000 * (index + 1)):
                    counters.count("a", STORE)
                counters.error("timeout")
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    counters.count("b", REFUSE)  # the parent's own row is worker 0's: a restarted worker 0
    assert by_labels(counters) == {
        ("RESPMOD", "store", "a"): 6000,
        ("RESPMOD", "refuse", "b"): 1,
    }
    assert counters.errors()["timeout"] == 3


def test_unknown_class_and_bad_worker_index() -> None:
    counters = IcapCounters(["a"])
    counters.count("not-a-class", STORE)  # a class added since: counted as other traffic
    assert by_labels(counters) == {("RESPMOD", "store", ""): 1}
    with pytest.raises(ValueError, match="worker index 1"):
        counters.bind(1)


def test_icap_exposition_names_and_labels() -> None:
    counters = IcapCounters(["debian"])
    counters.count("debian", FIRST_SIGHT)
    counters.error("service")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IcapCollector(counters))
    text = generate_latest(registry).decode()
    assert (
        'patchcache_icap_requests_total{class="debian",decision="first_sight",method="RESPMOD"}'
        " 1.0" in text
    )
    assert 'patchcache_icap_errors_total{kind="service"} 1.0' in text
    assert "REQMOD" not in text  # series of a method never used are left out


def test_prefetch_metrics_follow_the_observer_calls() -> None:
    registry = CollectorRegistry()
    metrics = PrefetchMetrics(registry, ["debian"])
    metrics.started("debian")
    metrics.running("debian", 1)
    metrics.running("debian", -1)
    metrics.completed("debian", 5000, 2.0)
    metrics.finished("debian", "done")
    metrics.digest_mismatch("debian", (True, False))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("patchcache_prefetch_jobs_started_total", **{"class": "debian"}) == 1
    assert value("patchcache_prefetch_filled_bytes_total", **{"class": "debian"}) == 5000
    assert value("patchcache_prefetch_fills_in_progress", **{"class": "debian"}) == 0
    assert (
        value("patchcache_prefetch_jobs_finished_total", **{"class": "debian", "outcome": "done"})
        == 1
    )
    assert value("patchcache_prefetch_fill_duration_seconds_count", **{"class": "debian"}) == 1
    assert value("patchcache_prefetch_digest_mismatches_total", **{"class": "debian"}) == 1
    assert value("patchcache_prefetch_purges_total", result="purged") == 1
    assert value("patchcache_prefetch_purges_total", result="not_purged") == 1


def test_state_figures_and_cached_reads(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state") as store:
        store.record_first_sight("k1", "http://a/1", "debian", 100, None, None, due_at=10.0)
        store.record_first_sight("k2", "http://a/2", "debian", 100, None, None, due_at=50.0)
        store.record_too_big("k3", "http://a/3", "debian", 10**9, None, None)
        figures = read_figures(store, now=40.0, class_names=["debian", "ubuntu"])
    assert figures.objects[("debian", "queued")] == 2
    assert figures.objects[("debian", "too_big")] == 1
    assert figures.objects[("ubuntu", "queued")] == 0
    assert figures.expandable == {"debian": 2, "ubuntu": 0}
    assert figures.queued == {"debian": 2, "ubuntu": 0}
    assert figures.oldest_due_age == 30.0

    now = [100.0]
    opened: list[StateStore] = []

    def open_store() -> StateStore:
        opened.append(StateStore(tmp_path / "state"))
        return opened[-1]

    collector = StateCollector(open_store, ["debian"], min_interval=10.0, clock=lambda: now[0])
    try:
        first = collector.figures()
        assert first is not None and first.oldest_due_age == 90.0
        now[0] = 105.0
        assert collector.figures() is first  # within min_interval: not read again
        now[0] = 111.0
        again = collector.figures()
        assert again is not first and again is not None and again.oldest_due_age == 101.0
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        text = generate_latest(registry).decode()
        assert 'patchcache_state_objects{class="debian",state="queued"} 2.0' in text
        assert 'patchcache_prefetch_queue_jobs{class="debian"} 2.0' in text
        assert len(opened) == 1
    finally:
        for store in opened:
            store.close()


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:9464", "127.0.0.1", 9464), ("[::1]:0", "::1", 0)],
)
def test_parse_listen(text: str, host: str, port: int) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port) == (host, port)
    assert str(listen) == text  # as written: error messages and logs name it so


@pytest.mark.parametrize("text", ["9464", "host:", ":9464", "h:99999"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)
