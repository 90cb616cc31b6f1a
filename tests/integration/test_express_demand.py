"""Express (.psf) payloads through the whole stack: demand-aware expansion (`expand_after`).

A few clients reading scattered ranges must cost only the bytes they read (no whole-file fetch
on first sight); many clients must trigger one whole copy. Each client reads from its own
127.0.0.x address so that Squid (X-Client-IP) tells them apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchcache.state import StateStore
from patchcache.testbed import MiB, Origin
from patchcache.testbed.clients import run_sparse_clients
from patchcache.testbed.scenarios import LOOPBACK_CLIENTS
from patchcache.testbed.stack import Stack

pytestmark = pytest.mark.squid

RULES = """\
[settings]
default_max_object_size = "8 MiB"
prefetch_delay = 3600
[classes.windows-update-express]
max_object_size = "64 MiB"
"""
PSF_DIR = "/d/msdownload/update/software/updt/2026/11"


def _run(origin: Origin, stack_dir: Path, clients: int, read: int) -> tuple[int, int, int]:
    obj = origin.register_digest_named(PSF_DIR, 32 * MiB, suffix=".psf", seed=f"psf{clients}")
    url = f"http://download.windowsupdate.com:{origin.port}{obj.path}"
    with Stack(stack_dir, rules_text=RULES, prefetch=False, extra_config=LOOPBACK_CLIENTS) as stack:
        stats = run_sparse_clients(
            stack.proxy_url, url, clients, size=obj.size, read_bytes=read, verify=obj.content
        )
        with StateStore(stack.state_dir) as state:
            records = len(state.records())
    return origin.bytes_sent(obj.path), sum(s.bytes_received for s in stats), records


def test_few_sparse_readers_cost_only_what_they_read(origin: Origin, stack_dir: Path) -> None:
    upstream, asked, records = _run(origin, stack_dir, 3, 2 * MiB)
    # Expanding on first sight cost a whole 32 MiB copy here (5.3x in the scenario).
    assert upstream <= 1.10 * asked
    assert records == 0  # the demand (3 clients, 6 of 32 MiB) is below the pack's threshold


def test_many_sparse_readers_trigger_one_copy(origin: Origin, stack_dir: Path) -> None:
    upstream, asked, records = _run(origin, stack_dir, 12, 6 * MiB)
    assert records == 1
    assert upstream <= 1.30 * 32 * MiB < asked
