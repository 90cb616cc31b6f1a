"""Registers every module in tests/support/ as a pytest plugin, so fixtures defined there
(tests/support/fixtures.py and any module added beside it) are available to all tests."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"support.{module.stem}"
    for module in (Path(__file__).parent / "support").glob("*.py")
    if not module.stem.startswith("_")
)
