"""The closed prefetch loop on loopback: origin, a real Squid with the generated patchcache config
(store-ID helper with the shared state dir, per-request expansion, PURGE), and a prefetcher.

``prefetch_loop_factory(class_options="", settings="")`` builds one: a rules file with two
classes for testbed host names (``wu``: Windows-Update-style names carrying their SHA-1 on
download.windowsupdate.com; ``plain``: any path under /files/ on mirror.example.com), the state
dir, Squid from ``render_squid_conf``, and the origin behind it as a ``cache_peer``. Extra TOML
lines go into both classes (``class_options``) or ``[settings]`` (``settings``).

Squid runs its helpers as user ``proxy``: the state dir is owned by proxy (SQLite, running as
root, gives its -wal/-shm files the database file's owner), and the directories leading to this
Python are made traversable (search bit only), as the testbed does for its work dirs.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from patchcache.prefetch.fetch import Proxy
from patchcache.prefetch.worker import Prefetcher, Tally, WorkerSettings
from patchcache.rules import CompiledRules, Match, load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.state import StateStore
from patchcache.state.open import open_state
from patchcache.testbed import Origin, OriginObject, SquidInstance, http_request
from patchcache.testbed.squid import make_traversable
from patchcache.testbed.stack import patchcache_binary
from support.fixtures import SquidFactory

WU_HOST = "download.windowsupdate.com"
WU_DIR = "/d/msdownload/update/software/secu/2024/01"
PLAIN_HOST = "mirror.example.com"

RULES_TEMPLATE = """
packs = []

[settings]
prefetch_max_attempts = {max_attempts}
{settings}

[classes.wu]
hosts = ["{wu_host}"]
path = '^/d/msdownload/update/.*_(?P<digest>[0-9a-f]{{40}})\\.cab$'
key = "/sha1/{{digest}}"
digest = "sha1"
max_object_size = "1 GiB"
freshness = "pin"
{class_options}

[classes.plain]
hosts = ["{plain_host}"]
path = '^/files/.+$'
key = "{{path}}"
max_object_size = "1 GiB"
{class_options}
"""


@dataclass
class PrefetchLoop:
    origin: Origin
    squid: SquidInstance
    rules: CompiledRules
    rules_path: Path
    state_dir: Path
    store: StateStore
    workdir: Path
    state: str = ""  # what --state names: state_dir, or a redis:// URL
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def proxy(self) -> Proxy:
        return Proxy.parse(self.squid.proxy_url)

    def url(self, obj: OriginObject, host: str = WU_HOST) -> str:
        return self.origin.url(obj, host=host, with_port=False)

    def match(self, url: str) -> Match:
        found = self.rules.match(url)
        assert found is not None, url
        return found

    def first_sight(self, obj: OriginObject, host: str = WU_HOST) -> Match:
        """What the ICAP service does on the first ranged miss: record and queue one job."""
        url = self.url(obj, host)
        found = self.match(url)
        assert self.store.record_first_sight(
            found.key, url, found.cls.name, obj.size, obj.etag, obj.last_modified
        )
        return found

    def settings(self, **overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "proxy": self.proxy,
            "owner": "pytest",
            "lease_seconds": 3.0,
            "poll_interval": 0.1,
            "backoff_base": 0.1,
            "backoff_max": 1.0,
            "idle_timeout": 30.0,
            "once": True,
        }
        values.update(overrides)
        return WorkerSettings(**values)

    def run_once(self, timeout: float = 120.0, **overrides: Any) -> Tally:
        """An in-process prefetcher with `once`, bounded by `timeout`."""
        prefetcher = Prefetcher(self.store, self.rules, self.settings(**overrides))
        return asyncio.run(asyncio.wait_for(prefetcher.run(), timeout))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "patchcache.prefetch", *args]

    def channel_add(self, *urls: str, check: bool) -> subprocess.CompletedProcess[str]:
        """``channel add`` of ``urls`` to this loop's state, as an admin runs it (bounded)."""
        return subprocess.run(
            self.command(
                "channel",
                "add",
                "--state-dir",
                str(self.state_dir),
                "--rules",
                str(self.rules_path),
                *urls,
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def prefetch_args(self, *extra: str) -> list[str]:
        return self.command(
            "prefetch",
            "--proxy",
            self.squid.proxy_url,
            "--state",
            self.state or str(self.state_dir),
            "--rules",
            str(self.rules_path),
            "--poll",
            "0.1",
            "--backoff",
            "0.1",
            "--max-backoff",
            "1",
            *extra,
        )

    def spawn(self, *extra: str, log_name: str = "prefetch") -> subprocess.Popen[bytes]:
        """A prefetcher subprocess (stderr to a log file in the workdir)."""
        log = (self.workdir / f"{log_name}.log").open("ab")
        proc = subprocess.Popen(
            self.prefetch_args(*extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.spawned.append(proc)
        return proc

    def log_text(self, log_name: str = "prefetch") -> str:
        path = self.workdir / f"{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cached(self, url: str) -> bool:
        """Is `url` stored in Squid? (`only-if-cached`: Squid answers 504 instead of fetching;
        `max-stale`: a stored object counts even when stale, as revalidated classes' are.)"""
        reply = http_request(
            self.squid.proxy_url,
            url,
            headers={"Cache-Control": "only-if-cached, max-stale", "Range": "bytes=0-0"},
            timeout=30.0,
        )
        return reply.status in (200, 206)


class PrefetchLoopFactory(Protocol):
    def __call__(
        self,
        class_options: str = "",
        settings: str = "",
        max_attempts: int = 3,
        state_url: str | None = None,
    ) -> PrefetchLoop: ...


@pytest.fixture
def prefetch_loop_factory(
    tmp_path: Path, origin: Origin, squid_factory: SquidFactory
) -> Iterator[PrefetchLoopFactory]:
    loops: list[PrefetchLoop] = []

    def build(
        class_options: str = "",
        settings: str = "",
        max_attempts: int = 3,
        state_url: str | None = None,
    ) -> PrefetchLoop:
        """A loop on a state dir, or on the Redis database `state_url` if given."""
        workdir = tmp_path / f"loop{len(loops)}"
        workdir.mkdir()
        rules_path = workdir / "rules.toml"
        rules_path.write_text(
            RULES_TEMPLATE.format(
                max_attempts=max_attempts,
                settings=settings,
                class_options=class_options,
                wu_host=WU_HOST,
                plain_host=PLAIN_HOST,
            )
        )
        rules = load_rules(rules_path)
        binary = patchcache_binary()
        make_traversable(rules_path)
        state_dir = workdir / "state"
        StateStore(state_dir).close()
        if os.geteuid() == 0:
            user = pwd.getpwnam("proxy")
            for path in (state_dir, *state_dir.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
        conf = render_squid_conf(
            rules,
            ConfOptions(
                patchcache_bin=binary,
                rules_path=rules_path,
                state_dir=state_dir if state_url is None else None,
                state_url=state_url,
                store_id_children=2,
                concurrency=10,
            ),
        )
        squid = squid_factory(conf, workdir=workdir / "squid", origin_peer_port=origin.port)
        loop = PrefetchLoop(
            origin=origin,
            squid=squid,
            rules=rules,
            rules_path=rules_path,
            state_dir=state_dir,
            store=open_state(state_url or state_dir),
            workdir=workdir,
            state=state_url or str(state_dir),
        )
        loops.append(loop)
        return loop

    yield build
    for loop in loops:
        for proc in loop.spawned:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        loop.store.close()


def wu_object(origin: Origin, size: int, **options: Any) -> OriginObject:
    """A Windows-Update-style object named with its SHA-1 (see Origin.register_digest_named)."""
    return origin.register_digest_named(WU_DIR, size, **options)
