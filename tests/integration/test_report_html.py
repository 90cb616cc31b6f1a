"""The HTML report in a real browser: Debian's chromium, headless, offline, takes a screenshot.

The page must be self-contained (no script, font, stylesheet or image from elsewhere) and its
three matplotlib charts must be drawn: the screenshot must hold each chart's own colour.
Skipped only when chromium is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from patchcache.report import charts
from patchcache.report.render_html import render_html
from patchcache.report.run import make_report
from patchcache.report.synthetic import write_file
from patchcache.rules import load_rules

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)


def test_html_report_renders_with_its_charts(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    write_file(log, 20_000, junk_every=500)
    html = render_html(make_report([log], load_rules(None)))
    assert html.count("<svg") == 3
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\((?!#)|@font-face", html, re.I)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", html, re.I)
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="pc-chromium-") as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,2000",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a blank page is a few KB
    pixels = imread(str(shot))[:, :, :3] * 255.0
    assert pixels.shape[:2] == (2000, 1200)
    colours = np.unique(pixels.reshape(-1, 3).round().astype(np.int32), axis=0)
    assert len(colours) > 200  # text, bars, lines: not a flat page
    for name, colour in (
        ("served bars", charts.SERVED),
        ("fetched bars", charts.FETCHED),
        ("savings bars", charts.SAVED),
    ):
        close = np.all(np.abs(pixels - _rgb(colour)) <= 6, axis=2)
        assert close.sum() > 500, f"{name} ({colour}) not visible in the screenshot"
