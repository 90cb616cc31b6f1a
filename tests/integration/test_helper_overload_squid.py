"""Squid keeps serving while the store-ID helpers are overloaded (real Squid, generated lines).

The store-ID lines come from `patchcache squid-conf`; only the helper program is a slow
stand-in (1 helper, `concurrency=1`, 50 ms per lookup, so Squid's queue-size is 2). Six
closed-loop clients, twice what the pool holds (one lookup running plus two queued), keep the
queue over its limit for 60 s. Squid must keep running, answer every request, and say in
cache.log that the helpers are overloaded.

Squid acts on `on-persistent-overload` only after 3 minutes of overload; that the generated
`ERR` then drops lookups and keeps Squid alive, where Squid's default stops it, was measured
with `bench/helper_overload.py --seconds 210` (docs/squid-behaviour.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import SquidFactory

from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, helper_queue_size, render_squid_conf
from patchcache.testbed import Origin
from patchcache.testbed.overload import closed_loop, write_slow_helper

pytestmark = [pytest.mark.squid, pytest.mark.slow]

URLS = [
    f"http://download.windowsupdate.com/d/msdownload/update/software/ftpk/kb{i}.exe"
    for i in range(4)
]


def test_overloaded_store_id_helpers_degrade_not_die(
    origin: Origin, squid_factory: SquidFactory, proxy_dir: Path
) -> None:
    for url in URLS:
        origin.register(url.split("windowsupdate.com", 1)[1], 4096)
    helper = write_slow_helper(proxy_dir / "slow-store-id", delay=0.05)
    opts = ConfOptions(patchcache_bin=str(helper), store_id_children=1, concurrency=1)
    conf = render_squid_conf(load_rules(), opts)
    assert "on-persistent-overload=ERR" in conf and "store_id_bypass off" in conf
    squid = squid_factory(conf, origin_peer_port=origin.port)
    clients = 2 * (opts.store_id_children + helper_queue_size(opts))

    result = closed_loop(squid.proxy_url, URLS, clients=clients, seconds=60.0, timeout=60.0)

    assert squid.running
    assert not result.errors, result
    assert result.answered == result.sent and set(result.statuses) == {200}, result
    # At 20 lookups/s at most, the clients were held back by the helper, not by anything else.
    assert result.sent >= 100, result
    log = squid.cache_log_text()
    assert "store_id processes are busy" in log, squid.cache_log_tail()
    assert "pending requests queued" in log
    assert "FATAL" not in log
