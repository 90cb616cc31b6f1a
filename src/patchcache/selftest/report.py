"""Results of `patchcache selftest` and their three renderings: text lines, JSON, JUnit XML.

Pure code: no I/O beyond returning strings. The JUnit document follows the common subset every
CI system reads (Jenkins, GitLab, GitHub actions' reporters): one ``testsuite`` with one
``testcase`` per check, a ``failure`` element for a failed check.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: its name, whether it passed, its figures or reason, how long it took."""

    name: str
    passed: bool
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class SelftestReport:
    checks: tuple[CheckResult, ...]
    seconds: float
    squid: str  # the squid program and its version line
    workdir: str | None = None  # kept with --keep

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)


def text_lines(report: SelftestReport) -> list[str]:
    lines = [
        f"{'PASS' if c.passed else 'FAIL'} {c.name} ({c.seconds:.1f}s): {c.detail}"
        for c in report.checks
    ]
    failed = sum(not c.passed for c in report.checks)
    verdict = "passed" if report.passed else "FAILED"
    lines.append(
        f"selftest {verdict}: {len(report.checks) - failed} passed, {failed} failed "
        f"in {report.seconds:.1f}s ({report.squid})"
    )
    if report.workdir:
        lines.append(f"work directory kept: {report.workdir}")
    return lines


def to_json(report: SelftestReport) -> str:
    document = {
        "passed": report.passed,
        "seconds": round(report.seconds, 2),
        "squid": report.squid,
        "checks": [
            {
                "name": c.name,
                "passed": c.passed,
                "detail": c.detail,
                "seconds": round(c.seconds, 2),
            }
            for c in report.checks
        ],
    }
    if report.workdir:
        document["workdir"] = report.workdir
    return json.dumps(document, indent=2)


def to_junit(report: SelftestReport) -> str:
    failures = sum(not c.passed for c in report.checks)
    suite = ET.Element(
        "testsuite",
        {
            "name": "patchcache selftest",
            "tests": str(len(report.checks)),
            "failures": str(failures),
            "errors": "0",
            "skipped": "0",
            "time": f"{report.seconds:.3f}",
        },
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", {"name": "squid", "value": report.squid})
    for check in report.checks:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": "patchcache.selftest",
                "name": check.name,
                "time": f"{check.seconds:.3f}",
            },
        )
        if check.passed:
            ET.SubElement(case, "system-out").text = check.detail
        else:
            failure = ET.SubElement(case, "failure", {"message": check.detail[:500]})
            failure.text = check.detail
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")
