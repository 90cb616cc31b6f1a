"""PURGE on Squid 5.7 and the digest check: a bad body is purged, marked and retried, bounded."""

from __future__ import annotations

import asyncio

import pytest
from support.prefetch_loop import PrefetchLoopFactory, wu_object

from patchcache.prefetch.purge import purge_object, purge_url
from patchcache.state import ObjectState
from patchcache.testbed import MiB, Origin

pytestmark = pytest.mark.squid


@pytest.mark.parametrize("name", ["original URL", "key URL"])
def test_purge_releases_the_object_by_either_name(
    name: str, origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj = wu_object(origin, 1 * MiB)
    match = loop.first_sight(obj)
    url = loop.url(obj)
    assert loop.run_once().completed == 1
    assert loop.cached(url)

    target = url if name == "original URL" else match.key
    outcome = asyncio.run(purge_url(loop.proxy, target))
    assert outcome.status == 200, outcome
    assert not loop.cached(url)
    # Nothing left under the other name either.
    other = match.key if name == "original URL" else url
    assert asyncio.run(purge_url(loop.proxy, other)).status == 404


def test_purge_object_reports_both_names(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj = wu_object(origin, 1 * MiB)
    match = loop.first_sight(obj)
    assert loop.run_once().completed == 1
    key_outcome, url_outcome = asyncio.run(purge_object(loop.proxy, loop.url(obj), match.key))
    assert (key_outcome.status, url_outcome.status) == (200, 404)


def test_digest_mismatch_is_purged_marked_and_retried_a_bounded_number_of_times(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory(max_attempts=3)
    bad = wu_object(origin, 2 * MiB, corrupt=True)
    match = loop.first_sight(bad)
    url = loop.url(bad)

    tally = loop.run_once()

    assert (tally.completed, tally.failed, tally.parked) == (0, 2, 1)
    record = loop.store.get(match.key)
    assert record is not None
    assert record.state is ObjectState.PARKED
    assert record.attempts == 3
    assert record.last_error is not None
    assert "digest mismatch" in record.last_error
    assert record.digest_check == "mismatch"
    assert "purged via key URL" in record.last_error
    assert loop.store.queue_length() == 0
    # Each attempt fetched from the origin again (the bad copy was purged every time) ...
    assert origin.copies_sent(bad.path) == 3.0
    # ... and none is left in the cache for clients.
    assert not loop.cached(url)
