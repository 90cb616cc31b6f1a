"""The closed loop with every component running: Squid + store-ID helper + ICAP + prefetcher.

A ranged miss is seen by the ICAP service (total size known, within the class limit), a job is
queued, the helper answers expand=1 from then on, the prefetcher fills Squid's cache with the
whole object once, and every later range of every client and URL variant joins or hits it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.wu_fetches import WU_DIR, WU_PREFETCH_RULES, origin_url

from patchcache.testbed import MiB, Origin, run_clients
from patchcache.testbed.clients import bits_download
from patchcache.testbed.stack import Stack

pytestmark = pytest.mark.squid

GUID = "11111111-2222-3333-4444-555555555555"


def test_one_client_one_origin_copy_then_hits(origin: Origin, stack_dir: Path) -> None:
    obj = origin.register_digest_named(WU_DIR, 24 * MiB, suffix=".msu")
    with Stack(stack_dir, rules_text=WU_PREFETCH_RULES) as stack:
        url = origin_url(origin, "download.windowsupdate.com", obj.path)
        bits_download(stack.proxy_url, url, size=obj.size, verify=obj.content, timeout=120)
        assert stack.wait_queue_drained(timeout=60)
        # The first range passed through; then one whole copy, nothing more.
        assert origin.bytes_sent(obj.path) <= obj.size + 2 * MiB
        status = stack.status()
        assert status["counts"]["complete"] == 1, status
        # A second client's ranges are all hits, with no origin traffic.
        assert stack.squid is not None
        before = len(stack.squid.access_log_lines())
        origin.reset_counters()
        bits_download(stack.proxy_url, url, size=obj.size, verify=obj.content, timeout=120)
        assert origin.bytes_sent(obj.path) == 0
        tail = stack.squid.wait_for_access_lines(before + 24, timeout=10)[before:]
        assert len(tail) == 24
        assert all(entry.code == "TCP_HIT/206" for entry in tail), [e.code for e in tail]


def test_concurrent_clients_on_variants_cost_one_copy(origin: Origin, stack_dir: Path) -> None:
    obj = origin.register(f"/filestreamingservice/files/{GUID}", 32 * MiB, seed="do-loop")
    hosts = [
        "tlu.dl.delivery.mp.microsoft.com",
        "2.tlu.dl.delivery.mp.microsoft.com",
        "dl.delivery.mp.microsoft.com",
    ]
    urls = [
        f"http://{hosts[i % 3]}:{origin.port}{obj.path}?P1={1800000000 + i}&P2=404&P3=2&P4=s{i}"
        for i in range(5)
    ]
    with Stack(stack_dir, rules_text=WU_PREFETCH_RULES) as stack:
        # run_clients verifies every byte and that every answer is a 206 with its own range.
        stats = run_clients(
            stack.proxy_url, urls, size=obj.size, verify=obj.content, stagger=0.1, timeout=180
        )
        assert all(s.bytes_received == obj.size for s in stats)
        assert stack.wait_queue_drained(timeout=60)
        upstream = origin.bytes_sent(obj.path)
        # One whole copy plus the few first ranges that passed before the first sight.
        assert upstream <= obj.size + 5 * MiB, upstream / obj.size
        # (The store-ID helper's HEAD before the first range is not a fetch.)
        whole = [
            r
            for r in origin.requests(obj.path)
            if r.method == "GET" and r.range in (None, "bytes=0-")
        ]
        assert len(whole) == 1, [(r.range, r.body_bytes) for r in origin.requests(obj.path)]


def test_over_limit_object_is_never_expanded(origin: Origin, stack_dir: Path) -> None:
    obj = origin.register_digest_named(WU_DIR, 80 * MiB, suffix=".cab", seed="too-big")
    with Stack(stack_dir, rules_text=WU_PREFETCH_RULES) as stack:
        url = origin_url(origin, "au.download.windowsupdate.com", obj.path)
        stats = bits_download(
            stack.proxy_url, url, size=obj.size, verify=obj.content, stop_after=8 * MiB, timeout=120
        )
        assert stats.bytes_received == 8 * MiB
        # Exactly the bytes asked for crossed the uplink, and every request kept its Range.
        assert origin.bytes_sent(obj.path) == 8 * MiB
        gets = [r for r in origin.requests(obj.path) if r.method == "GET"]
        assert all(r.range and r.range != "bytes=0-" for r in gets)
        status = stack.status()
        assert status["counts"]["too_big"] == 1 and not status["queue"], status
