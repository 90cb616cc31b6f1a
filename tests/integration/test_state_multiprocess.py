"""StateStore shared by real, separate Python processes on one state, for both backends: a
state dir, and a Redis database on a real redis-server (the boxes of a farm sharing one state).

Each worker is a fresh interpreter (`python -c WORKER`) that opens its own StateStore, prints
"ready", waits for "go" on stdin (so that all workers start their racing calls together), does
its part and prints one JSON line per result. Workers that must die are killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from patchcache.state import ObjectState, StateStore
from patchcache.state.open import open_state
from patchcache.testbed.squid_logs import wait_until

URL = "http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb1.cab"
STEP_TIMEOUT = 30.0

WORKER = r"""
import json, sys, time
from patchcache.state.open import open_state

args = json.loads(sys.argv[1])
store = open_state(args["state"])
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(2)
role = args["role"]
url = "http://example.test/update.cab"

if role == "sight":
    created = store.record_first_sight(args["key"], url, "windows", 1000, '"e"', None)
    print(json.dumps({"created": created}), flush=True)

elif role == "drain":
    while True:
        job = store.take_job(args["owner"], 60.0)
        if job is None:
            break
        store.renew(job, lease_seconds=60.0, bytes_filled=1)
        time.sleep(0.005)  # a short "fill", so that the four workers interleave
        store.complete(job, digest_check="ok")
        print(json.dumps({"took": job.key}), flush=True)

elif role == "hold":
    job = store.take_job(args["owner"], args["lease"])
    print(json.dumps({"took": job.key}), flush=True)
    deadline = time.monotonic() + 60
    filled = 0
    while time.monotonic() < deadline:  # heartbeat until killed
        filled += 1
        store.renew(job, lease_seconds=args["lease"], bytes_filled=filled)
        time.sleep(0.005)

elif role == "hammer":
    deadline = time.monotonic() + 60
    index = 0
    while time.monotonic() < deadline:  # write as fast as possible until killed
        key = f"h{index}"
        store.record_first_sight(key, url, "windows", 1000, None, None)
        job = store.take_job("hammer", 60.0)
        if job is not None and index % 3:
            store.complete(job)
        index += 1
        if index % 20 == 0:
            print(json.dumps({"written": index}), flush=True)
"""


class Worker:
    def __init__(self, state: str, role: str, **args: object) -> None:
        payload = json.dumps({"state": state, "role": role, **args})
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, payload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read_line(self, timeout: float = STEP_TIMEOUT) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"worker {self.process.pid} said nothing for {timeout} s"
        line = self.process.stdout.readline()
        assert line, f"worker {self.process.pid} exited early (rc={self.process.poll()})"
        return line.strip()

    def read_json(self) -> dict[str, object]:
        value = json.loads(self.read_line())
        assert isinstance(value, dict)
        return value

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def results(self) -> list[dict[str, object]]:
        """Wait for a normal exit and return every JSON line printed after "go"."""
        out, _ = self.process.communicate(timeout=STEP_TIMEOUT)
        assert self.process.returncode == 0, f"worker failed with rc={self.process.returncode}"
        return [json.loads(line) for line in out.splitlines() if line]

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STEP_TIMEOUT)
        assert self.process.returncode == -signal.SIGKILL

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=STEP_TIMEOUT)


@contextmanager
def workers(state: str, count: int, role: str, **args: object) -> Iterator[list[Worker]]:
    """Start `count` workers, wait until all are ready, then tell them all to go at once."""
    started = [Worker(state, role, owner=f"{role}-{n}", **args) for n in range(count)]
    try:
        for worker in started:
            assert worker.read_line() == "ready"
        for worker in started:
            worker.go()
        yield started
    finally:
        for worker in started:
            worker.close()


@pytest.fixture(params=["dir", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The state every process opens: a directory or a redis:// URL."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_state_url"))
    return str(tmp_path / "state")


def assert_consistent(store: StateStore) -> None:
    """Every job belongs to a queued/filling/failed record and vice versa."""
    with_job = {ObjectState.QUEUED, ObjectState.FILLING, ObjectState.FAILED}
    records = store.records()
    jobs = store.jobs()
    assert sorted(j.key for j in jobs) == sorted(r.key for r in records if r.state in with_job)
    assert store.queue_length() == len(jobs)


def test_eight_processes_see_the_same_object_one_job_queued(state: str) -> None:
    open_state(state).close()
    with workers(state, 8, "sight", key="kb1") as started:
        results = [worker.results() for worker in started]
    assert sorted(r[0]["created"] for r in results) == [False] * 7 + [True]
    with open_state(state) as store:
        assert store.queue_length() == 1
        assert [job.key for job in store.jobs()] == ["kb1"]
        assert store.expandable("kb1")


def test_eight_processes_open_a_fresh_state_at_once(state: str) -> None:
    # The directory or the schema is created by whichever worker gets there first.
    with workers(state, 8, "sight", key="kb1") as started:
        results = [worker.results() for worker in started]
    assert sum(bool(r[0]["created"]) for r in results) == 1


def test_four_processes_take_fifty_jobs_each_exactly_once(state: str) -> None:
    with open_state(state) as store:
        for n in range(50):
            assert store.record_first_sight(f"kb{n}", URL, "windows", 1000, None, None)
    with workers(state, 4, "drain") as started:
        taken = [str(line["took"]) for worker in started for line in worker.results()]
    assert Counter(taken) == Counter(f"kb{n}" for n in range(50))
    with open_state(state) as store:
        assert store.queue_length() == 0
        assert store.counts_by_state()[ObjectState.COMPLETE] == 50
        assert all(record.attempts == 1 for record in store.records())


def test_job_of_a_killed_prefetcher_is_taken_again_after_its_lease(state: str) -> None:
    with open_state(state) as store:
        store.record_first_sight("kb1", URL, "windows", 1000, None, None)
        store.record_first_sight("kb2", URL, "windows", 1000, None, None)
        with workers(state, 1, "hold", lease=30.0) as (holder,):
            assert holder.read_json() == {"took": "kb1"}
            _wait_for_progress(store, "kb1")
            holder.kill()  # SIGKILL, most likely in the middle of a renew

        assert_consistent(store)
        record = store.get("kb1")
        job = store.get_job("kb1")
        assert record is not None and job is not None
        assert (record.state, record.attempts) == (ObjectState.FILLING, 1)
        assert job.lease_expires is not None and job.owner == "hold-0"

        # Before expiry only the other job is available; single flight for kb1.
        other = store.take_job("p2", 30.0, now=job.lease_expires - 0.01)
        assert other is not None and other.key == "kb2"
        assert store.take_job("p2", 30.0, now=job.lease_expires - 0.01) is None

        retaken = store.take_job("p2", 30.0, now=job.lease_expires)
        assert retaken is not None
        assert (retaken.key, retaken.attempt, retaken.owner) == ("kb1", 2, "p2")
        store.complete(retaken, now=job.lease_expires + 1)
        store.complete(other, now=job.lease_expires + 1)
        assert store.counts_by_state()[ObjectState.COMPLETE] == 2
        assert store.queue_length() == 0


def test_writer_killed_mid_write_leaves_a_consistent_state(state: str) -> None:
    open_state(state).close()
    with workers(state, 1, "hammer") as (hammer,):
        for _ in range(5):
            hammer.read_json()
        hammer.kill()
    with open_state(state) as store:
        assert_consistent(store)
        records = store.records()
        assert len(records) >= 100
        states = Counter(r.state for r in records)
        assert set(states) <= {ObjectState.QUEUED, ObjectState.FILLING, ObjectState.COMPLETE}
        assert states[ObjectState.QUEUED] <= 1  # killed between its sight and its take
        # Leftover leases expire and their jobs are handed out again.
        later = time.time() + 61
        while (job := store.take_job("p2", 30.0, now=later)) is not None:
            store.complete(job, now=later)
        assert store.queue_length() == 0


def _wait_for_progress(store: StateStore, key: str) -> None:
    """Bounded wait until the holder has renewed at least once."""
    wait_until(
        lambda: store.get(key),
        lambda record: record is not None and record.bytes_filled > 0,
        timeout=STEP_TIMEOUT,
        interval=0.01,
        awaiting=f"progress reported for {key}",
    )
