"""``root_logging``: puts the root logger's handlers and level back after the test.

For tests of code that sets up logging itself (`patchcache.logging_setup.configure_logging`,
which the services call at start): without it, the handlers it installs outlive the test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
