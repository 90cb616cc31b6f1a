"""The demo's machinery end to end, small: every profile, real Squid, real suite, checked bytes.

Keeps `patchcache demo` (the README's first command) true without its full run time.
"""

from __future__ import annotations

import shutil

import pytest

from patchcache.testbed import MiB
from patchcache.testbed.scenarios import FileSpec, format_table, run_all
from patchcache.testbed.squid import new_workdir

pytestmark = pytest.mark.squid


def test_profiles_side_by_side() -> None:
    specs = [
        FileSpec("update", 12 * MiB, "wu", 3, variants=3, stagger=0.3),
        FileSpec("video", 16 * MiB, "plain", 2, read_bytes=2 * MiB),
    ]
    workdir = new_workdir("demo-")
    try:
        results = run_all(specs, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    by_profile = {r.profile: r for r in results}
    default, tuned, ours = by_profile["default"], by_profile["tuned"], by_profile["patchcache"]
    # Squid's default: one copy per client; hand-tuned: one per URL variant.
    assert default.files[0].ratio == pytest.approx(3.0, abs=0.01)
    assert tuned.files[0].ratio == pytest.approx(3.0, abs=0.01)
    # patchcache: about one copy (the first range passes before the object is known).
    assert ours.files[0].ratio <= 1.0 + 3 / 12
    # Ordinary content read in part: exactly what was asked, with the default and with us.
    assert default.files[1].ratio == pytest.approx(1.0)
    assert ours.files[1].ratio == pytest.approx(1.0)
    table = format_table(results)
    assert "patchcache" in table and "update" in table
