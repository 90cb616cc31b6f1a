"""The prefetcher against a real Squid 5.7 and a byte-counting origin: one fill, one copy."""

from __future__ import annotations

import json
import subprocess

import pytest
from support.prefetch_loop import PLAIN_HOST, PrefetchLoopFactory, wu_object

from patchcache.state import ObjectState
from patchcache.testbed import MiB, Origin, bits_download, http_request

pytestmark = pytest.mark.squid


def test_one_queued_job_costs_one_origin_copy_then_ranges_hit(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj = wu_object(origin, 8 * MiB + 4321)
    match = loop.first_sight(obj)

    tally = loop.run_once()

    assert (tally.completed, tally.failed, tally.parked) == (1, 0, 0)
    assert origin.copies_sent(obj.path) == 1.0
    record = loop.store.get(match.key)
    assert record is not None
    assert record.state is ObjectState.COMPLETE
    assert record.digest_check == "ok"
    assert record.bytes_filled == obj.size
    assert loop.store.queue_length() == 0

    # A client's ranged request is now a hit, and a whole BITS download costs nothing upstream.
    url = loop.url(obj)
    reply = http_request(loop.squid.proxy_url, url, headers={"Range": "bytes=1000-1999"})
    assert reply.status == 206
    assert reply.body == obj.content.read(1000, 1000)
    entries = loop.squid.wait_for_access_lines(
        1, match=lambda e: e.method == "GET" and e.status == 206 and e.bytes < 4000
    )
    assert entries and entries[-1].result == "TCP_HIT", [e.code for e in entries]
    bits_download(loop.squid.proxy_url, url, size=obj.size, verify=obj.content)
    assert origin.copies_sent(obj.path) == 1.0


def test_a_second_run_fetches_nothing(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj = wu_object(origin, 2 * MiB)
    match = loop.first_sight(obj)
    assert loop.run_once().completed == 1
    assert loop.store.requeue(match.key)  # an admin asks for a refill of a cached object
    assert loop.run_once().completed == 1
    assert origin.copies_sent(obj.path) == 1.0  # the refill was a hit


def test_channel_add_pre_positions_an_object_of_unknown_size(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj = origin.register("/files/tools/agent-setup.msi", 3 * MiB + 17)
    url = loop.url(obj, PLAIN_HOST)

    refused = loop.channel_add(url, "http://evil.example.net/x.exe", check=False)
    assert refused.returncode == 2, refused
    assert "matches no class" in refused.stderr
    assert loop.store.queue_length() == 0  # all or nothing

    added = loop.channel_add(url, check=True)
    assert "queued" in added.stdout

    done = subprocess.run(
        [*loop.prefetch_args("--once")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "completed 1" in done.stdout, done.stdout + done.stderr
    # One copy plus the one-byte size probe.
    assert origin.bytes_sent(obj.path) == obj.size + 1
    assert loop.cached(url)

    status = subprocess.run(
        [*loop.command("status", "--state-dir", str(loop.state_dir), "--json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(status.stdout)
    assert doc["counts"]["complete"] == 1
    assert doc["queue"] == []


def test_pre_positioned_object_squid_does_not_store_is_parked(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    """A `no-store` object of a class that is not pinned: the fill goes through Squid but is
    not kept, so the record must not become complete (expandable): every client range would
    then fetch the object again from byte 0."""
    loop = prefetch_loop_factory()
    obj = origin.register("/files/tools/nightly.msi", 2 * MiB, cache_control="no-store")
    url = loop.url(obj, PLAIN_HOST)
    loop.channel_add(url, check=True)
    done = subprocess.run(
        [*loop.prefetch_args("--once")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not loop.cached(url)
    (record,) = loop.store.records()
    assert record.state == "parked" and not record.expandable, record
    assert record.last_error is not None and "no-store" in record.last_error
    assert loop.store.queue_length() == 0
