"""`patchcache squid-conf` report-log options: every variant passes the real `squid -k parse`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from patchcache.installation import console_script

pytestmark = pytest.mark.squid


@pytest.mark.parametrize(
    "options",
    [[], ["--no-report-log"], ["--report-log", "/srv/pc/report.log", "--no-keep-access-log"]],
    ids=["default", "no-report-log", "elsewhere"],
)
def test_squid_conf_report_log_variants_parse(options: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [str(console_script()), "squid-conf", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    has_log = "--no-report-log" not in options
    assert ("logformat patchcache pc1 " in done.stdout) is has_log
    conf = tmp_path / "squid.conf"
    conf.write_text("http_port 127.0.0.1:3999\n" + done.stdout)
    parsed = subprocess.run(
        ["squid", "-k", "parse", "-f", str(conf)], capture_output=True, text=True, timeout=60
    )
    output = parsed.stdout + parsed.stderr
    assert parsed.returncode == 0, output
    assert "ERROR" not in output and "FATAL" not in output, output
