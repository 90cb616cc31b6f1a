"""Size before the first range, through the whole stack (Squid + store-ID helper + ICAP).

Without a size the first range of each client passes through (1 MiB here) before the ICAP
service records the object; with the helper's HEAD (`--head-via`) or the client's own HEAD
(BITS) the very first range is already expanded and concurrent clients join one fetch. A
pre-positioned record held without a size (`channel add --delay`) must not hold expansion back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.wu_fetches import WU_DIR

from patchcache.rules import load_rules
from patchcache.state import StateStore
from patchcache.testbed import MiB, Origin, run_clients
from patchcache.testbed.stack import Stack

pytestmark = pytest.mark.squid

RULES = """\
[settings]
default_max_object_size = "8 MiB"
prefetch_delay = 3600
[classes.delivery-optimization]
max_object_size = "64 MiB"
[classes.windows-update]
max_object_size = "64 MiB"
"""
GUID = "11111111-2222-3333-4444-555555555555"
DO_HOSTS = ("dl.delivery.mp.microsoft.com", "tlu.dl.delivery.mp.microsoft.com")


def do_urls(origin: Origin, path: str, clients: int) -> list[str]:
    return [
        f"http://{DO_HOSTS[i % 2]}:{origin.port}{path}?P1={1800000000 + i}&P2=404&P4=sig{i}"
        for i in range(clients)
    ]


@pytest.mark.parametrize("head_lookup", [True, False], ids=["head-via", "no-lookup"])
def test_do_clients_without_head_one_copy(
    origin: Origin, stack_dir: Path, head_lookup: bool
) -> None:
    obj = origin.register(f"/filestreamingservice/files/{GUID}", 16 * MiB, seed="do")
    with Stack(stack_dir, rules_text=RULES, prefetch=False, head_lookup=head_lookup) as stack:
        urls = do_urls(origin, obj.path, 3)
        run_clients(stack.proxy_url, urls, size=obj.size, verify=obj.content, timeout=120)
        sent = origin.bytes_sent(obj.path)
        if head_lookup:
            assert sent == obj.size  # the first range was already expanded: one copy
        else:
            assert sent >= obj.size + MiB  # the first range passed through (the old floor)


def test_bits_head_then_ranges_one_copy(origin: Origin, stack_dir: Path) -> None:
    obj = origin.register_digest_named(WU_DIR, 16 * MiB, suffix=".msu")
    url = f"http://download.windowsupdate.com:{origin.port}{obj.path}"
    with Stack(stack_dir, rules_text=RULES, prefetch=False) as stack:
        # size=None: each client HEADs first, as BITS does.
        run_clients(stack.proxy_url, [url, url], size=None, verify=obj.content, timeout=120)
        assert origin.bytes_sent(obj.path) == obj.size


def test_delayed_prepositioning_does_not_hold_expansion(origin: Origin, stack_dir: Path) -> None:
    """A `channel add --delay` job waits without a size; a client's first sight proceeds."""
    obj = origin.register(f"/filestreamingservice/files/{GUID}", 16 * MiB, seed="delayed")
    urls = do_urls(origin, obj.path, 2)
    with Stack(stack_dir, rules_text=RULES, prefetch=False, head_lookup=False) as stack:
        found = load_rules(stack.rules_path).key_for(urls[0])
        assert found is not None
        cls, key = found
        with StateStore(stack.state_dir) as state:
            assert state.enqueue_url(key, urls[0], cls.name, due_at=time.time() + 3600)
            run_clients(stack.proxy_url, urls, size=obj.size, verify=obj.content, timeout=120)
            record = state.get(key)
        assert record is not None and record.total_size == obj.size
        # Only the first range passed through before the first sight filled the size in;
        # before, every range passed through (two clients: two copies).
        assert origin.bytes_sent(obj.path) <= obj.size + 2 * MiB
