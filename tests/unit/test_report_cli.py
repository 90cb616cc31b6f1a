"""`patchcache report` on the command line: options, formats, errors (exit 2, one line)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcache.cli import main
from patchcache.errors import ConfigError
from patchcache.report.cli import parse_when
from patchcache.report.synthetic import START, write_file


def test_parse_when_forms() -> None:
    assert parse_when("2026-11-30", "--since") == 1795996800.0
    assert parse_when("2026-11-30T01:00", "--since") == 1796000400.0
    assert parse_when("2026-11-30T02:00+01:00", "--since") == 1796000400.0
    assert parse_when("7d", "--since", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_when("24h", "--since", now=1_000_000.0) == 1_000_000.0 - 86400
    assert parse_when("1796000000.5", "--since") == 1796000000.5
    with pytest.raises(ConfigError, match="--until"):
        parse_when("yesterday", "--until")


def test_report_json_text_html_and_errors(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    write_file(log, 3000)
    rotated = tmp_path / "access.log.1.gz"
    with gzip.open(rotated, "wb") as out:
        out.write(log.read_bytes())
    runner = CliRunner()
    args = ["report", "--access-log", str(log), "--access-log", str(rotated)]
    done = runner.invoke(main, [*args, "--format", "json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["total"]["requests"] == 6000
    assert set(report) >= {"classes", "other", "total", "lines", "estimates"}
    assert report["classes"]["windows-update"]["pack"] == "windows-update"

    until = runner.invoke(main, [*args, "--format", "json", "--until", str(int(START + 3600))])
    assert until.exit_code == 0, until.output
    assert 0 < json.loads(until.output)["total"]["requests"] < 6000

    text = runner.invoke(main, args)
    assert text.exit_code == 0 and "windows-update" in text.output and "total" in text.output

    page = tmp_path / "r.html"
    html = runner.invoke(main, [*args, "--format", "html", "--out", str(page)])
    assert html.exit_code == 0, html.output
    assert page.read_text().count("<svg") == 3

    missing = runner.invoke(main, ["report", "--access-log", str(tmp_path / "nope.log")])
    assert missing.exit_code == 2 and "nope.log" in missing.output
    bad_since = runner.invoke(main, [*args, "--since", "soon"])
    assert bad_since.exit_code == 2 and "--since" in bad_since.output


def test_html_without_matplotlib_keeps_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from patchcache.report.render_html import NO_CHARTS

    log = tmp_path / "access.log"
    write_file(log, 500)
    # As on a machine without matplotlib: importing the charts module fails.
    monkeypatch.setitem(sys.modules, "patchcache.report.charts", None)
    page = tmp_path / "r.html"
    done = CliRunner().invoke(
        main, ["report", "--access-log", str(log), "--format", "html", "--out", str(page)]
    )
    assert done.exit_code == 0, done.output
    html = page.read_text()
    assert "<svg" not in html
    assert "python3-matplotlib" in html and NO_CHARTS.split(":")[0] in html
    assert "windows-update" in html
