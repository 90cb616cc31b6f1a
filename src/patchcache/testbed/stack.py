"""A whole patchcache deployment on loopback: Squid, the helpers, the ICAP service, the prefetcher.

Used by the demo (`patchcache demo`), the amplification benchmark and the closed-loop integration
tests, so that all three run exactly what an admin would: the squid.conf lines come from
`patchcache squid-conf`, and every component is the real `patchcache` program in its own process.

Three Squid profiles are compared side by side:
- `default`: Squid as shipped (`range_offset_limit 0`: ranges pass through, nothing stored).
- `tuned`: the best hand configuration known (docs/squid-behaviour.md): `range_offset_limit -1`,
  `quick_abort_min -1`, a big `maximum_object_size`, `collapsed_forwarding on`. Global, so it
  also expands and stores ordinary content, and it knows no URL variants.
- `patchcache`: the generated snippet with store-ID, per-request expansion, ICAP and prefetcher.

As root, Squid runs its helpers as `proxy`; the ICAP service and the prefetcher share the state
directory (SQLite files) with those helpers, so they run as `proxy` too.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from patchcache.errors import PatchcacheError
from patchcache.installation import as_squid_user, check_runnable, console_script
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.squidconf.peers import peer_address
from patchcache.testbed.lifecycle import StartStop
from patchcache.testbed.ports import LOOPBACK, free_port, port_accepts
from patchcache.testbed.squid import SQUID_USER, SquidInstance, make_traversable

Profile = Literal["default", "tuned", "patchcache"]
PROFILES: tuple[Profile, ...] = ("default", "tuned", "patchcache")

TUNED_CONFIG = """\
range_offset_limit -1
quick_abort_min -1 KB
maximum_object_size 4 GB
collapsed_forwarding on
"""


class StackError(PatchcacheError):
    """A component of the stack failed to start."""


def patchcache_binary() -> str:
    """The `patchcache` program of this installation (the one Squid must run).

    Beside the running interpreter, never from PATH, and checked to be runnable by Squid's
    user: a helper that cannot start only shows as Squid stopping.
    """
    script = console_script()
    if os.geteuid() == 0:
        check_runnable(script)
    return str(script)


@dataclass
class Stack(StartStop):
    """Start with `start()` (or `with`), stop with `stop()`."""

    workdir: Path
    profile: Profile = "patchcache"
    rules_text: str = ""
    origin_port: int | None = None
    cache_size_mb: int = 4096
    prefetch: bool = True
    icap: bool = True
    extra_config: str = ""
    squid_binary: str | None = None  # default: the squid on PATH or in /usr/sbin
    prefetch_options: tuple[str, ...] = ()  # extra `patchcache prefetch` options
    # A branch: class downloads go through this parent proxy (http://host:port) instead of
    # origin_port; patchcache's own `--parent` lines, or for the Squid-only profiles the plain
    # hierarchy an admin would write (everything through the parent).
    parent_url: str | None = None
    icap_options: tuple[str, ...] = ()  # extra `patchcache icap` options
    squid: SquidInstance | None = None
    icap_port: int | None = None
    http_port: int | None = None
    head_lookup: bool = True  # the store-ID helper's HEAD before a first range (--head-via)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def rules_path(self) -> Path:
        return self.workdir / "patchcache" / "rules.toml"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "patchcache" / "state"

    @property
    def proxy_url(self) -> str:
        assert self.squid is not None
        return self.squid.proxy_url

    def start(self) -> Stack:
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            # Known before the configuration: the store-ID helper HEADs through it.
            self.http_port = free_port()
            body = self._squid_body()
            self.squid = SquidInstance(
                body,
                workdir=self.workdir / "squid",
                cache_size_mb=self.cache_size_mb,
                origin_peer_port=self.origin_port,
                binary=self.squid_binary,
                http_port=self.http_port,
            )
            self.squid.start()
            if self.profile == "patchcache" and self.prefetch:
                self.start_prefetcher()
        except BaseException:
            self.stop()
            raise
        return self

    def _squid_body(self) -> str:
        if self.profile == "default":
            return self._plain_parent() + self.extra_config
        if self.profile == "tuned":
            return TUNED_CONFIG + self._plain_parent() + self.extra_config
        own = self.workdir / "patchcache"
        own.mkdir(parents=True, exist_ok=True)
        make_traversable(own)
        self.state_dir.mkdir(exist_ok=True)
        self.rules_path.write_text(self.rules_text)
        rules = load_rules(self.rules_path)
        if os.geteuid() == 0:
            user = pwd.getpwnam(SQUID_USER)
            for path in (own, self.state_dir, self.rules_path):
                os.chown(path, user.pw_uid, user.pw_gid)
        icap_url = None
        if self.icap:
            self.icap_port = free_port()
            icap_url = f"icap://{LOOPBACK}:{self.icap_port}/respmod"
            self._spawn(
                "icap",
                [
                    "icap",
                    "--listen",
                    f"{LOOPBACK}:{self.icap_port}",
                    "--rules",
                    str(self.rules_path),
                    "--state-dir",
                    str(self.state_dir),
                    *self.icap_options,
                ],
            )
            self._wait_port(self.icap_port, "icap")
        opts = ConfOptions(
            patchcache_bin=patchcache_binary(),
            rules_path=self.rules_path,
            state_dir=self.state_dir,
            icap_url=icap_url,
            head_via=f"http://{LOOPBACK}:{self.http_port}" if self.head_lookup else None,
            store_id_children=4,
            concurrency=20,
            parent=self.parent_url,
        )
        return render_squid_conf(rules, opts) + self.extra_config

    def _plain_parent(self) -> str:
        if self.parent_url is None:
            return ""
        host, port = peer_address(self.parent_url, field="parent_url")
        return (
            f"cache_peer {host} parent {port} 0 no-query no-digest default name=pc_parent\n"
            "never_direct allow all\n"
        )

    def start_prefetcher(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start (or restart) the prefetcher sidecar."""
        return self._spawn(
            "prefetch",
            [
                "prefetch",
                "--proxy",
                self.proxy_url,
                "--state-dir",
                str(self.state_dir),
                "--rules",
                str(self.rules_path),
                *self.prefetch_options,
                *extra,
            ],
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def log_text(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.kill(name, signal.SIGTERM)
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [patchcache_binary(), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=as_squid_user(),  # no threads that matter before exec here
            start_new_session=True,
        )
        log.close()
        self.processes[name] = proc
        return proc

    def _wait_port(self, port: int, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}: {self.log_text(name)}")
            if port_accepts(port):
                return
            time.sleep(0.05)
        raise StackError(f"{name} did not listen on {port} within {timeout}s")

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
        if self.squid is not None:
            self.squid.stop()

    def status(self) -> dict[str, Any]:
        """`patchcache status --json`, run as the user that owns the state (SQLite files created
        by root would lock the helpers out)."""
        done = subprocess.run(
            [patchcache_binary(), "status", "--json", "--state-dir", str(self.state_dir)],
            capture_output=True,
            timeout=60,
            preexec_fn=as_squid_user(),
            check=True,
        )
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def wait_queue_drained(self, timeout: float = 120.0) -> bool:
        """Wait until no prefetch job is queued or being filled (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.status()["queue"]:
                return True
            time.sleep(0.2)
        return False
