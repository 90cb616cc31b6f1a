"""Throwaway Squid instances on loopback for tests, the demo and benchmarks: the process.

The rooms: `squid_config` renders the configuration (no I/O), `squid_logs` reads the logs and
waits on them, this module runs the process. Names from the other two are re-exported here.

Theory of operation: each instance gets its own work directory (config, cache_dir, logs, pid
file, hosts file), its own free loopback port (never 3128) and its own service name (``-n``:
Squid names its shared-memory segments after it, so parallel instances with rock stores do not
collide). The config is complete on its own; the system /etc/squid/squid.conf is never read.

There is no DNS here: host names are mapped to loopback in a ``hosts_file`` (see
`squid_config`).

Start: ``squid -k parse`` (a bad config fails with Squid's own message), ``squid -z -N``
(creates cache dirs), then ``squid -N`` in its own process group, waiting (bounded) until the
port accepts. Stop: SIGTERM, wait (``shutdown_lifetime 0``: about a second), then SIGKILL to the
whole group so helper children die too. As root, Squid switches to ``cache_effective_user
proxy``: the work directory is chowned to proxy and its ancestors made traversable.

Squid directives: http://www.squid-cache.org/Doc/config/ (Squid 5).
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

from patchcache.errors import PatchcacheError, StateError
from patchcache.installation import SQUID_USER
from patchcache.testbed.lifecycle import StartStop
from patchcache.testbed.ports import (
    LOOPBACK,
    RESERVED_PORTS,
    free_port,
    is_listening,
    port_accepts,
)
from patchcache.testbed.squid_config import (
    UPDATE_HOSTS,
    CacheType,
    ConfSettings,
    Layout,
    confine_access_logs,
    default_hosts,
    hosts_file_text,
    render_conf,
)
from patchcache.testbed.squid_logs import (
    AccessLogEntry,
    access_log_entries,
    parse_access_line,
    read_lines,
    read_text,
    wait_until,
)

__all__ = [
    "SQUID_USER",
    "UPDATE_HOSTS",
    "AccessLogEntry",
    "CacheType",
    "SquidError",
    "SquidInstance",
    "SquidStartError",
    "confine_access_logs",
    "default_hosts",
    "find_squid",
    "hosts_file_text",
    "make_traversable",
    "new_workdir",
    "parse_access_line",
    "prune_workdirs",
    "run_squid",
    "squid_parse",
    "testbed_root",
    "wait_until",
]

# Set in Squid's environment (helpers inherit it) to find this instance's processes.
_MARKER_VAR: Final = "PATCHCACHE_TESTBED_SQUID"
_ROOT_VAR: Final = "PATCHCACHE_TESTBED_ROOT"
_PORT_IN_USE = re.compile(r"Address already in use|Cannot open HTTP Port|bind\(\) failed")
_MAX_PORT_TRIES = 3


class SquidError(PatchcacheError):
    """Squid could not be found, configured, started or stopped."""


class SquidStartError(SquidError):
    """Squid did not come up; the message carries the tail of its cache.log."""


def find_squid() -> str:
    """Path of the squid binary (PATH, then /usr/sbin), or a clear error."""
    found = shutil.which("squid") or next(
        (p for p in ("/usr/sbin/squid", "/usr/local/sbin/squid") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise SquidError("squid binary not found: install the Debian package `squid`")
    return found


def squid_parse(
    conf_path: Path, *, timeout: float = 60.0, binary: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``squid -k parse -f conf_path``; returncode 0 means Squid accepts the config.

    Squid prints its parse log (and errors) to stderr; stdout and stderr are captured.
    """
    return subprocess.run(
        [binary or find_squid(), "-k", "parse", "-f", str(conf_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def testbed_root() -> Path:
    """Where :func:`new_workdir` makes directories: ``$PATCHCACHE_TESTBED_ROOT`` or
    ``<tmp>/patchcache-testbed``."""
    return Path(os.environ.get(_ROOT_VAR) or Path(tempfile.gettempdir()) / "patchcache-testbed")


def new_workdir(prefix: str = "squid-") -> Path:
    """A fresh directory that user proxy can reach, for a Squid instance or files its
    helpers read.

    pytest's tmp_path is a poor home for Squid: every pytest session that starts resets
    ``/tmp/pytest-of-USER`` to mode 0700, so a Squid (running as proxy) of another session
    running at the same time suddenly cannot reach its own logs and cache ("Cannot open
    .../store.log for writing", "Failed to make swap directory ...: Permission denied").
    """
    root = testbed_root()
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    path.chmod(0o755)
    return path


def prune_workdirs(max_age_hours: float = 12.0) -> int:
    """Delete directories under :func:`testbed_root` untouched for ``max_age_hours`` (left by
    runs that were killed); return how many went."""
    root = testbed_root()
    if not root.is_dir():
        return 0
    cutoff = time.time() - max_age_hours * 3600
    gone = 0
    for path in root.iterdir():
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
                gone += 1
    return gone


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def make_traversable(path: Path) -> None:
    """Let other users enter every ancestor of ``path`` (pytest's tmp dirs are 0700).

    Only adds the search bit (o+x) to directories we own; nothing becomes listable.
    """
    me = os.geteuid()
    for ancestor in path.resolve().parents:
        info = ancestor.stat()
        if info.st_uid == me and not info.st_mode & stat.S_IXOTH:
            ancestor.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


class SquidInstance(StartStop):
    """One throwaway Squid. ``start()``/``stop()``, or use it as a context manager."""

    def __init__(
        self,
        config_body: str = "",
        *,
        workdir: Path | None = None,
        http_port: int | None = None,
        hosts: Mapping[str, str] | None = None,
        cache_type: CacheType | None = "ufs",
        cache_size_mb: int = 1024,
        cache_dir_options: str = "",
        origin_peer_port: int | None = None,
        allow_localhost: bool = True,
        debug_options: str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        """Prepare (not start) an instance.

        ``config_body`` is appended after the testbed's base directives and the cache_dir, so
        it can add or override anything (``maximum_object_size``, ``range_offset_limit``,
        helpers, ACLs, ``http_access`` rules, which come before the final
        ``http_access allow localhost`` / ``deny all`` when ``allow_localhost``).
        ``hosts`` adds name -> address entries to the default :data:`UPDATE_HOSTS` mapping.
        ``cache_type`` None means no cache_dir (memory cache only).
        ``origin_peer_port`` routes every request to 127.0.0.1:PORT as an origin server.
        ``binary`` is the squid program to run (default: :func:`find_squid`).
        ``workdir`` None: a fresh :func:`new_workdir`, deleted again by :meth:`stop`. A given
        workdir is kept; it must stay traversable by user proxy while Squid runs (see
        :func:`new_workdir` for why pytest's tmp_path is a poor choice).
        """
        if http_port is not None and http_port in RESERVED_PORTS:
            raise SquidError(f"port {http_port} is reserved for a system Squid")
        self.config_body = config_body
        self.binary = binary
        self._owns_workdir = workdir is None
        self.workdir = (new_workdir() if workdir is None else Path(workdir)).resolve()
        self._fixed_port = http_port
        self.hosts = default_hosts(hosts)
        self.cache_type: CacheType | None = cache_type
        self.cache_size_mb = cache_size_mb
        self.cache_dir_options = cache_dir_options
        self.origin_peer_port = origin_peer_port
        self.allow_localhost = allow_localhost
        self.debug_options = debug_options
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.service_name = "pctb" + secrets.token_hex(6)
        self._port: int | None = http_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._exit_code: int | None = None
        self._as_root = os.geteuid() == 0

    # -- paths and accessors ---------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return Layout(self.workdir).conf

    @property
    def cache_dir(self) -> Path:
        return Layout(self.workdir).cache_dir

    @property
    def access_log_path(self) -> Path:
        return Layout(self.workdir).access_log

    @property
    def cache_log_path(self) -> Path:
        return Layout(self.workdir).cache_log

    @property
    def store_log_path(self) -> Path:
        return Layout(self.workdir).store_log

    @property
    def stdout_path(self) -> Path:
        return Layout(self.workdir).stdout

    @property
    def hosts_path(self) -> Path:
        return Layout(self.workdir).hosts

    @property
    def pid_path(self) -> Path:
        return Layout(self.workdir).pid

    @property
    def port(self) -> int:
        if self._port is None:
            raise StateError("squid has no port yet: start() it first")
        return self._port

    @property
    def proxy_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def access_log_lines(self) -> list[str]:
        return read_lines(self.access_log_path)

    def access_log_entries(self) -> list[AccessLogEntry]:
        """Parsed native-format lines (others skipped)."""
        return access_log_entries(self.access_log_path)

    def cache_log_text(self) -> str:
        return read_text(self.cache_log_path)

    def cache_log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of cache.log, plus whatever Squid printed to stdout/stderr."""
        tail = "\n".join(self.cache_log_text().splitlines()[-lines:])
        printed = read_text(self.stdout_path).strip()
        if printed:
            tail += "\n--- squid stdout/stderr ---\n" + "\n".join(printed.splitlines()[-lines:])
        return tail

    def wait_for_access_lines(
        self,
        count: int,
        *,
        timeout: float = 10.0,
        match: Callable[[AccessLogEntry], bool] | None = None,
    ) -> list[AccessLogEntry]:
        """Wait until access.log has ``count`` entries (matching ``match``), return them all.

        Squid logs a transaction after its last byte is sent, so a client may finish before
        its line appears. Fewer than ``count`` at the deadline raise `WaitTimedOut` with the
        entries seen and the tail of cache.log: a missing line is a failure, never something
        a caller may silently go on without.
        """

        def chosen() -> list[AccessLogEntry]:
            entries = self.access_log_entries()
            return entries if match is None else [e for e in entries if match(e)]

        return wait_until(
            chosen,
            lambda found: len(found) >= count,
            timeout=timeout,
            awaiting=f"{count} access.log entries" + ("" if match is None else " matching"),
            context=lambda: self.cache_log_tail(20),
        )

    def wait_for_cache_log(self, pattern: str, *, timeout: float = 10.0) -> re.Match[str] | None:
        """Wait until cache.log matches the regex ``pattern``; None at the deadline."""
        regex = re.compile(pattern)
        return wait_until(
            lambda: regex.search(self.cache_log_text()),
            lambda found: found is not None,
            timeout=timeout,
        )

    def parse_check(self, conf_text: str) -> subprocess.CompletedProcess[str]:
        """``squid -k parse`` on ``conf_text`` (a whole config) written into the workdir."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"parse-{secrets.token_hex(4)}.conf"
        path.write_text(conf_text)
        try:
            return squid_parse(path, binary=self.binary)
        finally:
            path.unlink(missing_ok=True)

    # -- config ----------------------------------------------------------------------------

    def render_config(self, port: int | None = None) -> str:
        """The complete squid.conf for ``port`` (default: the instance's port)."""
        settings = ConfSettings(
            port=self.port if port is None else port,
            service_name=self.service_name,
            run_as=SQUID_USER if self._as_root else None,
            cache_type=self.cache_type,
            cache_size_mb=self.cache_size_mb,
            cache_dir_options=self.cache_dir_options,
            origin_peer_port=self.origin_peer_port,
            allow_localhost=self.allow_localhost,
            debug_options=self.debug_options,
        )
        return render_conf(Layout(self.workdir), settings, self.config_body)

    def _prepare(self, port: int) -> None:
        for sub in ("logs", "run"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        if self.cache_type is not None:
            self.cache_dir.mkdir(exist_ok=True)
        self.hosts_path.write_text(hosts_file_text(self.hosts))
        self.conf_path.write_text(self.render_config(port))
        self._own_workdir()

    def _own_workdir(self) -> None:
        if self._as_root:
            user = pwd.getpwnam(SQUID_USER)
            make_traversable(self.workdir)
            _chown_tree(self.workdir, user.pw_uid, user.pw_gid)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SquidInstance:
        if self.running:
            return self
        squid = self.binary or find_squid()
        self.workdir.mkdir(parents=True, exist_ok=True)
        tries = 1 if self._fixed_port is not None else _MAX_PORT_TRIES
        for attempt in range(1, tries + 1):
            port = self._fixed_port if self._fixed_port is not None else free_port()
            self._port = port
            self._prepare(port)
            if attempt == 1:
                self._check_config()
                self._own_workdir()
                if self.cache_type is not None:
                    self._create_cache_dirs(squid)
                # Both ran as root and may have created files Squid must write as proxy.
                self._own_workdir()
            if self._launch(squid, port):
                return self
        raise SquidStartError(
            f"squid could not bind a port after {tries} tries\n{self.cache_log_tail()}"
        )

    def _check_config(self) -> None:
        result = squid_parse(self.conf_path, binary=self.binary)
        if result.returncode != 0:
            problems = [
                line
                for line in (result.stderr + result.stdout).splitlines()
                if re.search(r"FATAL|ERROR|WARNING|Bungled|unrecognized", line)
            ]
            raise SquidStartError(
                f"squid -k parse rejected {self.conf_path} (exit {result.returncode}):\n"
                + "\n".join(problems[-20:] or result.stderr.splitlines()[-20:])
            )

    def _create_cache_dirs(self, squid: str) -> None:
        try:
            result = subprocess.run(
                [squid, "-z", "-N", "-f", str(self.conf_path), "-n", self.service_name],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise SquidStartError(f"squid -z timed out\n{self.cache_log_tail()}") from exc
        if result.returncode != 0:
            raise SquidStartError(
                f"squid -z failed (exit {result.returncode}): {result.stderr.strip()}\n"
                f"{self.cache_log_tail()}"
            )

    def _launch(self, squid: str, port: int) -> bool:
        """Start squid -N; True once it accepts, False if its port was taken (retry)."""
        offset = self.cache_log_path.stat().st_size if self.cache_log_path.exists() else 0
        with self.stdout_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [squid, "-N", "-f", str(self.conf_path), "-n", self.service_name],
                env={**os.environ, _MARKER_VAR: self.service_name},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Ready when cache.log says the port listens. Probing with a connection instead would
        # leave a NONE_NONE/000 line in access.log that tests counting lines trip over.
        listening = re.compile(
            rf"Accepting HTTP Socket connections at .*local={re.escape(LOOPBACK)}:{port}\b"
        )
        proc = self._proc

        def outcome() -> bool | None:
            """True: it listens; False: its port was taken; None: not yet."""
            new_log = self.cache_log_text()[offset:]
            if proc.poll() is not None:
                self._reap()
                if self._fixed_port is None and _PORT_IN_USE.search(new_log):
                    return False
                raise SquidStartError(
                    f"squid exited with {self._exit_code} during start-up "
                    f"(workdir {self.workdir})\n{self.cache_log_tail()}"
                )
            # Squid logs "Accepting" just before its acceptor job calls listen(): also wait
            # for the kernel's LISTEN state (or, without /proc, a probe connection).
            if listening.search(new_log):
                state = is_listening(port)
                if state or (state is None and port_accepts(port, timeout=0.2)):
                    return True
            return None

        started = wait_until(outcome, lambda found: found is not None, timeout=self.start_timeout)
        if started is not None:
            return started
        self.stop()
        raise SquidStartError(
            f"squid did not accept on port {port} within {self.start_timeout}s "
            f"(workdir {self.workdir})\n{self.cache_log_tail()}"
        )

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._exit_code = proc.poll()
        self._proc = None
        self._kill_leftovers()
        self._cleanup_shm()

    def request_stop(self) -> None:
        """Send SIGTERM and return at once (stopping several instances in parallel)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM, wait up to ``stop_timeout`` (Squid needs about 2 s even with
        ``shutdown_lifetime 0``), then SIGKILL; then end helpers left over and delete an owned
        workdir. ``graceful=False`` kills at once (a throwaway cache needs no clean index)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if graceful:
                self.request_stop()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.stop_timeout)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(self.stop_timeout)
        self._reap()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """End processes this instance started that outlived Squid.

        Squid's helpers call setsid(), so they are not in Squid's process group, and a helper
        that ignores its closed stdin (or a Squid that was killed) leaves them running. They
        are found by the marker in their inherited environment, then signalled by pid.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = _processes_with_env(_MARKER_VAR, self.service_name)
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            wait_until(functools.partial(_any_alive, left), operator.not_, timeout=2.0)

    def _cleanup_shm(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for leftover in shm.glob(f"{self.service_name}-*"):
                leftover.unlink(missing_ok=True)

    def reconfigure(self, config_body: str | None = None, *, timeout: float = 15.0) -> None:
        """Rewrite the config (optionally with a new body), send SIGHUP, and wait until Squid
        listens again with it."""
        if self._proc is None or self._proc.poll() is not None:
            raise StateError("squid is not running")
        if config_body is not None:
            self.config_body = config_body
        self._prepare(self.port)
        self._check_config()
        listening = re.compile(r"Accepting HTTP Socket connections at ")
        before = len(listening.findall(self.cache_log_text()))
        proc = self._proc
        proc.send_signal(signal.SIGHUP)

        def listens_again() -> bool:
            if len(listening.findall(self.cache_log_text())) > before:
                return True
            if proc.poll() is not None:
                self._reap()
                raise SquidStartError(f"squid died on reconfigure\n{self.cache_log_tail()}")
            return False

        if not wait_until(listens_again, bool, timeout=timeout):
            raise SquidStartError(
                f"squid did not finish reconfiguring in {timeout}s\n{self.cache_log_tail()}"
            )

    def __repr__(self) -> str:
        return f"SquidInstance(port={self._port}, workdir={str(self.workdir)!r})"


@contextlib.contextmanager
def run_squid(
    config_body: str = "",
    *,
    workdir: Path | None = None,
    http_port: int | None = None,
    hosts: Mapping[str, str] | None = None,
    cache_type: CacheType | None = "ufs",
    cache_size_mb: int = 1024,
    cache_dir_options: str = "",
    origin_peer_port: int | None = None,
    allow_localhost: bool = True,
    debug_options: str | None = None,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[SquidInstance]:
    """Start a :class:`SquidInstance` for the ``with`` block and stop it afterwards."""
    instance = SquidInstance(
        config_body,
        workdir=workdir,
        http_port=http_port,
        hosts=hosts,
        cache_type=cache_type,
        cache_size_mb=cache_size_mb,
        cache_dir_options=cache_dir_options,
        origin_peer_port=origin_peer_port,
        allow_localhost=allow_localhost,
        debug_options=debug_options,
        start_timeout=start_timeout,
        stop_timeout=stop_timeout,
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def _processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment has ``name=value`` (zombies excluded)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and _alive(int(entry)):
            found.append(int(entry))
    return found


def _any_alive(pids: list[int]) -> bool:
    return any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie waiting to be reaped."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat_line.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")
