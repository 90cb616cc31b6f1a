"""QueuedStateWriter: state writes of the ICAP service leave the caller at once and are made in
order by one thread; a stuck store only delays (and past a bound drops) the writes. A pure stand-in
for the store here; the real store, locked by another process, is in
tests/integration/test_icap_limits.py."""

from __future__ import annotations

import threading

import pytest

from patchcache.icap_service.state_writer import QueuedStateWriter

WAIT = 10.0


class GatedState:
    """Records writes (and the thread making them); each waits until ``gate`` is open."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls: list[tuple[str, str, float | None]] = []
        self.threads: set[int] = set()
        self.fail_on = fail_on

    def _write(self, kind: str, key: str, due_at: float | None = None) -> bool:
        self.started.set()
        assert self.gate.wait(WAIT), "test never opened the gate"
        self.threads.add(threading.get_ident())
        if key == self.fail_on:
            raise OSError("disk on fire")
        self.calls.append((kind, key, due_at))
        return True

    def record_first_sight(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
        *,
        due_at: float | None = None,
    ) -> bool:
        return self._write("first", key, due_at)

    def record_too_big(
        self,
        key: str,
        url: str,
        class_name: str,
        total_size: int,
        etag: str | None,
        last_modified: str | None,
    ) -> bool:
        return self._write("big", key)


def first_sight(writer: QueuedStateWriter, key: str, due_at: float | None = None) -> bool:
    return writer.record_first_sight(key, "http://x/" + key, "c", 10, None, None, due_at=due_at)


def test_writes_return_at_once_and_land_in_order_on_another_thread() -> None:
    state = GatedState()
    writer = QueuedStateWriter(state)
    # The gate is shut: a write made by the caller would wait here (WAIT, then fail).
    assert first_sight(writer, "k1", due_at=5.0)
    assert writer.record_too_big("k2", "http://x/k2", "c", 10**12, '"e"', None)
    assert first_sight(writer, "k3")
    assert state.calls == []
    state.gate.set()
    assert writer.flush(WAIT)
    assert state.calls == [("first", "k1", 5.0), ("big", "k2", None), ("first", "k3", None)]
    assert threading.get_ident() not in state.threads and len(state.threads) == 1
    assert writer.stats.written == 3


def test_a_key_already_waiting_is_not_queued_twice() -> None:
    state = GatedState()
    writer = QueuedStateWriter(state)
    assert first_sight(writer, "busy")
    assert state.started.wait(WAIT)  # being written (stuck at the gate)
    for _ in range(3):
        assert first_sight(writer, "busy")
        assert first_sight(writer, "other")
    state.gate.set()
    assert writer.flush(WAIT)
    assert [key for _, key, _ in state.calls] == ["busy", "other"]


def test_a_stuck_store_drops_writes_past_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    state = GatedState()
    writer = QueuedStateWriter(state, max_pending=2)
    assert first_sight(writer, "k0")
    assert state.started.wait(WAIT)  # k0 is taken by the thread, k1 and k2 fill the queue
    assert first_sight(writer, "k1") and first_sight(writer, "k2")
    assert not first_sight(writer, "k3")
    assert not first_sight(writer, "k4")
    assert writer.stats.dropped == 2
    assert "state store too slow" in caplog.text
    assert not writer.flush(0.05)  # still stuck
    state.gate.set()
    assert writer.flush(WAIT)
    assert [key for _, key, _ in state.calls] == ["k0", "k1", "k2"]
    assert first_sight(writer, "k3")  # room again
    assert writer.flush(WAIT)


def test_a_failed_write_is_logged_and_the_next_ones_still_land(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = GatedState(fail_on="bad")
    state.gate.set()
    writer = QueuedStateWriter(state)
    assert first_sight(writer, "bad") and first_sight(writer, "good")
    assert writer.flush(WAIT)
    assert [key for _, key, _ in state.calls] == ["good"]
    assert writer.stats.failed == 1 and writer.stats.written == 1
    assert "state update for bad failed: disk on fire" in caplog.text


def test_flush_before_any_write_and_a_bad_bound() -> None:
    assert QueuedStateWriter(GatedState()).flush(0.0)
    with pytest.raises(ValueError, match="max_pending"):
        QueuedStateWriter(GatedState(), max_pending=0)
