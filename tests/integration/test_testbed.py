"""The testbed against a real Squid 5.7: mapped update hosts, byte counts, hits, lifecycle."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from support.fixtures import SquidFactory

from patchcache.testbed import (
    CorruptedContent,
    DownloadError,
    MiB,
    Origin,
    SquidInstance,
    SquidStartError,
    bits_download,
    http_request,
    run_clients,
    run_squid,
    squid_parse,
)
from patchcache.testbed.squid_logs import WaitTimedOut

pytestmark = pytest.mark.squid

WU_PATH = "/d/msdownload/update/software/secu/2024/01/windows10.0-kb5034441-x64.cab"
WU_HOST = "download.windowsupdate.com"
# The hand configuration that makes ranged downloads cost one copy (docs/squid-behaviour.md).
EXPAND_ALL = """
range_offset_limit none
quick_abort_min -1 KB
collapsed_forwarding on
maximum_object_size 1 GB
"""


def _children(parent: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X") and int(fields[1]) == parent:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_default_squid_passes_ranges_through_at_one_copy(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    squid = squid_factory()
    obj = origin.register(WU_PATH, 8 * MiB + 123)
    stats = bits_download(
        squid.proxy_url, origin.url(obj, host=WU_HOST), size=obj.size, verify=obj.content
    )
    assert stats.bytes_received == obj.size
    assert stats.statuses == (206,) * 9
    assert stats.connections == 1  # kept alive through the proxy
    assert origin.bytes_sent(obj.path) == obj.size  # exactly one copy upstream
    # Squid resolved the update host name through its hosts_file (there is no DNS here).
    assert all(record.host == f"{WU_HOST}:{origin.port}" for record in origin.requests(obj.path))
    entries = squid.wait_for_access_lines(9)
    assert [e.code for e in entries] == ["TCP_MISS/206"] * 9
    assert all(e.url == origin.url(obj, host=WU_HOST) for e in entries)


def test_expanded_ranges_three_sequential_clients_cost_one_copy(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    squid = squid_factory(EXPAND_ALL)
    obj = origin.register(WU_PATH, 16 * MiB)
    url = origin.url(obj, host=WU_HOST)
    first = bits_download(squid.proxy_url, url, size=obj.size, verify=obj.content)
    # The whole-object fill ends at the origin; then it is on disk.
    assert origin.wait_idle(obj.path, timeout=30)
    logged = len(squid.wait_for_access_lines(first.requests))
    second = bits_download(squid.proxy_url, url, size=obj.size, verify=obj.content)
    entries = squid.wait_for_access_lines(logged + second.requests)
    second_codes = {e.code for e in entries[logged : logged + second.requests]}
    assert second_codes == {"TCP_HIT/206"}
    bits_download(squid.proxy_url, url, size=obj.size, verify=obj.content)
    copies = origin.copies_sent(obj.path)
    assert 1.0 <= copies < 1.1, copies
    assert origin.request_count(obj.path) == 1


def test_expanded_ranges_concurrent_clients_share_one_fill(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    squid = squid_factory(EXPAND_ALL)
    obj = origin.register(WU_PATH, 16 * MiB)
    url = origin.url(obj, host=WU_HOST)
    results = run_clients(squid.proxy_url, [url] * 3, size=obj.size, verify=obj.content)
    assert [r.bytes_received for r in results] == [obj.size] * 3
    assert all(set(r.statuses) == {206} for r in results)
    copies = origin.copies_sent(obj.path)
    assert 1.0 <= copies < 1.5, copies


def test_url_variants_reach_one_origin_object(origin: Origin, squid_factory: SquidFactory) -> None:
    squid = squid_factory()
    obj = origin.register("/filestreamingservice/files/3f1e8a52-0c9a-4f7d-9d4e-0a1b2c3d4e5f", MiB)
    urls = [
        origin.url(obj, host=host, query=f"P1={n}&P4=sig{n}")
        for n, host in enumerate(
            ("tlu.dl.delivery.mp.microsoft.com", "dl.delivery.mp.microsoft.com")
        )
    ]
    run_clients(squid.proxy_url, urls, size=obj.size, chunk=256 * 1024, verify=obj.content)
    assert origin.copies_sent(obj.path) == 2.0  # no store-ID: each variant is its own object
    assert {r.query for r in origin.requests(obj.path)} == {"P1=0&P4=sig0", "P1=1&P4=sig1"}


def test_origin_peer_serves_real_update_urls_without_port(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    squid = squid_factory("maximum_object_size 64 MB", origin_peer_port=origin.port)
    obj = origin.register(WU_PATH, 2 * MiB)
    url = origin.url(obj, host=WU_HOST, with_port=False)
    assert url == f"http://{WU_HOST}{WU_PATH}"
    assert http_request(squid.proxy_url, url).body == obj.content.read(0, obj.size)
    ranged = http_request(squid.proxy_url, url, headers={"Range": "bytes=100-199"})
    assert ranged.status == 206 and ranged.body == obj.content.read(100, 100)
    assert [e.code for e in squid.wait_for_access_lines(2)] == ["TCP_MISS/200", "TCP_HIT/206"]
    assert origin.bytes_sent(obj.path) == obj.size


def test_unmapped_host_fails_without_leaving_loopback(squid_factory: SquidFactory) -> None:
    squid = squid_factory()
    reply = http_request(squid.proxy_url, "http://not-mapped.invalid/x", timeout=30)
    # The only name server is 127.0.0.1, where nothing answers: the lookup fails on loopback.
    assert reply.status in (502, 503)
    assert squid.wait_for_access_lines(1)[0].hierarchy == "HIER_NONE/-"
    # One transaction, one line: waiting for a second one fails loudly, naming what it awaited.
    expected = r"awaiting 2 access\.log entries; last seen: .*HIER_NONE"
    with pytest.raises(WaitTimedOut, match=expected):
        squid.wait_for_access_lines(2, timeout=0.5)


def test_verifier_catches_a_wrong_byte_through_squid(
    origin: Origin, squid_factory: SquidFactory
) -> None:
    squid = squid_factory()
    good = origin.register("/good.cab", 2 * MiB)
    bad = origin.register("/bad.cab", content=CorruptedContent(good.content, (MiB + 77,)))
    with pytest.raises(DownloadError, match=f"wrong byte at offset {MiB + 77}") as caught:
        bits_download(squid.proxy_url, origin.url(bad, host=WU_HOST), verify=good.content)
    assert caught.value.offset == MiB + 77


def test_rock_store_and_parallel_instances(origin: Origin, squid_factory: SquidFactory) -> None:
    ufs = squid_factory("maximum_object_size 64 MB")
    rock = squid_factory("maximum_object_size 64 MB", cache_type="rock", cache_size_mb=256)
    assert ufs.port != rock.port and 3128 not in (ufs.port, rock.port)
    assert ufs.workdir != rock.workdir and ufs.service_name != rock.service_name
    obj = origin.register("/shared.bin", 3 * MiB)
    for squid in (ufs, rock):
        url = origin.url(obj, host=WU_HOST)
        assert http_request(squid.proxy_url, url).status == 200
        assert http_request(squid.proxy_url, url).body == obj.content.read(0, obj.size)
        assert [e.code for e in squid.wait_for_access_lines(2)][-1] == "TCP_HIT/200"
    assert origin.copies_sent(obj.path) == 2.0


def test_stop_kills_helpers_and_bad_configs_fail_clearly(proxy_dir: Path) -> None:
    helper_conf = "url_rewrite_program /bin/sleep 600\nurl_rewrite_children 2 startup=2 idle=1\n"
    # /bin/sleep never reads its stdin, so it outlives Squid unless the testbed ends it.
    with run_squid(helper_conf) as squid:  # in a fresh workdir, deleted at stop
        pid = squid.pid
        assert pid is not None
        assert squid.wait_for_cache_log(r"helperOpenServers: Starting 2/2", timeout=10)
        helpers = [
            child
            for child in _children(pid)
            if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"(sleep)")
            or b"sleep" in Path(f"/proc/{child}/cmdline").read_bytes()
        ]
        assert len(helpers) == 2
    assert not any(_alive(helper) for helper in helpers)
    assert not squid.running
    assert not squid.workdir.exists()

    with pytest.raises(SquidStartError, match="no_such_directive"):
        SquidInstance("no_such_directive on", workdir=proxy_dir / "bad").start()

    conf = proxy_dir / "alone.conf"
    conf.write_text("http_port 127.0.0.1:1\nbogus_line here\n")
    assert squid_parse(conf).returncode != 0


def test_start_failure_carries_cache_log_tail(proxy_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        squid = SquidInstance("", workdir=proxy_dir / "busy", http_port=port, cache_type=None)
        with pytest.raises(SquidStartError, match=r"(?s)exited.*(Cannot open|Address already)"):
            squid.start()
    assert not squid.running


def test_reconfigure_applies_a_new_body(origin: Origin, squid_factory: SquidFactory) -> None:
    squid = squid_factory()
    obj = origin.register("/r.bin", 1000)
    url = origin.url(obj, host=WU_HOST)
    assert http_request(squid.proxy_url, url).status == 200
    squid.reconfigure("acl blocked dstdomain " + WU_HOST + "\nhttp_access deny blocked")
    assert http_request(squid.proxy_url, url).status == 403
    assert "http_access deny blocked" in squid.conf_path.read_text()
