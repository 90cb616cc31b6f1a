"""`patchcache selftest` as packagers and CI scripts run it: a real subprocess, both ways."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from patchcache.installation import console_script

pytestmark = pytest.mark.squid

EXPECTED_CHECKS = {
    "squid-program",
    "installation",
    "squid-conf-parses",
    "deployment-starts",
    "keys",
    "helper-garbage",
    "ranged-download-once",
    "class-limit",
    "default-limit",
    "digest-mismatch",
    "icap-bypass",
}


def run_selftest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(console_script()), "selftest", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        check=False,
    )


def test_selftest_passes_on_this_installation(tmp_path: Path) -> None:
    junit = tmp_path / "selftest.xml"
    done = run_selftest("--json", "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["passed"] is True
    names = {check["name"] for check in document["checks"]}
    assert names == EXPECTED_CHECKS
    assert all(check["passed"] and check["detail"] for check in document["checks"])
    ranged = next(c for c in document["checks"] if c["name"] == "ranged-download-once")
    assert "TCP_HIT" in ranged["detail"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == str(len(EXPECTED_CHECKS))
    assert suite.get("failures") == "0"
    assert len(suite.findall("testcase")) == len(EXPECTED_CHECKS)


def test_selftest_fails_with_a_squid_that_cannot_work(tmp_path: Path) -> None:
    junit = tmp_path / "selftest.xml"
    done = run_selftest("--squid", "/bin/false", "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("FAIL squid-program")
    assert "not a working Squid" in lines[0]
    assert "selftest FAILED" in lines[-1]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures", "0")) >= 1


def test_selftest_fails_when_squid_rejects_the_configuration(proxy_dir: Path) -> None:
    # Says it is Squid, but rejects every configuration, as a broken build or wrong version would.
    fake = proxy_dir / "squid"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-v" ]; then echo "Squid Cache: Version 6.1"; exit 0; fi\n'
        'echo "FATAL: Bungled squid.conf line 1" >&2; exit 1\n'
    )
    fake.chmod(0o755)
    done = run_selftest("--squid", str(fake), "--json")
    assert done.returncode == 1
    document = json.loads(done.stdout)
    by_name = {check["name"]: check for check in document["checks"]}
    assert by_name["squid-program"]["passed"]
    assert not by_name["squid-conf-parses"]["passed"]
    assert "Bungled" in by_name["squid-conf-parses"]["detail"]
    assert by_name["keys"]["detail"].startswith("not run")
