"""Metrics scraped by a real Prometheus (Debian's `prometheus`) after a real fill through Squid.

The whole suite runs (`Stack`: Squid, store-ID helper, ICAP service with two workers, the
prefetcher), each service with `--metrics-listen` and `--log-format json`. A ranged download
makes the ICAP service see a first sight and the prefetcher fill the object; then a Prometheus
started here on loopback (its own config and data directory, a 1 s scrape interval) scrapes
both endpoints, and the counters are read back through its HTTP API (/api/v1/query).

Skipped only when prometheus is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import terminate
from support.wu_fetches import WU_DIR, WU_PREFETCH_RULES

from patchcache.testbed import MiB, Origin
from patchcache.testbed.clients import bits_download
from patchcache.testbed.ports import free_port
from patchcache.testbed.squid_logs import wait_until
from patchcache.testbed.stack import Stack

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.squid,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)"
    ),
]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        body: bytes = reply.read()
        return body


@contextlib.contextmanager
def prometheus(workdir: Path, targets: dict[str, int]) -> Iterator[str]:
    """A Prometheus on a free loopback port scraping `targets` (job -> port) every second."""
    assert PROMETHEUS is not None
    port = free_port()
    config = workdir / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        for job, target in targets.items()
    )
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
    )
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()
            with contextlib.suppress(OSError):
                return b"Ready" in http_get(f"{base}/-/ready", timeout=2)
            return False

        wait_until(ready, bool, timeout=60, interval=0.2, awaiting="prometheus to be ready")
        yield base
    finally:
        terminate(proc, grace=20)


def query(base: str, promql: str) -> float | None:
    """The single value of an instant query, or None when it has no result yet."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    doc = json.loads(http_get(url))
    assert doc["status"] == "success", doc
    result = doc["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def wait_value(base: str, promql: str, predicate: str, timeout: float = 60.0) -> float:
    """Poll (bounded) until the query's value satisfies `predicate` (">=1", "==N")."""
    op, wanted = predicate[:2], float(predicate[2:])
    value = wait_until(
        lambda: query(base, promql),
        lambda v: v is not None and (v >= wanted if op == ">=" else v == wanted),
        timeout=timeout,
        interval=0.5,
        awaiting=f"{promql} {predicate}",
    )
    assert value is not None
    return value


def json_events(text: str) -> list[dict[str, object]]:
    """The JSON log lines of a service log (click's start-up lines are plain text)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))  # every JSON-looking line must parse
    return found


def test_prometheus_scrapes_the_services_after_a_real_fill(origin: Origin, stack_dir: Path) -> None:
    icap_port, prefetch_port = free_port(), free_port()
    obj = origin.register_digest_named(WU_DIR, 8 * MiB, suffix=".msu")
    secret = "token=s3cret-do-not-log"
    stack = Stack(
        stack_dir,
        rules_text=WU_PREFETCH_RULES,
        # The first sight must come from the ICAP service (the counter under test), not from
        # the store-ID helper's size look-up.
        head_lookup=False,
        icap_options=(
            "--workers",
            "2",
            "--metrics-listen",
            f"127.0.0.1:{icap_port}",
            "--log-format",
            "json",
        ),
        prefetch_options=(
            "--metrics-listen",
            f"127.0.0.1:{prefetch_port}",
            "--log-format",
            "json",
        ),
    )
    with stack:
        url = f"http://download.windowsupdate.com:{origin.port}{obj.path}?{secret}"
        bits_download(stack.proxy_url, url, size=obj.size, verify=obj.content, timeout=120)
        assert stack.wait_queue_drained(timeout=90)
        assert stack.status()["counts"]["complete"] == 1

        # The endpoints answer directly too (what Prometheus will read).
        icap_text = http_get(f"http://127.0.0.1:{icap_port}/metrics").decode()
        assert 'decision="first_sight"' in icap_text
        assert "patchcache_icap_errors_total" in icap_text

        with prometheus(stack_dir, {"icap": icap_port, "prefetch": prefetch_port}) as base:
            assert wait_value(base, 'up{job="icap"}', "==1") == 1
            assert wait_value(base, 'up{job="prefetch"}', "==1") == 1
            # Summed over the two ICAP workers (the metric has no per-worker label).
            first = (
                'sum(patchcache_icap_requests_total{decision="first_sight",class="windows-update"})'
            )
            assert wait_value(base, first, ">=1") >= 1
            done = 'patchcache_prefetch_jobs_finished_total{class="windows-update",outcome="done"}'
            assert wait_value(base, done, "==1") == 1
            filled = 'patchcache_prefetch_filled_bytes_total{class="windows-update"}'
            assert wait_value(base, filled, f"=={obj.size}") == obj.size
            complete = 'patchcache_state_objects{class="windows-update",state="complete"}'
            # The state gauges are read at most every 10 s: allow a refresh.
            assert wait_value(base, complete, "==1") == 1
            assert (
                query(
                    base, 'patchcache_prefetch_fill_duration_seconds_count{class="windows-update"}'
                )
                == 1
            )

    # JSON logs: one object per line, the fill with its class and key, and no query token.
    prefetch_log = stack.log_text("prefetch")
    events = json_events(prefetch_log)
    complete_events = [e for e in events if e["event"] == "fill_complete"]
    assert len(complete_events) == 1, prefetch_log[-2000:]
    assert complete_events[0]["class"] == "windows-update"
    assert complete_events[0]["bytes"] == obj.size
    assert str(complete_events[0]["key"]).startswith("http://")
    assert json_events(stack.log_text("icap")), stack.log_text("icap")[-2000:]
    for name in ("prefetch", "icap"):
        assert "s3cret" not in stack.log_text(name)
