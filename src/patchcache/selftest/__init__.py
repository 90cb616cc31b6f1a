"""`patchcache selftest`: is this installation, with this Squid, doing its job?

For packagers and scripted regression checks. It needs only the installed package and a Squid
binary: it starts a throwaway Squid on a free loopback port with the suite attached exactly as
`patchcache squid-conf` generates it, serves update-like files from a local origin (update host
names are mapped to 127.0.0.1 in that Squid's own hosts file, so nothing leaves the machine),
runs each check and reports one line per check with its figures. It passes only if every check
passes; a Squid that cannot work fails the first checks with the reason and the rest as not run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial

from patchcache.errors import PatchcacheError
from patchcache.selftest.checks import (
    DEPLOYMENT_CHECKS,
    Bench,
    check_config_parses,
    check_installation,
    check_squid_program,
)
from patchcache.selftest.report import CheckResult, SelftestReport, text_lines, to_json, to_junit
from patchcache.testbed.squid import find_squid, new_workdir

__all__ = [
    "CheckResult",
    "SelftestReport",
    "run_selftest",
    "text_lines",
    "to_json",
    "to_junit",
]


def _timed(name: str, action: Callable[[], str]) -> CheckResult:
    started = time.monotonic()
    try:
        detail = action()
    except PatchcacheError as exc:
        return CheckResult(name, False, str(exc), time.monotonic() - started)
    except Exception as exc:  # a check that crashes is a failed check, never a traceback
        return CheckResult(name, False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    return CheckResult(name, True, detail, time.monotonic() - started)


def run_selftest(
    squid_binary: str | None = None,
    *,
    keep: bool = False,
    progress: Callable[[CheckResult], None] = lambda _result: None,
) -> SelftestReport:
    started = time.monotonic()
    results: list[CheckResult] = []

    def record(result: CheckResult) -> CheckResult:
        results.append(result)
        progress(result)
        return result

    if squid_binary is None:
        try:
            squid_binary = find_squid()
        except PatchcacheError as exc:
            record(CheckResult("squid-program", False, str(exc)))
            squid_binary = "squid"
    squid_line = squid_binary
    if not results:
        program = record(_timed("squid-program", lambda: check_squid_program(str(squid_binary))))
        if program.passed:
            squid_line = f"{squid_binary}: {program.detail}"
    record(_timed("installation", check_installation))

    workdir = new_workdir("selftest-")
    bench = Bench(workdir, squid_binary)
    try:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("squid-conf-parses", lambda: check_config_parses(bench)),
            ("deployment-starts", lambda: _start(bench)),
        ]
        steps += [(name, partial(check, bench)) for name, check in DEPLOYMENT_CHECKS]
        for name, action in steps:
            if _can_run(name, results):
                record(_timed(name, action))
            else:
                record(CheckResult(name, False, "not run: no working Squid deployment"))
    finally:
        bench.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return SelftestReport(
        tuple(results),
        time.monotonic() - started,
        squid_line,
        str(workdir) if keep else None,
    )


# Checks every later one depends on: once one fails, the rest cannot run.
_PREREQUISITES = ("squid-program", "installation", "squid-conf-parses", "deployment-starts")


def _can_run(name: str, results: list[CheckResult]) -> bool:
    return all(r.passed for r in results if r.name in _PREREQUISITES)


def _start(bench: Bench) -> str:
    bench.start()
    stack = bench.running
    return (
        f"Squid on {stack.proxy_url} with store-ID helper, ICAP service on port "
        f"{stack.icap_port} and prefetcher"
    )
