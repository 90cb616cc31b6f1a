"""Unit tests of patchcache.state: records, layout and every StateStore transition.

The contract tests (every test taking the `store` fixture, and the model-based machine) run
over both backends: a real StateStore (diskcache) in a pytest tmp dir and a RedisStateStore on
a real redis-server the fixture starts. Time is passed with `now=`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import diskcache  # type: ignore[import-untyped]
import pytest
import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from support.redis_server import RedisServer

from patchcache.errors import StateError
from patchcache.installation import SQUID_USER, as_squid_user
from patchcache.state import (
    SCHEMA_VERSION,
    Job,
    LeaseLostError,
    ObjectRecord,
    ObjectState,
    StateStore,
)
from patchcache.state.layout import (
    decode_record,
    encode_record,
    slot_key,
    stored_expandable,
)
from patchcache.state.open import open_state
from patchcache.testbed.squid import new_workdir

T0 = 1_700_000_000.0
URL = "http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb1.cab"


@pytest.fixture(params=["dir", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    spec = str(tmp_path / "state")
    if request.param == "redis":
        spec = request.getfixturevalue("redis_state_url")
    with open_state(spec) as opened:
        yield opened


def sight(store: StateStore, key: str = "k1", *, now: float = T0, size: int = 1000) -> bool:
    return store.record_first_sight(key, URL, "windows", size, '"etag1"', None, now=now)


def take(store: StateStore, *, now: float = T0, owner: str = "p1", lease: float = 30.0) -> Job:
    job = store.take_job(owner, lease, now=now)
    assert job is not None
    return job


def state_of(store: StateStore, key: str = "k1") -> ObjectState:
    record = store.get(key)
    assert record is not None
    return record.state


# ------------------------------------------------------------------------------------ records


def a_record(**changes: object) -> ObjectRecord:
    data: dict[str, object] = {
        "key": "k",
        "url": URL,
        "class_name": "windows",
        "total_size": 10,
        "etag": None,
        "last_modified": "Tue, 09 Jan 2024 00:00:00 GMT",
        "state": "filling",
        "attempts": 2,
        "bytes_filled": 5,
        "digest_check": "ok",
        "first_seen": T0,
        "updated": T0 + 1,
        "last_error": "boom",
        "next_attempt_at": None,
    }
    data.update(changes)
    return ObjectRecord.from_dict(data)


def test_record_round_trips_through_json() -> None:
    record = a_record()
    assert ObjectRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.to_dict()["state"] == "filling"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"state": "eaten"}, "state"),
        ({"attempts": True}, "attempts"),
        ({"attempts": -1}, "attempts"),
        ({"total_size": "10"}, "total_size"),
        ({"digest_check": "maybe"}, "digest_check"),
        ({"first_seen": float("nan")}, "first_seen"),
        ({"url": None}, "url"),
    ],
)
def test_record_from_dict_names_the_bad_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        a_record(**changes)


def test_record_from_dict_rejects_missing_field() -> None:
    data = a_record().to_dict()
    del data["etag"]
    with pytest.raises(ValueError, match="etag: missing"):
        ObjectRecord.from_dict(data)


@pytest.mark.parametrize(
    ("state", "size", "expected"),
    [
        ("queued", 10, True),
        ("filling", 10, True),
        ("complete", 10, True),
        ("failed", 10, False),
        ("parked", 10, False),
        ("too_big", 10, False),
        ("queued", None, False),
    ],
)
def test_expandable_needs_known_size_and_live_state(
    state: str, size: int | None, expected: bool
) -> None:
    record = a_record(state=state, total_size=size)
    assert record.expandable is expected
    assert stored_expandable(encode_record(record)) is expected
    assert decode_record(encode_record(record)) == record


def test_job_round_trips_through_json() -> None:
    job = Job("k", URL, "windows", None, None, None, 1, T0, "p", "tok", T0 + 5)
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert job.leased_at(T0 + 4.9)
    assert not job.leased_at(T0 + 5)


# ------------------------------------------------------------------------------------- layout


def test_slot_keys_sort_by_due_time_then_sequence() -> None:
    keys = [slot_key(T0 + 10, 1), slot_key(T0, 3), slot_key(T0, 2), slot_key(5.0, 9)]
    assert sorted(keys) == [slot_key(5.0, 9), slot_key(T0, 2), slot_key(T0, 3), keys[0]]


def test_diskcache_peek_returns_smallest_slot(tmp_path: Path) -> None:
    # The queue relies on Cache.peek(prefix) returning the smallest key in the prefix range,
    # also for our "q-<ms>-<seq>" keys; pin that behaviour of the installed diskcache.
    cache = diskcache.Cache(str(tmp_path / "raw"))
    try:
        for key in (slot_key(T0 + 1, 1), slot_key(T0, 7), slot_key(0.0, 8)):
            cache.set(key, key)
        cache.set("rec:zzz", "x")
        assert cache.peek("q") == (slot_key(0.0, 8), slot_key(0.0, 8))
    finally:
        cache.close()


# ------------------------------------------------------------------------------- opening / errors


def test_open_creates_the_directory_and_stores_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    StateStore(path).close()
    assert path.is_dir()
    cache = diskcache.Cache(str(path))
    try:
        assert cache.get("meta:schema") == SCHEMA_VERSION
    finally:
        cache.close()
    with StateStore(path) as reopened:
        assert reopened.path == path


def test_state_survives_reopening(tmp_path: Path) -> None:
    with StateStore(tmp_path) as first:
        sight(first)
    with StateStore(tmp_path) as second:
        assert second.expandable("k1")
        assert second.queue_length() == 1


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    cache = diskcache.Cache(str(tmp_path))
    cache.set("meta:schema", 99)
    cache.close()
    with pytest.raises(StateError, match=rf"{tmp_path}.*schema version 99"):
        StateStore(tmp_path)


def test_foreign_diskcache_is_refused(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path))
    cache.set("something", 1)
    cache.close()
    with pytest.raises(StateError, match=rf"{tmp_path}.*not a patchcache state dir"):
        StateStore(tmp_path)


def test_corrupt_database_raises_state_error_with_path(tmp_path: Path) -> None:
    (tmp_path / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StateError, match=str(tmp_path)):
        StateStore(tmp_path)


def test_state_dir_that_is_a_file_raises_state_error(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(StateError, match=str(path)):
        StateStore(path)


def test_corrupt_record_raises_state_error_naming_path_and_key(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        sight(store)
        cache = diskcache.Cache(str(tmp_path))
        cache.set("rec:k1", "1{not json")
        cache.set("rec:k2", 42)
        cache.close()
        for key in ("k1", "k2"):
            with pytest.raises(StateError, match=rf"{tmp_path}.*{key}"):
                store.get(key)
        with pytest.raises(StateError, match="k2"):
            store.expandable("k2")


def test_database_deleted_underneath_raises_state_error(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        cache = diskcache.Cache(str(tmp_path))
        cache.close()
        con = sqlite3.connect(tmp_path / "cache.db")
        con.execute("DROP TABLE Cache")
        con.close()
        with pytest.raises(StateError, match=str(tmp_path)):
            store.expandable("k1")
        with pytest.raises(StateError, match=str(tmp_path)):
            sight(store)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.record_first_sight("", URL, "c", 1, None, None),
        lambda s: s.record_first_sight("k", URL, "c", -1, None, None),
        lambda s: s.take_job("p", 0),
        lambda s: s.enqueue_url("k", URL, "c", total_size=-5),
    ],
)
def test_bad_arguments_raise_value_error(store: StateStore, call: object) -> None:
    with pytest.raises(ValueError):
        call(store)  # type: ignore[operator]


# ------------------------------------------------------------------------- first sight / dedup


def test_first_sight_creates_queued_record_and_one_job(store: StateStore) -> None:
    assert sight(store)
    record = store.get("k1")
    assert record == ObjectRecord(
        key="k1",
        url=URL,
        class_name="windows",
        total_size=1000,
        etag='"etag1"',
        last_modified=None,
        state=ObjectState.QUEUED,
        attempts=0,
        bytes_filled=0,
        digest_check=None,
        first_seen=T0,
        updated=T0,
        last_error=None,
        next_attempt_at=T0,
    )
    assert store.expandable("k1")
    assert store.queue_length() == 1
    job = store.get_job("k1")
    assert job is not None
    assert (job.key, job.owner, job.lease_token, job.due_at) == ("k1", None, None, T0)


def test_second_sight_changes_nothing(store: StateStore) -> None:
    assert sight(store)
    before = store.get("k1")
    assert not store.record_first_sight("k1", "http://other/", "x", 5, None, None, now=T0 + 9)
    assert store.get("k1") == before
    assert store.queue_length() == 1


@pytest.mark.parametrize("state", ["filling", "complete", "too_big", "parked"])
def test_sight_of_known_object_in_any_state_is_ignored(store: StateStore, state: str) -> None:
    if state == "too_big":
        store.record_too_big("k1", URL, "windows", 10**12, None, None, now=T0)
    else:
        sight(store)
        job = take(store)
        if state == "complete":
            store.complete(job, now=T0 + 1)
        elif state == "parked":
            store.fail(job, "boom", retry_at=T0 + 5, max_attempts=1, now=T0 + 1)
    assert state_of(store) == state
    assert not sight(store, now=T0 + 100)
    assert state_of(store) == state


def test_threads_sharing_one_store_queue_one_job(store: StateStore) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(6, timeout=10)

    def racer() -> None:
        barrier.wait()
        results.append(sight(store, "shared"))

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == [False] * 5 + [True]
    assert store.queue_length() == 1


def test_unknown_key_is_not_expandable(store: StateStore) -> None:
    assert store.get("nope") is None
    assert not store.expandable("nope")
    assert store.get_job("nope") is None


def test_record_too_big_is_never_queued(store: StateStore) -> None:
    assert store.record_too_big("big", URL, "windows", 10**12, None, None, now=T0)
    assert not store.record_too_big("big", URL, "windows", 10**12, None, None, now=T0)
    assert state_of(store, "big") is ObjectState.TOO_BIG
    assert not store.expandable("big")
    assert store.queue_length() == 0
    assert store.take_job("p", 30, now=T0 + 1000) is None


@pytest.mark.parametrize("step", ["queued", "filling", "complete", "failed"])
def test_unstorable_answer_parks_an_expandable_object(store: StateStore, step: str) -> None:
    sight(store)
    if step != "queued":
        job = take(store, now=T0 + 1)
        if step == "complete":
            store.complete(job, now=T0 + 2)
        elif step == "failed":
            store.fail(job, "origin 503", retry_at=T0 + 60, max_attempts=5, now=T0 + 2)
    assert store.record_unstorable("k1", "Cache-Control: no-store", now=T0 + 3)
    record = store.get("k1")
    assert record is not None and record.state is ObjectState.PARKED
    assert record.last_error is not None and "no-store" in record.last_error
    assert not store.expandable("k1")
    assert store.get_job("k1") is None and store.queue_length() == 0
    if step == "filling":
        with pytest.raises(LeaseLostError):
            store.complete(job, now=T0 + 4)
    # Once parked (or for a record in a final state, or none), nothing changes.
    assert not store.record_unstorable("k1", "again", now=T0 + 5)
    assert not store.record_unstorable("unknown", "no-store", now=T0 + 5)
    assert store.record_too_big("big", URL, "windows", 10**12, None, None, now=T0)
    assert not store.record_unstorable("big", "no-store", now=T0 + 5)
    assert state_of(store, "big") is ObjectState.TOO_BIG
    # An admin's requeue makes it expandable again.
    assert store.requeue("k1", now=T0 + 6)
    assert store.expandable("k1")


# ---------------------------------------------------------------------------------- take_job


def test_take_job_leases_and_marks_filling(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0 + 1, owner="prefetch-1", lease=30)
    assert (job.key, job.url, job.total_size, job.attempt) == ("k1", URL, 1000, 1)
    assert (job.owner, job.lease_expires, job.due_at) == ("prefetch-1", T0 + 31, T0 + 31)
    assert job.lease_token
    record = store.get("k1")
    assert record is not None
    assert (record.state, record.attempts, record.bytes_filled) == (ObjectState.FILLING, 1, 0)
    assert record.next_attempt_at is None
    assert store.expandable("k1")
    assert store.queue_length() == 1


def test_empty_queue_gives_none(store: StateStore) -> None:
    assert store.take_job("p", 30, now=T0) is None


def test_single_flight_while_lease_lives(store: StateStore) -> None:
    sight(store)
    take(store, now=T0)
    assert store.take_job("p2", 30, now=T0 + 29.999) is None


def test_jobs_come_out_oldest_first(store: StateStore) -> None:
    for index, key in enumerate(["c", "a", "b"]):
        sight(store, key, now=T0 + index)
    taken = [take(store, now=T0 + 10).key for _ in range(3)]
    assert taken == ["c", "a", "b"]
    assert store.take_job("p", 30, now=T0 + 10) is None


def test_job_not_due_yet_is_not_taken(store: StateStore) -> None:
    assert store.enqueue_url("k1", URL, "windows", due_at=T0 + 60, now=T0)
    assert store.take_job("p", 30, now=T0 + 59) is None
    assert take(store, now=T0 + 60).key == "k1"


def test_expired_lease_makes_job_takeable_again(store: StateStore) -> None:
    sight(store)
    first = take(store, now=T0, owner="dead", lease=30)
    second = take(store, now=T0 + 30, owner="alive", lease=30)
    assert second.key == "k1"
    assert second.lease_token != first.lease_token
    assert second.attempt == 2
    assert store.queue_length() == 1
    for call in (
        lambda: store.renew(first, lease_seconds=30, now=T0 + 31),
        lambda: store.complete(first, now=T0 + 31),
        lambda: store.fail(first, "x", retry_at=T0 + 40, max_attempts=5, now=T0 + 31),
        lambda: store.mark_too_big(first, 10**12, now=T0 + 31),
    ):
        with pytest.raises(LeaseLostError, match="now leased by 'alive'"):
            call()
    assert state_of(store) is ObjectState.FILLING
    assert store.complete(second, now=T0 + 32).state is ObjectState.COMPLETE


def test_expired_lease_not_yet_retaken_can_still_finish(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0, lease=30)
    renewed = store.renew(job, lease_seconds=30, bytes_filled=10, now=T0 + 45)
    assert renewed.lease_expires == T0 + 75
    assert store.take_job("p2", 30, now=T0 + 74) is None
    assert store.complete(renewed, now=T0 + 76).state is ObjectState.COMPLETE


def test_take_job_parks_when_holders_keep_dying(store: StateStore) -> None:
    sight(store)
    for attempt in range(3):
        take(store, now=T0 + 100 * attempt, lease=30)
    assert store.take_job("p", 30, max_attempts=3, now=T0 + 1000) is None
    record = store.get("k1")
    assert record is not None
    assert record.state is ObjectState.PARKED
    assert record.last_error is not None and "3 attempts" in record.last_error
    assert store.queue_length() == 0


def test_take_job_skips_exhausted_job_and_hands_out_the_next(store: StateStore) -> None:
    sight(store, "old", now=T0)
    take(store, now=T0, lease=1)
    sight(store, "new", now=T0 + 5)
    job = store.take_job("p", 30, max_attempts=1, now=T0 + 10)
    assert job is not None and job.key == "new"
    assert state_of(store, "old") is ObjectState.PARKED


# ------------------------------------------------------------------------------------- renew


def test_renew_extends_lease_and_records_progress(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0, lease=30)
    renewed = store.renew(job, lease_seconds=30, bytes_filled=400, now=T0 + 20)
    assert renewed.lease_expires == T0 + 50
    assert renewed.lease_token == job.lease_token
    assert store.take_job("p2", 30, now=T0 + 40) is None
    record = store.get("k1")
    assert record is not None
    assert (record.bytes_filled, record.updated) == (400, T0 + 20)
    # The original Job (same token) is still valid after renewing.
    store.renew(job, lease_seconds=30, bytes_filled=800, now=T0 + 30)


def test_renew_learns_size_of_prepositioned_object(store: StateStore) -> None:
    assert store.enqueue_url("pre", URL, "windows", now=T0)
    assert not store.expandable("pre")
    job = take(store, now=T0)
    assert job.total_size is None
    renewed = store.renew(job, lease_seconds=30, total_size=5000, bytes_filled=1, now=T0 + 1)
    assert renewed.total_size == 5000
    assert store.expandable("pre")


# ----------------------------------------------------------------------- complete / too big


def test_complete_removes_job_and_keeps_record(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0)
    store.renew(job, lease_seconds=30, bytes_filled=10, now=T0 + 1)
    record = store.complete(job, digest_check="ok", now=T0 + 2)
    assert record == store.get("k1")
    assert record.state is ObjectState.COMPLETE
    assert (record.bytes_filled, record.digest_check, record.updated) == (1000, "ok", T0 + 2)
    assert store.expandable("k1")
    assert store.queue_length() == 0
    assert store.get_job("k1") is None
    assert store.take_job("p", 30, now=T0 + 10**6) is None
    with pytest.raises(LeaseLostError, match="no longer queued"):
        store.complete(job, now=T0 + 3)


def test_complete_records_digest_mismatch_and_learnt_size(store: StateStore) -> None:
    store.enqueue_url("pre", URL, "windows", now=T0)
    job = take(store, now=T0)
    record = store.complete(job, digest_check="mismatch", total_size=77, now=T0 + 1)
    assert (record.total_size, record.bytes_filled, record.digest_check) == (77, 77, "mismatch")


def test_complete_rejects_unknown_digest_check(store: StateStore) -> None:
    sight(store)
    job = take(store)
    with pytest.raises(ValueError):
        store.complete(job, digest_check="meh")  # type: ignore[arg-type]


def test_mark_too_big(store: StateStore) -> None:
    store.enqueue_url("pre", URL, "windows", now=T0)
    job = take(store, now=T0)
    record = store.mark_too_big(job, 10**12, now=T0 + 1)
    assert (record.state, record.total_size) == (ObjectState.TOO_BIG, 10**12)
    assert not store.expandable("pre")
    assert store.queue_length() == 0


# --------------------------------------------------------------------- fail -> retry -> park


def test_fail_retry_then_park(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0)
    assert store.fail(job, "connection reset", retry_at=T0 + 60, max_attempts=2, now=T0 + 1)
    record = store.get("k1")
    assert record is not None
    assert record.state is ObjectState.FAILED
    assert (record.last_error, record.next_attempt_at) == ("connection reset", T0 + 60)
    assert not store.expandable("k1")
    assert store.queue_length() == 1
    assert store.take_job("p", 30, now=T0 + 59) is None
    with pytest.raises(LeaseLostError, match="requeued"):
        store.renew(job, lease_seconds=30, now=T0 + 2)

    retry = take(store, now=T0 + 60)
    assert retry.attempt == 2
    assert store.expandable("k1")
    assert not store.fail(retry, "HTTP 503", retry_at=T0 + 200, max_attempts=2, now=T0 + 61)
    record = store.get("k1")
    assert record is not None
    assert (record.state, record.attempts, record.last_error) == (
        ObjectState.PARKED,
        2,
        "HTTP 503",
    )
    assert record.next_attempt_at is None
    assert store.queue_length() == 0
    assert store.take_job("p", 30, now=T0 + 10**6) is None


def test_complete_after_retry_clears_the_error(store: StateStore) -> None:
    sight(store)
    store.fail(take(store, now=T0), "boom", retry_at=T0 + 1, max_attempts=3, now=T0)
    record = store.complete(take(store, now=T0 + 1), now=T0 + 2)
    assert (record.state, record.last_error, record.attempts) == (ObjectState.COMPLETE, None, 2)


# ---------------------------------------------------------------------------- release / defer


def test_release_gives_the_job_back_without_counting_the_attempt(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0, lease=30)
    store.renew(job, lease_seconds=30, bytes_filled=10, now=T0 + 1)
    store.release(job, now=T0 + 2)
    record = store.get("k1")
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at) == (
        ObjectState.QUEUED,
        0,
        T0 + 2,
    )
    assert store.expandable("k1")
    with pytest.raises(LeaseLostError, match="requeued"):
        store.complete(job, now=T0 + 3)
    assert take(store, now=T0 + 2).attempt == 1


def test_release_with_due_time(store: StateStore) -> None:
    sight(store)
    store.release(take(store, now=T0), due_at=T0 + 50, now=T0 + 1)
    assert store.take_job("p", 30, now=T0 + 49) is None
    assert take(store, now=T0 + 50).key == "k1"


def test_defer_moves_due_time_and_keeps_state(store: StateStore) -> None:
    sight(store)
    store.fail(take(store, now=T0), "boom", retry_at=T0 + 10, max_attempts=5, now=T0)
    assert store.defer("k1", T0 + 3600, now=T0 + 20)
    record = store.get("k1")
    assert record is not None
    assert (record.state, record.attempts, record.last_error, record.next_attempt_at) == (
        ObjectState.FAILED,
        1,
        "boom",
        T0 + 3600,
    )
    assert store.take_job("p", 30, now=T0 + 3599) is None
    assert take(store, now=T0 + 3600).attempt == 2


def test_defer_refuses_live_lease_and_missing_job(store: StateStore) -> None:
    assert not store.defer("nope", T0 + 10, now=T0)
    sight(store)
    job = take(store, now=T0, lease=30)
    assert not store.defer("k1", T0 + 100, now=T0 + 29)
    store.complete(job, now=T0 + 29)
    assert not store.defer("k1", T0 + 100, now=T0 + 30)


def test_defer_of_abandoned_lease_requeues(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0, lease=30)
    assert store.defer("k1", T0 + 100, now=T0 + 31)
    assert state_of(store) is ObjectState.QUEUED
    with pytest.raises(LeaseLostError):
        store.renew(job, lease_seconds=30, now=T0 + 32)
    assert store.take_job("p", 30, now=T0 + 99) is None


# ------------------------------------------------------------------------- requeue / forget


def test_requeue_unknown_key(store: StateStore) -> None:
    assert not store.requeue("nope", now=T0)


def test_requeue_parked_object(store: StateStore) -> None:
    sight(store)
    store.fail(take(store, now=T0), "boom", retry_at=T0, max_attempts=1, now=T0)
    assert state_of(store) is ObjectState.PARKED
    assert store.requeue("k1", due_at=T0 + 5, now=T0 + 1)
    record = store.get("k1")
    assert record is not None
    assert (record.state, record.attempts, record.next_attempt_at) == (
        ObjectState.QUEUED,
        0,
        T0 + 5,
    )
    assert record.last_error == "boom"
    assert store.take_job("p", 30, now=T0 + 4) is None
    assert take(store, now=T0 + 5).attempt == 1


def test_requeue_complete_object_fills_again(store: StateStore) -> None:
    sight(store)
    store.complete(take(store, now=T0), digest_check="ok", now=T0)
    assert store.requeue("k1", reset_attempts=False, now=T0 + 1)
    record = store.get("k1")
    assert record is not None
    assert (record.state, record.attempts, record.digest_check) == (ObjectState.QUEUED, 1, None)
    assert store.queue_length() == 1
    assert take(store, now=T0 + 1).attempt == 2


def test_requeue_leaves_a_live_lease_alone(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0, lease=30)
    assert not store.requeue("k1", now=T0 + 10)
    assert state_of(store) is ObjectState.FILLING
    store.renew(job, lease_seconds=30, now=T0 + 11)


def test_requeue_cancels_an_expired_lease(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0, lease=30)
    assert store.requeue("k1", now=T0 + 31)
    assert state_of(store) is ObjectState.QUEUED
    assert store.queue_length() == 1
    with pytest.raises(LeaseLostError):
        store.complete(job, now=T0 + 32)
    assert take(store, now=T0 + 32).key == "k1"


def test_requeued_queued_job_moves_its_due_time(store: StateStore) -> None:
    store.enqueue_url("k1", URL, "windows", due_at=T0 + 1000, now=T0)
    assert store.requeue("k1", now=T0 + 1)
    assert store.queue_length() == 1
    assert take(store, now=T0 + 1).key == "k1"


def test_forget_removes_record_and_job(store: StateStore) -> None:
    sight(store)
    job = take(store, now=T0)
    assert store.forget("k1")
    assert not store.forget("k1")
    assert store.get("k1") is None
    assert store.queue_length() == 0
    with pytest.raises(LeaseLostError):
        store.renew(job, lease_seconds=30, now=T0 + 1)
    assert sight(store, now=T0 + 2)


# ----------------------------------------------------------------------------------- listing


def test_listing_for_status(store: StateStore) -> None:
    sight(store, "a", now=T0 + 2)
    sight(store, "b", now=T0 + 1)
    sight(store, "c", now=T0 + 3)
    store.record_too_big("d", URL, "windows", 10**12, None, None, now=T0)
    job = take(store, now=T0 + 10)  # takes "b", the oldest queued
    assert job.key == "b"
    store.complete(job, now=T0 + 11)
    leased = take(store, now=T0 + 12, lease=100)  # "a"
    assert [record.key for record in store.records()] == ["d", "b", "a", "c"]
    assert [record.key for record in store.records([ObjectState.QUEUED])] == ["c"]
    assert [r.key for r in store.records({ObjectState.FILLING, ObjectState.COMPLETE})] == [
        "b",
        "a",
    ]
    assert store.queue_length() == 2
    counts = store.counts_by_state()
    assert counts == {
        ObjectState.QUEUED: 1,
        ObjectState.FILLING: 1,
        ObjectState.COMPLETE: 1,
        ObjectState.TOO_BIG: 1,
        ObjectState.FAILED: 0,
        ObjectState.PARKED: 0,
    }
    jobs = store.jobs()
    assert [j.key for j in jobs] == ["c", "a"]  # "a" sorts by its lease expiry
    assert jobs[1].lease_token == leased.lease_token
    json.dumps([r.to_dict() for r in store.records()] + [j.to_dict() for j in jobs])


# ----------------------------------------------------------- model-based: invariants hold


class StoreMachine(RuleBasedStateMachine):
    """Random sequences of calls; after each, the queue and the records agree."""

    keys = st.sampled_from(["a", "b", "c"])

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = self.open_store()
        self.now = T0
        self.held: list[Job] = []

    def open_store(self) -> StateStore:
        return StateStore(Path(self.tmp.name))

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    @rule(key=keys)
    def first_sight(self, key: str) -> None:
        existed = self.store.get(key) is not None
        assert sight(self.store, key, now=self.now) is not existed

    @rule(key=keys)
    def too_big(self, key: str) -> None:
        self.store.record_too_big(key, URL, "windows", 10**12, None, None, now=self.now)

    @rule(key=keys)
    def preposition(self, key: str) -> None:
        # Queued without a size: a later first sight or too_big teaches it the size.
        self.store.enqueue_url(key, URL, "windows", None, now=self.now, due_at=self.now + 50)

    @rule(seconds=st.sampled_from([0.0, 1.0, 29.0, 31.0, 100.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(max_attempts=st.none() | st.integers(1, 3))
    def take(self, max_attempts: int | None) -> None:
        job = self.store.take_job("p", 30, max_attempts=max_attempts, now=self.now)
        if job is not None:
            assert all(held.key != job.key or not held.leased_at(self.now) for held in self.held)
            self.held = [held for held in self.held if held.key != job.key] + [job]

    @rule(
        data=st.data(),
        outcome=st.sampled_from(["renew", "release", "complete", "fail", "too_big"]),
    )
    def finish(self, data: st.DataObject, outcome: str) -> None:
        if not self.held:
            return
        job = data.draw(st.sampled_from(self.held))
        try:
            if outcome == "renew":
                renewed = self.store.renew(job, lease_seconds=30, bytes_filled=1, now=self.now)
                self.held[self.held.index(job)] = renewed
                return
            if outcome == "release":
                self.store.release(job, now=self.now)
            elif outcome == "complete":
                self.store.complete(job, now=self.now)
            elif outcome == "fail":
                self.store.fail(job, "e", retry_at=self.now + 10, max_attempts=2, now=self.now)
            else:
                self.store.mark_too_big(job, 10**12, now=self.now)
        except LeaseLostError:
            pass
        self.held.remove(job)

    # requeue, defer and forget cancel a lease; the model stops counting on it as live.

    @rule(key=keys)
    def requeue(self, key: str) -> None:
        if self.store.requeue(key, now=self.now):
            self.drop_held(key)

    @rule(key=keys, delay=st.sampled_from([-5.0, 0.0, 50.0]))
    def defer(self, key: str, delay: float) -> None:
        if self.store.defer(key, self.now + delay, now=self.now):
            self.drop_held(key)

    @rule(key=keys)
    def forget(self, key: str) -> None:
        self.store.forget(key)
        self.drop_held(key)

    def drop_held(self, key: str) -> None:
        self.held = [held for held in self.held if held.key != key]

    @invariant()
    def queue_matches_records(self) -> None:
        with_job = {ObjectState.QUEUED, ObjectState.FILLING, ObjectState.FAILED}
        records = self.store.records()
        jobs = self.store.jobs()
        assert sorted(j.key for j in jobs) == sorted(r.key for r in records if r.state in with_job)
        assert self.store.queue_length() == len(jobs)
        assert [job.due_at for job in jobs] == sorted(job.due_at for job in jobs)
        for job in jobs:
            record = self.store.get(job.key)
            assert record is not None
            if record.state is ObjectState.FILLING:
                assert job.lease_token is not None
                assert record.next_attempt_at is None
            else:
                assert job.lease_token is None
                assert record.next_attempt_at == job.due_at
        for record in records:
            if record.state not in with_job:
                assert record.next_attempt_at is None


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


class RedisStoreMachine(StoreMachine):
    """The same random sequences on the Redis backend, each on an emptied database."""

    url = ""

    def open_store(self) -> StateStore:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()
        finally:
            client.close()
        return open_state(self.url)


class TestRedisStoreMachine(RedisStoreMachine.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=40, stateful_step_count=25, deadline=None)

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: RedisServer) -> None:
        RedisStoreMachine.url = redis_server.url(2)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as Squid's helpers switch to proxy")
def test_root_leaves_a_proxy_owned_state_writable_for_proxy() -> None:
    """An admin's `patchcache status` as root before Squid's helpers ever ran must not leave a
    database the helpers (as proxy) can only read."""
    proxy = pwd.getpwnam(SQUID_USER)
    workdir = new_workdir("state-owner-")  # a directory proxy can reach (pytest's is private)
    try:
        _check_root_open_keeps_proxy_writing(workdir / "state", proxy)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_root_open_keeps_proxy_writing(state_dir: Path, proxy: pwd.struct_passwd) -> None:
    state_dir.mkdir()
    os.chown(state_dir, proxy.pw_uid, proxy.pw_gid)
    with StateStore(state_dir) as store:  # as root: creates cache.db and its WAL files
        assert store.queue_length() == 0
    owners = {child.name: child.stat().st_uid for child in state_dir.iterdir()}
    assert "cache.db" in owners and set(owners.values()) == {proxy.pw_uid}, owners
    script = (
        "import sys\n"
        "from patchcache.state import StateStore\n"
        "with StateStore(sys.argv[1]) as s:\n"
        "    assert s.record_first_sight('k', 'http://x/y', 'c', 10, None, None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(state_dir)],
        preexec_fn=as_squid_user(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
