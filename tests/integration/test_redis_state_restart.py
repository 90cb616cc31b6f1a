"""A Redis state restarted mid-fill: the prefetcher rides out the outage, the job is not lost,
and the origin sends the object once.

Redis runs with appendonly (fsync always) and is killed with SIGKILL, so only what it had
already written to its journal survives, as after a power cut of the Redis box.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.prefetch_loop import PrefetchLoopFactory, wu_object
from support.redis_server import RedisServer

from patchcache.state import ObjectRecord, ObjectState
from patchcache.testbed import MiB, Origin
from patchcache.testbed.squid_logs import wait_until

pytestmark = [pytest.mark.squid, pytest.mark.slow]

SIZE = 24 * MiB
ORIGIN_RATE = 4 * MiB  # about 6 s of fill: room to take Redis away at 25 % and bring it back
SLACK = 0.05
OUTAGE = 1.5  # seconds Redis is away; the lease (2 s) may lapse meanwhile


def test_redis_restart_mid_fill_loses_no_job(
    tmp_path: Path, origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        loop = prefetch_loop_factory(state_url=server.url(0))
        obj = wu_object(origin, SIZE, throttle=ORIGIN_RATE)
        key = loop.first_sight(obj).key
        proc = loop.spawn("--lease", "2", "--owner", "survivor")
        sent = origin.wait_for_bytes(obj.path, SIZE // 4, timeout=60)
        assert sent >= SIZE // 4, f"fill did not start: {loop.log_text()}"

        server.kill()
        time.sleep(OUTAGE)
        server.start()  # same port, same journal

        def record_while_alive() -> ObjectRecord | None:
            record = loop.store.get(key)
            complete = record is not None and record.state is ObjectState.COMPLETE
            assert complete or proc.poll() is None, f"prefetcher died: {loop.log_text()}"
            return record

        record = wait_until(
            record_while_alive,
            lambda found: found is not None and found.state is ObjectState.COMPLETE,
            timeout=120,
            interval=0.2,
            awaiting="the fill to complete across the Redis restart",
            context=loop.log_text,
        )
        assert record is not None
        assert record.digest_check == "ok"
        assert loop.store.queue_length() == 0
        assert proc.poll() is None  # it survived the outage and goes on serving the queue
        copies = origin.copies_sent(obj.path)
        print(f"origin copies across a Redis restart mid-fill: {copies:.4f}")
        log = loop.log_text()
        assert "Connection refused" in log  # the outage did hit the running prefetcher
        assert copies <= 1 + SLACK
        assert loop.cached(loop.url(obj))
    finally:
        server.stop()
