"""A rate-limited fill through a real Squid: with the generated delay pools the origin (the WAN)
is held to the class's rate, and the prefetcher reads at that rate too.

Speed is measured, not asserted tightly (bench/prefetch_throttle.py prints the accuracy): the
only assertion on time is a lower bound that a correct throttle cannot break on any machine, a
fill cannot be faster than its limit allows.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from support.prefetch_loop import PLAIN_HOST, PrefetchLoopFactory

from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.squidconf.delay_pools import render_delay_pools
from patchcache.state import ObjectState
from patchcache.testbed import MiB, Origin, squid_parse
from patchcache.testbed.stack import patchcache_binary

pytestmark = pytest.mark.squid

RATE = 4 * MiB
SIZE = 16 * MiB
BURST = RATE / 4  # TokenBucket's default burst


@pytest.mark.slow
def test_class_rate_limits_the_fill_and_the_origin(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory(class_options=f'prefetch_rate = "{RATE // MiB} MiB/s"')
    obj = origin.register("/files/big/image.wim", SIZE)
    match = loop.first_sight(obj, PLAIN_HOST)

    began = time.monotonic()
    tally = loop.run_once()
    elapsed = time.monotonic() - began

    assert tally.completed == 1
    record = loop.store.get(match.key)
    assert record is not None and record.state is ObjectState.COMPLETE
    assert origin.copies_sent(obj.path) == 1.0
    (fetch,) = [r for r in origin.requests(obj.path) if r.body_bytes]
    origin_rate = fetch.body_bytes / (fetch.finished - fetch.started)
    fill_rate = SIZE / elapsed
    print(
        f"limit {RATE} B/s: fill {fill_rate:.0f} B/s ({fill_rate / RATE:.3f}x), "
        f"origin {origin_rate:.0f} B/s ({origin_rate / RATE:.3f}x), {elapsed:.2f} s"
    )
    assert elapsed >= (SIZE - BURST) / RATE * 0.95
    # Squid's delay pool starts half full and refills once per second: loose bound only.
    assert origin_rate <= RATE * 1.5


def test_generated_config_with_delay_pools_parses(tmp_path: Path) -> None:
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(
        'packs = ["windows-update"]\n[settings]\nprefetch_rate = "10 MiB/s"\n'
        '[classes.windows-update]\nprefetch_rate = "2 MiB/s"\n'
    )
    rules = load_rules(rules_path)
    conf = "http_port 127.0.0.1:3999\n" + render_squid_conf(
        rules, ConfOptions(patchcache_bin=patchcache_binary(), state_dir=tmp_path / "state")
    )
    assert render_delay_pools(rules).strip() in conf
    path = tmp_path / "squid.conf"
    path.write_text(conf)
    done = squid_parse(path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not [line for line in output.splitlines() if re.search(r"ERROR|FATAL|BUNGLED", line)], (
        output
    )
