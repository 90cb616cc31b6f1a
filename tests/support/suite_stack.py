"""Fixtures for integration tests that run the whole suite (`testbed.stack.Stack`) on loopback.

``stack_factory(rules_text="", *, prefetch=False, icap=True, extra_config="", hosts=None)``
starts a :class:`~testbed.stack.Stack` (Squid with the generated config, the store-ID helper,
the ICAP service) in a fresh work directory from :func:`~patchcache.testbed.squid.new_workdir`
(Squid runs as proxy and must reach it, which pytest's 0700 tmp tree forbids). ``hosts`` adds
names to Squid's hosts map (a Squid reconfigure right after start, before any traffic). At
``extra_config`` is appended to the generated Squid config; ``{logs}`` in it stands for Squid's
log directory (e.g. for an extra ``access_log`` with a custom ``logformat``). At
teardown every stack is stopped, its directory deleted, and a failing test's report carries the
tails of cache.log and of the ICAP service's log.

Plain functions for the tests: :func:`squid_children` (processes Squid started, found by parent
pid in /proc, so helpers of other Squids on this machine are never touched),
:func:`codes_since` (access.log result codes after a mark), :func:`wait_swapped_out` (an
entry finished and written to the cache_dir), :func:`fetch_whole` (one plain GET
through the proxy, streamed and checked byte by byte, for objects too big to hold twice).
"""

from __future__ import annotations

import http.client
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

import pytest

from patchcache.testbed import ContentSource, DownloadError, SquidInstance, verify_bytes
from patchcache.testbed.squid import new_workdir
from patchcache.testbed.squid_logs import read_lines, wait_until
from patchcache.testbed.stack import Stack

_PIECE: Final = 1 << 20


class StackFactory(Protocol):
    def __call__(
        self,
        rules_text: str = "",
        *,
        prefetch: bool = False,
        icap: bool = True,
        extra_config: str = "",
        hosts: Mapping[str, str] | None = None,
        head_lookup: bool = True,
    ) -> Stack: ...


def running_squid(stack: Stack) -> SquidInstance:
    """The stack's Squid (for mypy: it exists once the stack started)."""
    assert stack.squid is not None, "stack not started"
    return stack.squid


def squid_children(squid: SquidInstance, needle: str) -> list[int]:
    """Pids of live children of this Squid whose command line contains ``needle``.

    Squid 5.7 run with ``-N`` forks its helpers itself (they call setsid, so they leave its
    process group, but their parent is still Squid).
    """
    parent = squid.pid
    if parent is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat_fields[0], int(stat_fields[1])
        if ppid == parent and state not in ("Z", "X") and needle in command:
            found.append(int(entry.name))
    return found


def codes_since(squid: SquidInstance, mark: int, count: int, timeout: float = 10.0) -> list[str]:
    """``RESULT/STATUS`` of the access.log entries after the first ``mark`` ones, waiting
    (bounded) until there are ``count`` of them: Squid logs after the last byte is sent."""
    entries = squid.wait_for_access_lines(mark + count, timeout=timeout)
    return [entry.code for entry in entries[mark:]]


def wait_state_created(stack: Stack, timeout: float = 30.0) -> None:
    """Wait (bounded) until Squid's store-ID helpers, as user proxy, have created the state
    database (diskcache's ``cache.db``); a `WaitTimedOut` if they have not within ``timeout``.

    For a test that writes the state itself (as root) right after the stack started: had it
    come first, the database would be root's, and the helpers could only read it ("attempt to
    write a readonly database": no expansion at all).
    """
    database = stack.state_dir / "cache.db"
    wait_until(
        database.exists,
        bool,
        timeout=timeout,
        awaiting=f"{database}, made by the store-ID helpers",
    )


def wait_swapped_out(squid: SquidInstance, needle: str, timeout: float = 30.0) -> None:
    """Wait (bounded) for a store.log ``SWAPOUT`` line whose URL contains ``needle``; a
    `WaitTimedOut` when there is none within ``timeout`` seconds.

    A client that asked for a range of an expanded fetch is done long before the fill; a
    request arriving meanwhile joins the entry in flight, which Debian's Squid 5.7 logs as
    ``TCP_MISS`` (``HIER_NONE``). The SWAPOUT line says the entry is complete and stored.
    """

    def swapped_out() -> bool:
        for line in read_lines(squid.store_log_path):
            fields = line.split()
            if len(fields) > 2 and fields[1] == "SWAPOUT" and needle in fields[-1]:
                return True
        return False

    wait_until(
        swapped_out,
        bool,
        timeout=timeout,
        awaiting=f"a store.log SWAPOUT line for {needle}",
        context=squid.cache_log_tail,
    )


@dataclass(frozen=True, slots=True)
class WholeReply:
    """What :func:`fetch_whole` saw: status, head, and how many body bytes (all checked)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    length: int

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def fetch_whole(
    proxy_url: str,
    url: str,
    *,
    verify: ContentSource | None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> WholeReply:
    """GET ``url`` through the proxy and read the body in pieces, checking each against
    ``verify`` (a wrong byte raises DownloadError); bounded by ``timeout`` per socket call and
    by the deadline overall."""
    proxy = urlsplit(proxy_url)
    assert proxy.hostname is not None and proxy.port is not None
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=timeout)
    try:
        conn.request("GET", url, headers=dict(headers or {}))
        response = conn.getresponse()
        offset = 0
        while True:
            if time.monotonic() > deadline:
                raise DownloadError(f"timed out after {offset} bytes", url=url, offset=offset)
            piece = response.read(_PIECE)
            if not piece:
                break
            if verify is not None and response.status == 200:
                verify_bytes(verify, offset, piece, url=url)
            offset += len(piece)
        return WholeReply(response.status, tuple(response.getheaders()), offset)
    finally:
        conn.close()


def _prefix(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:50] + "-stack-"


@pytest.fixture
def stack_factory(request: pytest.FixtureRequest) -> Iterator[StackFactory]:
    started: list[Stack] = []

    def start(
        rules_text: str = "",
        *,
        prefetch: bool = False,
        icap: bool = True,
        extra_config: str = "",
        hosts: Mapping[str, str] | None = None,
        head_lookup: bool = True,
    ) -> Stack:
        workdir = new_workdir(_prefix(request))
        stack = Stack(
            workdir,
            rules_text=rules_text,
            prefetch=prefetch,
            icap=icap,
            head_lookup=head_lookup,
            # Stack puts Squid in workdir/squid; SquidInstance creates logs/ and chowns it.
            extra_config=extra_config.replace("{logs}", str(workdir / "squid" / "logs")),
        )
        started.append(stack)
        stack.start()
        if hosts:
            squid = running_squid(stack)
            squid.hosts.update(hosts)
            squid.reconfigure()
        return stack

    yield start
    for stack in started:
        if stack.squid is not None:
            stack.squid.request_stop()  # in parallel: each Squid needs about 2 s to exit
    for stack in reversed(started):
        if stack.squid is not None:
            request.node.add_report_section(
                "teardown", f"{stack.workdir.name} cache.log", stack.squid.cache_log_tail(60)
            )
        icap_log = stack.log_text("icap")
        if icap_log:
            tail = "\n".join(icap_log.splitlines()[-30:])
            request.node.add_report_section("teardown", f"{stack.workdir.name} icap.log", tail)
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)
