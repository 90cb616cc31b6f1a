"""Fixtures around patchcache.testbed: a byte-counting origin and throwaway Squids.

``origin``: a started :class:`~patchcache.testbed.Origin` (function scope).

``squid_factory(config_body="", **options)``: starts a :class:`~patchcache.testbed.SquidInstance`
(options as for SquidInstance: ``hosts``, ``cache_type``, ``cache_size_mb``,
``origin_peer_port``, ...) and stops every instance it started at teardown. Its work directory
comes from :func:`~patchcache.testbed.squid.new_workdir`, outside pytest's 0700 tmp tree, with a
symlink ``tmp_path/squidN`` to it; it is deleted at teardown (a failing test's report shows the
tail of cache.log). A missing squid binary fails the test with a clear error (never a skip: CI
must run these).

``proxy_dir``: a fresh directory user proxy can read, for files Squid or its helpers open
(rules, helper scripts); deleted at teardown.

``stack_dir``: the same kind of directory, as the work directory of a
:class:`~patchcache.testbed.stack.Stack` (or a Tree/Farm); a separate fixture so a test can
have both.

This module also moves pytest's basetemp (unless ``--basetemp`` is given) to a per-session
directory under :func:`~patchcache.testbed.squid.testbed_root`: every pytest session that
starts resets ``/tmp/pytest-of-USER`` to mode 0700, which would cut the Squid (user proxy) of
any other session running at the same time off from files under its ``tmp_path``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from patchcache.testbed import Origin, SquidInstance
from patchcache.testbed.squid import find_squid, new_workdir, prune_workdirs

_OWN_BASETEMP = pytest.StashKey[Path]()


class SquidFactory(Protocol):
    def __call__(self, config_body: str = "", **options: Any) -> SquidInstance: ...


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # tryfirst: pytest's tmpdir plugin reads the option in its own pytest_configure.
    if config.option.basetemp:
        return
    # A live session keeps touching its basetemp (a new dir per test); older ones are debris.
    prune_workdirs(max_age_hours=2.0)
    config.option.basetemp = str(new_workdir("pytest-"))
    config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Keep a failed session's files for debugging; a green one's are only disk usage.
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def _prefix(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60] + "-"


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


def _fresh_workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    path = new_workdir(_prefix(request))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def proxy_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    yield from _fresh_workdir(request)


@pytest.fixture
def stack_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    yield from _fresh_workdir(request)


@pytest.fixture
def squid_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SquidFactory]:
    find_squid()  # raises SquidError naming the missing package
    started: list[SquidInstance] = []
    made: list[Path] = []

    def start(config_body: str = "", **options: Any) -> SquidInstance:
        workdir = options.pop("workdir", None)
        if workdir is None:
            workdir = new_workdir(_prefix(request))
            made.append(workdir)
            (tmp_path / f"squid{len(started)}").symlink_to(workdir, target_is_directory=True)
        instance = SquidInstance(config_body, workdir=workdir, **options)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.request_stop()  # all at once: each Squid needs about 2 s to exit
    for instance in reversed(started):
        # Shown by pytest only when the test fails: what Squid itself said.
        request.node.add_report_section(
            "teardown", f"squid {instance.workdir.name} cache.log", instance.cache_log_tail(60)
        )
        instance.stop()
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
