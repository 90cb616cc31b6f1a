"""Rendering of selftest results: text lines, JSON and JUnit XML (pure code)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from patchcache.selftest.report import (
    CheckResult,
    SelftestReport,
    text_lines,
    to_json,
    to_junit,
)

REPORT = SelftestReport(
    (
        CheckResult("keys", True, "6 variants -> 1 key", 0.5),
        CheckResult("icap-bypass", False, 'client got 502 <"&>', 1.25),
    ),
    seconds=2.0,
    squid="/usr/sbin/squid: Squid Cache: Version 5.7",
)


def test_passed_needs_every_check_and_at_least_one() -> None:
    assert not REPORT.passed
    assert SelftestReport((CheckResult("a", True, "x"),), 1.0, "s").passed
    assert not SelftestReport((), 1.0, "s").passed


def test_text_has_one_line_per_check_and_a_verdict() -> None:
    lines = text_lines(REPORT)
    assert lines[0] == "PASS keys (0.5s): 6 variants -> 1 key"
    assert lines[1].startswith("FAIL icap-bypass (1.2s)")
    assert lines[2].startswith("selftest FAILED: 1 passed, 1 failed")


def test_json_shape() -> None:
    document = json.loads(to_json(REPORT))
    assert document["passed"] is False
    assert [c["name"] for c in document["checks"]] == ["keys", "icap-bypass"]
    assert set(document["checks"][0]) >= {"name", "passed", "detail"}


def test_junit_counts_failures_and_escapes_details() -> None:
    root = ET.fromstring(to_junit(REPORT))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["keys", "icap-bypass"]
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == 'client got 502 <"&>'
    assert cases[0].find("failure") is None
