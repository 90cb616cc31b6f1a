"""`patchcache status` and `patchcache channel add` (the prefetcher's commands) on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcache.prefetch.cli import channel_group, prefetch_cmd, status_cmd
from patchcache.state import ObjectState, StateStore

SHA1 = "c" * 40
WU = f"http://download.windowsupdate.com/d/msdownload/update/software/kb_{SHA1}.cab"
WU_KEY = f"http://windows-update.patchcache.squid.internal/sha1/{SHA1}"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def populate(state_dir: Path) -> None:
    """One object in each interesting state, at fixed times."""
    now = 1_700_000_000.0
    with StateStore(state_dir) as store:
        store.record_first_sight("k-queued", "http://a/q", "c", 1000, None, None, now=now)
        store.record_first_sight("k-filling", "http://a/f", "c", 4000, None, None, now=now + 1)
        store.record_first_sight("k-failed", "http://a/x", "c", 10, None, None, now=now + 2)
        store.record_first_sight("k-parked", "http://a/p", "c", 10, None, None, now=now + 3)
        store.record_too_big("k-big", "http://a/b", "c", 10**12, None, None, now=now + 4)
        # take in due order: queued, filling, failed, parked
        taken = [store.take_job("w", 60, now=now + 10) for _ in range(4)]
        assert [j.key for j in taken if j] == ["k-queued", "k-filling", "k-failed", "k-parked"]
        queued, filling, failed, parked = taken
        assert queued and filling and failed and parked
        store.requeue("k-queued", now=now + 100)  # back to queued (lease expired by then)
        store.renew(filling, lease_seconds=60, bytes_filled=1000, now=now + 11)
        store.fail(failed, "HTTP 503 Boom", retry_at=now + 500, max_attempts=3, now=now + 12)
        store.fail(parked, "digest mismatch: ...", retry_at=now, max_attempts=1, now=now + 13)


def test_status_json(state_dir: Path) -> None:
    populate(state_dir)
    result = CliRunner().invoke(status_cmd, ["--state-dir", str(state_dir), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["counts"] == {
        "queued": 1,
        "filling": 1,
        "complete": 0,
        "too_big": 1,
        "failed": 1,
        "parked": 1,
    }
    assert [j["key"] for j in doc["queue"]] == ["k-filling", "k-queued", "k-failed"]
    (filling,) = doc["filling"]
    assert filling["percent"] == 25.0
    (failed,) = doc["failed"]
    assert failed["last_error"] == "HTTP 503 Boom"
    (parked,) = doc["parked"]
    assert parked["last_error"].startswith("digest mismatch")
    assert doc["too_big"][0]["key"] == "k-big"


def test_status_text(state_dir: Path) -> None:
    populate(state_dir)
    result = CliRunner().invoke(status_cmd, ["--state-dir", str(state_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "queued 1, filling 1, complete 0, too_big 1, failed 1, parked 1" in out
    assert "queue: 3 job(s)" in out
    assert "k-filling  25.0% (1000 B of 3.9 KiB)" in out
    assert "HTTP 503 Boom" in out
    assert "digest mismatch" in out
    assert "too big for their class" in out


def test_status_of_a_missing_dir_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = CliRunner().invoke(status_cmd, ["--state-dir", str(missing)])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not missing.exists()


def test_channel_add_queues_allowed_urls(state_dir: Path) -> None:
    result = CliRunner().invoke(channel_group, ["add", "--state-dir", str(state_dir), WU])
    assert result.exit_code == 0, result.output
    assert f"queued {WU_KEY}" in result.output
    with StateStore(state_dir) as store:
        record = store.get(WU_KEY)
        assert record is not None
        assert record.state is ObjectState.QUEUED
        assert record.total_size is None  # learnt by the prefetcher
        assert store.queue_length() == 1
    again = CliRunner().invoke(channel_group, ["add", "--state-dir", str(state_dir), WU])
    assert "already known" in again.output


def test_channel_add_refuses_everything_if_one_url_is_not_allowed(state_dir: Path) -> None:
    result = CliRunner().invoke(
        channel_group,
        ["add", "--state-dir", str(state_dir), WU, "http://evil.example.net/a.exe"],
    )
    assert result.exit_code == 2
    assert "refused" in result.output
    assert "nothing queued" in result.output
    assert not state_dir.exists()


def test_channel_add_same_object_twice_queues_once(state_dir: Path) -> None:
    mirror = WU.replace("download.windowsupdate.com", "au.download.windowsupdate.com")
    result = CliRunner().invoke(channel_group, ["add", "--state-dir", str(state_dir), WU, mirror])
    assert result.exit_code == 0, result.output
    assert "same object as an earlier URL" in result.output


def test_channel_add_refill(state_dir: Path) -> None:
    with StateStore(state_dir) as store:
        store.record_too_big(WU_KEY, WU, "windows-update", 10, None, None)
    result = CliRunner().invoke(
        channel_group, ["add", "--state-dir", str(state_dir), "--refill", WU]
    )
    assert result.exit_code == 0, result.output
    assert "requeued" in result.output and "was too_big" in result.output


def test_prefetch_refuses_a_bad_proxy_url(state_dir: Path) -> None:
    result = CliRunner().invoke(
        prefetch_cmd, ["--proxy", "ftp://x", "--state-dir", str(state_dir), "--once"]
    )
    assert result.exit_code == 2
    assert "--proxy" in result.output


def test_prefetch_with_bad_rules_exits_2(state_dir: Path, tmp_path: Path) -> None:
    rules = tmp_path / "bad.toml"
    rules.write_text("[classes.x]\nhosts = []\n")
    result = CliRunner().invoke(
        prefetch_cmd,
        ["--proxy", "http://127.0.0.1:9", "--state-dir", str(state_dir), "--rules", str(rules)],
    )
    assert result.exit_code == 2
    assert "error:" in result.output


def test_status_shows_fills_in_progress_and_a_per_class_summary(state_dir: Path) -> None:
    import time

    from patchcache.prefetch.progress import ProgressBoard

    populate(state_dir)
    now = time.time()
    live = ProgressBoard(state_dir, "host:1", clock=lambda: now)
    fill = live.begin("k-filling", "c", "http://a/f?token=s3cret", 4000)
    fill.started = now - 10
    fill.received = 1000
    live.write()
    stale = ProgressBoard(state_dir, "host:2", clock=lambda: now - 600)  # its prefetcher died
    stale.begin("k-ghost", "c", "http://a/g", 10)
    stale.write()

    result = CliRunner().invoke(status_cmd, ["--state-dir", str(state_dir), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    (running,) = doc["fills_in_progress"]
    assert running["key"] == "k-filling" and running["owner"] == "host:1"
    assert running["percent"] == 25.0
    assert running["rate_bytes_per_second"] == 100.0
    assert running["eta_seconds"] == 30.0
    assert running["url"] == "http://a/f"  # no query token, not even in the status
    assert doc["classes"]["c"]["objects"] == 5
    assert doc["classes"]["c"]["too_big"] == 1
    assert doc["classes"]["c"]["queued_jobs"] == 3
    assert doc["classes"]["c"]["expandable"] == 2

    text = CliRunner().invoke(status_cmd, ["--state-dir", str(state_dir)]).output
    assert "fills in progress:" in text
    assert "k-filling  [c]  25.0% (1000 B of 3.9 KiB), 100 B/s, ETA 30s, by host:1" in text
    assert "k-ghost" not in text
    assert "per class:" in text
    assert "s3cret" not in text
