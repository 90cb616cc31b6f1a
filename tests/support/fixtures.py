"""Fixtures around patchcache.testbed: a byte-counting origin and throwaway Squids.

``origin`` is a started :class:`~patchcache.testbed.Origin` (function scope).
``squid_factory(config_body="", **options)`` starts a
:class:`~patchcache.testbed.SquidInstance` under ``tmp_path`` (options as for SquidInstance:
``hosts``, ``cache_type``, ``cache_size_mb``, ``origin_peer_port``, ...) and stops every
instance it started at teardown. A missing squid binary fails the test with a clear error
(never a skip: CI must run these).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from patchcache.testbed import Origin, SquidInstance
from patchcache.testbed.squid import find_squid


class SquidFactory(Protocol):
    def __call__(self, config_body: str = "", **options: Any) -> SquidInstance: ...


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


@pytest.fixture
def squid_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SquidFactory]:
    find_squid()  # raises SquidError naming the missing package
    started: list[SquidInstance] = []

    def start(config_body: str = "", **options: Any) -> SquidInstance:
        workdir = options.pop("workdir", None) or tmp_path / f"squid{len(started)}"
        instance = SquidInstance(config_body, workdir=workdir, **options)
        started.append(instance)
        return instance.start()

    yield start
    for instance in reversed(started):
        # Shown by pytest only when the test fails: what Squid itself said.
        request.node.add_report_section(
            "teardown", f"squid {instance.workdir.name} cache.log", instance.cache_log_tail(60)
        )
        instance.stop()
