"""More than one proxy, with real Squids: branches under a parent, and a CARP farm.

Every box runs the whole suite (`patchcache.testbed.topology`); the bytes of each Squid-to-Squid
link are counted on the wire by a relay, the Internet link's by the origin.

The floor is the same as for one box: the first range of each client that arrives before the
object is known passes through (1 MiB each here); after that, one whole copy per link.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.wu_fetches import WU_DIR, WU_PREFETCH_RULES

from patchcache.testbed import MiB, Origin, OriginObject, run_clients
from patchcache.testbed.stack import Stack
from patchcache.testbed.topology import Farm, Tree

pytestmark = pytest.mark.squid

WU_HOSTS = (
    "download.windowsupdate.com",
    "au.download.windowsupdate.com",
    "wsus.ds.download.windowsupdate.com",
)
DO_HOSTS = (
    "tlu.dl.delivery.mp.microsoft.com",
    "2.tlu.dl.delivery.mp.microsoft.com",
    "dl.delivery.mp.microsoft.com",
)
GUID = "11111111-2222-3333-4444-555555555555"
CLIENTS = 3
# Request and reply heads of a few dozen ranges, on top of the body bytes.
HEADS = 256 * 1024


def wu_urls(origin: Origin, obj: OriginObject, count: int) -> list[str]:
    return [f"http://{WU_HOSTS[i % 3]}:{origin.port}{obj.path}" for i in range(count)]


def whole_requests(origin: Origin, obj: OriginObject) -> int:
    # Whole-object GETs; the store-ID helper's size look-up is a HEAD (no body).
    return sum(
        1 for r in origin.requests(obj.path) if r.method == "GET" and r.range in (None, "bytes=0-")
    )


def parent_log_codes(stack: Stack) -> list[str]:
    assert stack.squid is not None
    return [e.code for e in stack.squid.access_log_entries() if e.method == "GET"]


def test_branch_fetches_each_update_once_through_its_parent(
    origin: Origin, stack_dir: Path
) -> None:
    obj = origin.register_digest_named(WU_DIR, 24 * MiB, suffix=".msu")
    with Tree(stack_dir, origin.port, rules_text=WU_PREFETCH_RULES, branches=1) as tree:
        branch, link = tree.children[0], tree.links[0]
        stats = run_clients(
            branch.proxy_url,
            wu_urls(origin, obj, CLIENTS),
            size=obj.size,
            verify=obj.content,
            stagger=0.1,
            timeout=180,
        )
        assert all(s.bytes_received == obj.size for s in stats)
        assert tree.wait_queues_drained(timeout=90)
        # Internet link: one whole copy plus the first ranges that passed before first sight.
        assert whole_requests(origin, obj) == 1, origin.requests(obj.path)
        assert origin.bytes_sent(obj.path) <= obj.size + CLIENTS * MiB
        # Branch link: the same, once: the parent's store-ID helper maps the branch's request
        # (it carries the client's URL), so the parent serves its one copy to the branch.
        assert link.settled_bytes_down() <= obj.size + CLIENTS * MiB + HEADS
        assert tree.parent is not None
        assert parent_log_codes(tree.parent).count("TCP_MISS/200") <= 1

        # Later clients at the branch: every range from the branch's cache, nothing upstream.
        origin.reset_counters()
        link.reset()
        run_clients(
            branch.proxy_url,
            wu_urls(origin, obj, 2),
            size=obj.size,
            verify=obj.content,
            timeout=120,
        )
        assert origin.bytes_sent(obj.path) == 0
        assert link.settled_bytes_down() == 0
        assert branch.squid is not None
        tail = branch.squid.access_log_entries()[-2 * 24 :]
        assert all(e.code == "TCP_HIT/206" for e in tail), [e.code for e in tail]


def test_two_branches_one_origin_copy_one_copy_per_branch_link(
    origin: Origin, stack_dir: Path
) -> None:
    obj = origin.register_digest_named(WU_DIR, 24 * MiB, suffix=".cab", seed="two-branches")
    urls = wu_urls(origin, obj, CLIENTS)
    with Tree(stack_dir, origin.port, rules_text=WU_PREFETCH_RULES, branches=2) as tree:

        def branch_clients(branch: Stack) -> None:
            run_clients(
                branch.proxy_url, urls, size=obj.size, verify=obj.content, stagger=0.1, timeout=180
            )

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(branch_clients, tree.children))
        assert tree.wait_queues_drained(timeout=90)
        assert whole_requests(origin, obj) == 1, origin.requests(obj.path)
        assert origin.bytes_sent(obj.path) <= obj.size + 2 * CLIENTS * MiB
        for link in tree.links:
            down = link.settled_bytes_down()
            assert obj.size <= down <= obj.size + CLIENTS * MiB + HEADS, down / obj.size


def test_carp_farm_sends_every_variant_to_one_back_end(origin: Origin, stack_dir: Path) -> None:
    obj = origin.register(f"/filestreamingservice/files/{GUID}", 24 * MiB, seed="farm")
    # Three hosts and a per-client signature each: six URLs, one object.
    urls = [
        f"http://{DO_HOSTS[i % 3]}:{origin.port}{obj.path}?P1={1800000000 + i}&P2=404&P3=2&P4=s{i}"
        for i in range(6)
    ]
    with Farm(stack_dir, origin.port, rules_text=WU_PREFETCH_RULES, backs=3) as farm:
        run_clients(farm.proxy_url, urls, size=obj.size, verify=obj.content, stagger=0.1)
        assert farm.wait_queues_drained(timeout=90)
        assert whole_requests(origin, obj) == 1, origin.requests(obj.path)
        assert origin.bytes_sent(obj.path) <= obj.size + len(urls) * MiB
        used = [n for n, link in enumerate(farm.links) if link.settled_bytes_down() > 0]
        assert len(used) == 1, [link.bytes_down for link in farm.links]
