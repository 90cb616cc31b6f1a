"""`patchcache report` over the logs a real Squid 5.7 writes with the generated config.

The config is what `patchcache squid-conf` gives an admin (its report log at
/var/log/squid/patchcache.log); the testbed moves that log into the Squid's own work directory.
Upstream traffic is counted at the origin and must equal, byte for byte, the report's
`upstream_bytes` from patchcache's log (`%<bs`), per class and for the traffic outside every
class; the same transactions read from the default access.log give the same request and byte
counts with the upstream figure marked as an estimate.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.fixtures import SquidFactory
from support.suite_stack import fetch_whole
from support.wu_fetches import WU_DIR

from patchcache.report.run import make_report
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.testbed import MiB, Origin, http_request
from patchcache.testbed.squid_logs import wait_for_lines
from patchcache.testbed.stack import patchcache_binary

pytestmark = pytest.mark.squid

SYSTEM_REPORT_LOG = Path("/var/log/squid/patchcache.log")


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def test_report_upstream_bytes_match_the_origin(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    system_log_before = _mtime(SYSTEM_REPORT_LOG)
    rules = load_rules(None)
    body = render_squid_conf(
        rules,
        ConfOptions(patchcache_bin=patchcache_binary(), store_id_children=2, concurrency=5),
    )
    assert "logformat patchcache" in body and f"access_log daemon:{SYSTEM_REPORT_LOG}" in body
    squid = squid_factory(body)
    report_log = squid.workdir / "logs" / "patchcache.log"

    wu = origin.register_digest_named(WU_DIR, 3 * MiB, seed="report", suffix=".msu")
    wu_c = wu.path.replace("/d/", "/c/", 1)
    origin.register(wu_c, content=wu.content, etag=wu.etag or False)
    other = origin.register("/pub/report/file.bin", 700_000)
    port = origin.port
    wu_urls = [
        f"http://download.windowsupdate.com:{port}{wu.path}",
        f"http://au.download.windowsupdate.com:{port}{wu_c}",  # same key: a hit
        f"http://download.windowsupdate.com:{port}{wu.path}",
    ]
    for target in wu_urls:
        reply = fetch_whole(squid.proxy_url, target, verify=wu.content)
        assert (reply.status, reply.length) == (200, wu.size)
    ranged = http_request(squid.proxy_url, wu_urls[1], headers={"Range": "bytes=0-99999"})
    assert ranged.status == 206
    other_url = f"http://mirror.example.com:{port}{other.path}"
    for _ in range(2):
        reply = fetch_whole(squid.proxy_url, other_url, verify=other.content)
        assert reply.status == 200

    lines = wait_for_lines(report_log, 6, timeout=15.0)
    assert len(lines) == 6, lines
    assert all(line.startswith("pc1 ") for line in lines), lines
    wu_upstream = origin.bytes_sent(wu.path) + origin.bytes_sent(wu_c)
    other_upstream = origin.bytes_sent(other.path)
    assert wu_upstream >= wu.size  # fetched at least once

    report = make_report([report_log], rules)
    assert report["lines"]["bad"] == 0
    assert report["lines"]["formats"] == {"patchcache": 6}
    wu_report = report["classes"]["windows-update"]
    assert wu_report["requests"] == 4
    assert wu_report["hit_requests"] >= 2
    assert wu_report["upstream_bytes_exact"] is True
    assert wu_report["upstream_bytes"] == wu_upstream
    assert wu_report["distinct_objects"] == 1
    assert report["other"]["requests"] == 2
    assert report["other"]["upstream_bytes"] == other_upstream
    assert report["total"]["upstream_bytes"] == origin.bytes_sent()
    assert report["total"]["upstream_bytes_exact"] is True
    assert not report["estimates"]

    # The default log of the same Squid: the same requests and bytes, upstream estimated.
    native = make_report([squid.access_log_path], rules)
    assert native["lines"]["formats"] == {"squid": 6}
    for name in ("requests", "hit_requests", "bytes_to_clients", "hit_bytes"):
        assert native["classes"]["windows-update"][name] == wu_report[name], name
        assert native["other"][name] == report["other"][name], name
    assert native["total"]["upstream_bytes_exact"] is False
    assert native["estimates"]

    # The command an admin runs.
    done = subprocess.run(
        [patchcache_binary(), "report", "--access-log", str(report_log), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    from_cli = json.loads(done.stdout)
    assert from_cli["classes"]["windows-update"]["upstream_bytes"] == wu_upstream
    # The throwaway Squid never wrote the system's report log.
    assert _mtime(SYSTEM_REPORT_LOG) == system_log_before
