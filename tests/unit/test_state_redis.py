"""What only the Redis state has: its URL, its password file, its lock, its outages, its CLI.

The shared semantics run in tests/unit/test_state.py over both backends; these tests use a real
redis-server the fixture starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from support.redis_server import RedisServer

from patchcache.cli import main
from patchcache.errors import ConfigError, StateError
from patchcache.state import SCHEMA_VERSION, ObjectState
from patchcache.state.open import open_state
from patchcache.state.redis_kv import RedisKV, RedisStorageError
from patchcache.state.redis_store import RedisStateStore
from patchcache.state.redis_url import parse_redis_url

URL = "http://download.windowsupdate.com/d/msdownload/update/software/secu/2024/01/kb1.cab"
T0 = 1_700_000_000.0


def sight(store: object, key: str = "k1") -> bool:
    assert isinstance(store, RedisStateStore)
    return store.record_first_sight(key, URL, "windows", 1000, None, None, now=T0)


# ------------------------------------------------------------------------------------ the URL


def test_url_parts() -> None:
    target = parse_redis_url("rediss://ops@cache.example:6380/3?namespace=site1:")
    assert (target.host, target.port, target.db, target.tls) == ("cache.example", 6380, 3, True)
    assert (target.username, target.password, target.namespace) == ("ops", None, "site1:")
    plain = parse_redis_url("redis://10.0.0.5")
    assert (plain.port, plain.db, plain.tls, plain.namespace) == (6379, 0, False, "patchcache:")


def test_password_in_the_url_is_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError, match="password in the URL is refused") as caught:
        parse_redis_url("redis://:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/x", "must be numbers"),
        ("redis://127.0.0.1:6379/0?pasword_file=/p", "unknown parameter 'pasword_file'"),
        ("redis:///0", "expected redis://host"),
    ],
)
def test_malformed_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_redis_url(url)


def test_password_file_is_read_from_the_url_or_the_option(tmp_path: Path) -> None:
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    assert parse_redis_url(f"redis://h/0?password_file={secret}").password == "s3cret"
    assert parse_redis_url("redis://h/0", password_file=secret).password == "s3cret"
    with pytest.raises(ConfigError, match="state password file") as caught:
        parse_redis_url("redis://h/0", password_file=tmp_path / "missing")
    assert caught.value.file == str(tmp_path / "missing")


def test_password_protected_server(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="s3cret")
    server.start()
    try:
        with pytest.raises(StateError, match="redis://"):
            open_state(server.url())
        secret = tmp_path / "redis.pass"
        secret.write_text("s3cret\n")
        with open_state(server.url(), password_file=secret) as store:
            assert sight(store)
            assert store.expandable("k1")
    finally:
        server.stop()


# ----------------------------------------------------------------------- opening and outages


def test_unreachable_redis_is_a_state_error_naming_the_url(redis_server: RedisServer) -> None:
    dead = RedisServer(redis_server.workdir / "never-started")
    with pytest.raises(StateError, match=rf"redis://127.0.0.1:{dead.port}/0"):
        open_state(dead.url(), timeout=2.0)


def test_other_schema_version_and_foreign_keys_are_refused(redis_state_url: str) -> None:
    client = redis.Redis.from_url(redis_state_url)
    try:
        client.set("patchcache:v:x", "s1")
        with pytest.raises(StateError, match="not a patchcache state"):
            open_state(redis_state_url)
        client.flushdb()
        client.set("patchcache:v:meta:schema", f"i{SCHEMA_VERSION + 1}")
        with pytest.raises(StateError, match="schema version"):
            open_state(redis_state_url)
    finally:
        client.close()


def test_namespaces_keep_two_installations_apart(redis_state_url: str) -> None:
    with open_state(redis_state_url) as first, open_state(redis_state_url + "?namespace=b:") as b:
        assert sight(first)
        assert b.get("k1") is None
        assert sight(b)


def test_state_survives_a_redis_restart_with_the_same_store(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        with open_state(server.url()) as store:
            assert sight(store)
            job = store.take_job("p1", 30, now=T0)
            assert job is not None
            server.kill()  # SIGKILL: only the journal survives
            with pytest.raises(StateError, match="redis://"):
                store.get("k1")
            server.start()
            record = store.get("k1")  # the same client reconnects
            assert record is not None and record.state is ObjectState.FILLING
            store.complete(job, now=T0 + 1)
            assert store.queue_length() == 0
    finally:
        server.stop()


# ------------------------------------------------------------------------------ the lock


def test_writes_are_invisible_until_the_commit(redis_state_url: str) -> None:
    with open_state(redis_state_url) as store, open_state(redis_state_url) as other:
        kv = store._cache
        assert isinstance(kv, RedisKV)
        with kv.transact():
            kv.set("rec:k9", "0{}")
            assert kv.get("rec:k9") == "0{}"  # read-your-writes inside
            assert other._cache.get("rec:k9") is None
        assert other._cache.get("rec:k9") == "0{}"


def test_a_holder_past_the_lock_expiry_cannot_commit(redis_state_url: str) -> None:
    client = redis.Redis.from_url(redis_state_url, decode_responses=True)
    slow = RedisKV(client, "t:", timeout=5.0, lock_ttl=0.05)
    fast = RedisKV(client, "t:", timeout=5.0, lock_ttl=5.0)
    with pytest.raises(RedisStorageError, match="no longer ours"), slow.transact():
        slow.set("a", "slow")
        time.sleep(0.2)  # the lock expires; another process takes it and commits
        with_other_thread(lambda: fast.set("a", "fast"))
    assert fast.get("a") == "fast"
    client.close()


def with_other_thread(call: object) -> None:
    import threading

    assert callable(call)
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()


KILLED_IN_TRANSACTION = r"""
import sys, time
from patchcache.state.open import open_state
store = open_state(sys.argv[1])
with store._cache.transact():
    store._cache.set("rec:half", "0{}")
    print("inside", flush=True)
    time.sleep(60)
"""


def test_kill_9_inside_a_transaction_writes_nothing_and_frees_the_lock(
    redis_state_url: str,
) -> None:
    with open_state(redis_state_url) as store:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_IN_TRANSACTION, redis_state_url],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "inside"
        proc.kill()
        proc.communicate(timeout=10)
        assert store._cache.get("rec:half") is None
        # The dead holder's lock expires (5 s); the next write waits for it, then goes through.
        assert sight(store)
        assert store.queue_length() == 1


# -------------------------------------------------------------------------------- the CLI


def test_cli_channel_add_and_status_on_redis(redis_state_url: str) -> None:
    runner = CliRunner()
    added = runner.invoke(main, ["channel", "add", "--state", redis_state_url, URL])
    assert added.exit_code == 0, added.output
    status = runner.invoke(main, ["status", "--json", "--state", redis_state_url])
    assert status.exit_code == 0, status.output
    doc = json.loads(status.output)
    assert doc["state_dir"] == redis_state_url
    assert len(doc["queue"]) == 1
    text = runner.invoke(main, ["status", "--state", redis_state_url])
    assert text.output.startswith(f"state {redis_state_url}: ")


def test_cli_state_dir_also_accepted_by_state(tmp_path: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(main, ["channel", "add", "--state", str(tmp_path / "s"), URL])
    assert added.exit_code == 0, added.output
    shown = runner.invoke(main, ["status", "--state-dir", str(tmp_path / "s")])
    assert shown.output.startswith("state dir ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state-dir", "/tmp/a", "--state", "redis://h/0"], "not both"),
        (["--state", "/tmp/a", "--state-password-file", "/p"], "only for a Redis state"),
        (["--state", "redis://:pw@h/0"], "password in the URL is refused"),
        ([], "give the shared state"),
    ],
)
def test_cli_state_option_mistakes(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["status", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_squid_conf_passes_the_redis_state_to_the_helper(tmp_path: Path) -> None:
    secret = tmp_path / "redis.pass"
    secret.write_text("x\n")
    result = CliRunner().invoke(
        main,
        [
            "squid-conf",
            "--state", "redis://10.0.0.5:6379/2",
            "--state-password-file", str(secret),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    helper = next(line for line in result.output.splitlines() if "store_id_program" in line)
    assert f"--state redis://10.0.0.5:6379/2 --state-password-file {secret}" in helper
    assert "range_offset_limit none pc_expand" in result.output


def test_lookup_error_reply_is_a_state_error(redis_state_url: str) -> None:
    with open_state(redis_state_url) as store:
        client = redis.Redis.from_url(redis_state_url)
        try:
            client.hset("patchcache:v:rec:odd", "a", "b")  # not a string: WRONGTYPE
        finally:
            client.close()
        with pytest.raises(StateError, match="WRONGTYPE"):
            store.expandable("odd")
        assert sight(store)  # the connection is still usable
        assert store.expandable("k1")
