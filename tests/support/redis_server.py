"""A real redis-server (Debian package redis-server) on a free loopback port, for the state tests.

`redis_server` (session): one server, no persistence. `redis_state_url` (per test): a database
on it, flushed first. `RedisServer` can also be made by a test that restarts it (appendonly on).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from patchcache.testbed.ports import free_port
from patchcache.testbed.squid_logs import wait_until


class RedisServer:
    def __init__(
        self, workdir: Path, *, appendonly: bool = False, password: str | None = None
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        proc = self._proc

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited during start-up: {self.log_tail()}")
                return False

        try:
            wait_until(
                answers, bool, timeout=20, awaiting="redis-server to answer", context=self.log_tail
            )
        finally:
            client.close()

    def log_tail(self) -> str:
        return (self.workdir / "redis.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=20)
        self._proc = None

    def kill(self) -> None:
        """kill -9: no shutdown save; only what appendonly already wrote survives."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=20)
        self._proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_state_url(redis_server: RedisServer) -> str:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=1)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url(1)
