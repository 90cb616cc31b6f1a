"""The testbed Squid's config rendering (no Squid needed) and the bounded wait its logs use."""

from __future__ import annotations

import itertools
from pathlib import Path

from patchcache.testbed.squid_config import ConfSettings, Layout, hosts_file_text, render_conf
from patchcache.testbed.squid_logs import parse_access_line, wait_until


def test_the_config_is_base_then_the_callers_body_then_the_tail() -> None:
    layout = Layout(Path("/w"))
    settings = ConfSettings(port=4000, service_name="pctbx", run_as="proxy", origin_peer_port=81)
    lines = render_conf(layout, settings, "range_offset_limit none\n").splitlines()
    assert lines[1] == "http_port 127.0.0.1:4000"
    assert "pid_filename /w/run/squid.pid" in lines
    assert "cache_effective_user proxy" in lines
    assert "cache_dir ufs /w/cache 1024 16 64" in lines
    body = lines.index("range_offset_limit none")
    peer = next(i for i, line in enumerate(lines) if line.startswith("cache_peer 127.0.0.1"))
    assert lines.index("# --- caller config ---") < body < peer
    assert lines[-2:] == ["http_access allow localhost", "http_access deny all"]


def test_config_variants() -> None:
    settings = ConfSettings(
        port=1, service_name="s", run_as=None, cache_type="rock", allow_localhost=False
    )
    text = render_conf(Layout(Path("/w")), settings, "")
    assert "cache_effective_user" not in text
    assert "cache_dir rock /w/cache 1024\n" in text
    assert "http_access" not in text and "cache_peer" not in text
    no_disk = ConfSettings(port=1, service_name="s", run_as=None, cache_type=None)
    assert "cache_dir" not in render_conf(Layout(Path("/w")), no_disk, "")


def test_a_foreign_access_log_is_moved_into_the_workdir() -> None:
    body = "access_log daemon:/var/log/squid/patchcache.log patchcache\n"
    text = render_conf(
        Layout(Path("/w")), ConfSettings(port=1, service_name="s", run_as=None), body
    )
    assert "access_log stdio:/w/logs/patchcache.log patchcache" in text
    assert "/var/log" not in text


def test_hosts_file() -> None:
    assert hosts_file_text({"a.example": "127.0.0.2"}) == (
        "127.0.0.1 localhost\n127.0.0.2 a.example\n"
    )


def test_wait_until_stops_when_done_and_returns_the_last_value_at_the_deadline() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter), lambda n: n >= 3, timeout=30, interval=0) == 3
    assert wait_until(lambda: 0, lambda n: n > 0, timeout=0.05, interval=0.01) == 0


def test_access_line() -> None:
    line = "1.0 5 127.0.0.1 TCP_HIT/206 100 GET http://h/x - HIER_NONE/- application/x"
    entry = parse_access_line(line)
    assert entry is not None and entry.code == "TCP_HIT/206"
    assert parse_access_line("not a line") is None
