"""The testbed Squid's config rendering (no Squid needed) and the bounded wait its logs use."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from patchcache.testbed.squid_config import ConfSettings, Layout, hosts_file_text, render_conf
from patchcache.testbed.squid_logs import (
    WaitTimedOut,
    parse_access_line,
    wait_until,
    wait_until_async,
)


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


def test_wait_until_awaiting_raises_naming_what_and_the_last_value_and_the_context() -> None:
    with pytest.raises(WaitTimedOut) as raised:
        wait_until(
            lambda: ["TCP_MISS/200"],
            lambda codes: len(codes) >= 2,
            timeout=0.05,
            interval=0.01,
            awaiting="two access.log lines",
            context=lambda: "cache.log tail",
        )
    assert str(raised.value) == (
        "timed out after 0.05 s awaiting two access.log lines; last seen: ['TCP_MISS/200']"
        "\ncache.log tail"
    )
    assert isinstance(raised.value, AssertionError)  # a failed expectation, as pytest shows it


def test_wait_until_shortens_a_long_last_value() -> None:
    with pytest.raises(WaitTimedOut, match=r"last seen: 'x{10}.*\.\.\. \(100002 characters\)$"):
        wait_until(lambda: "x" * 100_000, lambda text: not text, timeout=0, awaiting="nothing")


def test_wait_until_async_returns_the_value_once_the_loop_ran_the_awaited_task() -> None:
    async def scenario() -> list[int]:
        seen: list[int] = []
        later = asyncio.get_running_loop().call_later(0.05, seen.append, 1)
        try:
            return await wait_until_async(
                lambda: seen, bool, timeout=30, interval=0.01, awaiting="the callback"
            )
        finally:
            later.cancel()

    assert asyncio.run(scenario()) == [1]


def test_wait_until_async_raises_at_the_deadline() -> None:
    with pytest.raises(WaitTimedOut, match=r"awaiting a callback; last seen: 0$"):
        asyncio.run(wait_until_async(lambda: 0, bool, timeout=0.05, awaiting="a callback"))


def test_access_line() -> None:
    line = "1.0 5 127.0.0.1 TCP_HIT/206 100 GET http://h/x - HIER_NONE/- application/x"
    entry = parse_access_line(line)
    assert entry is not None and entry.code == "TCP_HIT/206"
    assert parse_access_line("not a line") is None
