"""A prefetcher killed (SIGKILL) or stopped (SIGTERM) mid-fill loses no job and costs no second
copy from the origin: Squid finishes the expanded fetch on its own, and the next fill joins it
or hits."""

from __future__ import annotations

import signal
import subprocess

import pytest
from support.prefetch_loop import PrefetchLoop, PrefetchLoopFactory, wu_object

from patchcache.state import ObjectState
from patchcache.testbed import MiB, Origin, OriginObject

pytestmark = [pytest.mark.squid, pytest.mark.slow]

SIZE = 24 * MiB
ORIGIN_RATE = 4 * MiB  # the fill takes about 6 s: a wide margin to interrupt it at 25 %
SLACK = 0.05  # copies beyond one: socket buffers in flight when the reader died


def _start_fill(
    loop: PrefetchLoop, origin: Origin
) -> tuple[OriginObject, str, subprocess.Popen[bytes]]:
    obj = wu_object(origin, SIZE, throttle=ORIGIN_RATE)
    match = loop.first_sight(obj)
    proc = loop.spawn("--lease", "2", "--owner", "first")
    sent = origin.wait_for_bytes(obj.path, SIZE // 4, timeout=60)
    assert sent >= SIZE // 4, f"fill did not start: {loop.log_text()}"
    assert proc.poll() is None
    return obj, match.key, proc


def _finish(loop: PrefetchLoop, key: str) -> None:
    done = subprocess.run(
        loop.prefetch_args("--once", "--lease", "2", "--owner", "second"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "completed 1" in done.stdout, done.stdout + done.stderr
    record = loop.store.get(key)
    assert record is not None
    assert record.state is ObjectState.COMPLETE
    assert record.digest_check == "ok"


def test_sigkill_mid_fill_loses_no_job_and_fetches_one_copy(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj, key, proc = _start_fill(loop, origin)

    proc.kill()
    proc.wait(10)
    record = loop.store.get(key)
    assert record is not None and record.state is ObjectState.FILLING
    job = loop.store.get_job(key)
    assert job is not None and job.owner == "first"  # the dead prefetcher's lease, not lost

    _finish(loop, key)
    copies = origin.copies_sent(obj.path)
    print(f"origin copies after SIGKILL and restart: {copies:.4f}")
    assert copies <= 1 + SLACK
    assert loop.cached(loop.url(obj))


def test_sigterm_releases_the_lease_and_fetches_one_copy(
    origin: Origin, prefetch_loop_factory: PrefetchLoopFactory
) -> None:
    loop = prefetch_loop_factory()
    obj, key, proc = _start_fill(loop, origin)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, loop.log_text()
    assert "lease released" in loop.log_text()
    job = loop.store.get_job(key)
    assert job is not None  # still queued, due again at once
    record = loop.store.get(key)
    assert record is not None and record.expandable  # clients keep getting expansion

    _finish(loop, key)
    copies = origin.copies_sent(obj.path)
    print(f"origin copies after SIGTERM and restart: {copies:.4f}")
    assert copies <= 1 + SLACK
