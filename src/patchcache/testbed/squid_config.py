"""A throwaway Squid's configuration: its work directory's layout and its squid.conf. No I/O.

Theory of operation: see `patchcache.testbed.squid` (the process). Everything here is a pure
function of the instance's settings, so a config can be read and tested without a Squid.

There is no DNS in the testbed. Squid 5.7 consults ``hosts_file`` before DNS (verified: with
``dns_nameservers 127.0.0.1`` and nothing listening on port 53, mapped names resolve at once;
unmapped names fail after ``dns_timeout``), so update host names such as
download.windowsupdate.com are mapped to 127.0.0.1 and URLs keep their real host names while
all traffic stays on loopback. For URLs without a port, ``origin_peer_port`` adds a
``cache_peer ... originserver`` that receives every request (``never_direct allow all``).

Squid directives: http://www.squid-cache.org/Doc/config/ (Squid 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from patchcache.testbed.ports import LOOPBACK

CacheType = Literal["ufs", "aufs", "rock"]

# Update host names mapped to loopback by default, so tests can use real-looking URLs.
UPDATE_HOSTS: Final = (
    "download.windowsupdate.com",
    "au.download.windowsupdate.com",
    "wsus.ds.download.windowsupdate.com",
    "catalog.s.download.windowsupdate.com",
    "ctldl.windowsupdate.com",
    "dl.delivery.mp.microsoft.com",
    "tlu.dl.delivery.mp.microsoft.com",
    "2.tlu.dl.delivery.mp.microsoft.com",
    "msedge.b.tlu.dl.delivery.mp.microsoft.com",
    "officecdn.microsoft.com",
    "officecdn.microsoft.com.edgesuite.net",
    "swcdn.apple.com",
    "updates.cdn-apple.com",
    "ardownload2.adobe.com",
    "dl.google.com",
    "mirror.example.com",
)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where an instance keeps its files, all under ``workdir``."""

    workdir: Path

    @property
    def conf(self) -> Path:
        return self.workdir / "squid.conf"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def access_log(self) -> Path:
        return self.logs / "access.log"

    @property
    def cache_log(self) -> Path:
        return self.logs / "cache.log"

    @property
    def store_log(self) -> Path:
        return self.logs / "store.log"

    @property
    def stdout(self) -> Path:
        return self.logs / "squid.out"

    @property
    def hosts(self) -> Path:
        return self.workdir / "hosts"

    @property
    def pid(self) -> Path:
        return self.workdir / "run" / "squid.pid"


@dataclass(frozen=True, slots=True)
class ConfSettings:
    """What the testbed's own directives depend on (see `SquidInstance` for each)."""

    port: int
    service_name: str
    run_as: str | None
    """``cache_effective_user`` (Squid started as root), or None."""
    cache_type: CacheType | None = "ufs"
    cache_size_mb: int = 1024
    cache_dir_options: str = ""
    origin_peer_port: int | None = None
    allow_localhost: bool = True
    debug_options: str | None = None


def render_conf(layout: Layout, settings: ConfSettings, config_body: str) -> str:
    """The complete squid.conf: the testbed's base, the caller's body, the testbed's tail."""
    work, logs = layout.workdir, layout.logs
    base = [
        "# --- patchcache testbed base ---",
        f"http_port {LOOPBACK}:{settings.port}",
        "visible_hostname patchcache-testbed",
        # Squid detects forwarding loops by its unique_hostname (default: the visible one)
        # in Via: two testbed Squids chained (branch and parent) would call it a loop.
        f"unique_hostname {settings.service_name}",
        f"pid_filename {layout.pid}",
        f"coredump_dir {work}",
        f"cache_log {logs / 'cache.log'}",
        f"access_log stdio:{logs / 'access.log'}",
        f"cache_store_log stdio:{logs / 'store.log'}",
        "logfile_rotate 0",
        f"hosts_file {layout.hosts}",
        # No DNS here: unmapped names must fail on loopback, never leave the machine.
        "dns_nameservers 127.0.0.1",
        "dns_timeout 5 seconds",
        "pinger_enable off",
        "icp_port 0",
        "htcp_port 0",
        "snmp_port 0",
        "netdb_filename none",
        "shutdown_lifetime 0 seconds",
    ]
    if settings.run_as is not None:
        base.append(f"cache_effective_user {settings.run_as}")
    if settings.debug_options:
        base.append(f"debug_options {settings.debug_options}")
    if settings.cache_type is not None:
        geometry = "" if settings.cache_type == "rock" else " 16 64"
        options = f" {settings.cache_dir_options}" if settings.cache_dir_options else ""
        base.append(
            f"cache_dir {settings.cache_type} {layout.cache_dir} "
            f"{settings.cache_size_mb}{geometry}{options}"
        )
    tail = ["# --- patchcache testbed tail ---"]
    if settings.origin_peer_port is not None:
        tail += [
            f"cache_peer {LOOPBACK} parent {settings.origin_peer_port} 0 "
            "no-query no-digest originserver name=testbed_origin",
            "never_direct allow all",
        ]
    if settings.allow_localhost:
        tail += ["http_access allow localhost", "http_access deny all"]
    body = ["# --- caller config ---", confine_access_logs(config_body, work).rstrip("\n")]
    return "\n".join([*base, *body, *tail]) + "\n"


def hosts_file_text(hosts: Mapping[str, str]) -> str:
    """``/etc/hosts`` format: one ``ADDRESS NAME`` line per mapping."""
    lines = ["127.0.0.1 localhost"]
    lines += [f"{address} {name}" for name, address in hosts.items()]
    return "\n".join(lines) + "\n"


def default_hosts(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:data:`UPDATE_HOSTS` mapped to 127.0.0.1, updated with ``extra``."""
    mapping = dict.fromkeys(UPDATE_HOSTS, LOOPBACK)
    mapping.update(extra or {})
    return mapping


def confine_access_logs(body: str, workdir: Path) -> str:
    """``body`` with every ``access_log`` outside ``workdir`` moved into ``workdir/logs``.

    A caller's config may carry the lines ``patchcache squid-conf`` writes for a real proxy
    (``access_log daemon:/var/log/squid/patchcache.log patchcache``, and Squid's default
    access.log declared again): a throwaway Squid must never write the system's logs. Its own
    access.log is already declared by the base config, so a second one is dropped (it would
    double every line); other logs go to ``logs/<name>``, written with ``stdio:`` so tests see
    each line as soon as the transaction ends (``daemon:`` buffers).
    """
    logs = workdir / "logs"
    out: list[str] = []
    for line in body.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "access_log" and words[1] != "none":
            _module, _, where = words[1].rpartition(":")
            path = Path(where)
            if path.is_absolute() and not path.is_relative_to(workdir):
                if path.name == "access.log":
                    out.append(f"# testbed: dropped (the base config has its own): {line}")
                    continue
                line = " ".join(["access_log", f"stdio:{logs / path.name}", *words[2:]])
        out.append(line)
    return "\n".join(out) + "\n"
