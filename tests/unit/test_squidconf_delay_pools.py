"""The delay-pool lines that hold prefetches to their rates in Squid."""

from __future__ import annotations

from pathlib import Path

from patchcache.rules import CompiledRules, load_rules
from patchcache.squidconf.delay_pools import PREFETCH_HEADER, render_delay_pools


def rules_with(tmp_path: Path, text: str) -> CompiledRules:
    path = tmp_path / "rules.toml"
    path.write_text("packs = []\n" + text)
    return load_rules(path)


def test_no_rates_no_lines(tmp_path: Path) -> None:
    assert (
        render_delay_pools(rules_with(tmp_path, '[classes.a]\nhosts = ["a.example.com"]\n')) == ""
    )


def test_global_rate_only_is_one_pool(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path, '[settings]\nprefetch_rate = "8 MiB/s"\n[classes.a]\nhosts = ["a.example.com"]\n'
    )
    text = render_delay_pools(rules)
    assert f"acl pc_prefetch req_header {PREFETCH_HEADER} ." in text
    assert "delay_pools 1\n" in text
    assert "delay_parameters 1 8388608/8388608\n" in text
    assert "delay_access 1 allow pc_prefetch\ndelay_access 1 deny all\n" in text


def test_class_pools_come_first_and_are_capped_by_the_global_rate(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path,
        '[settings]\nprefetch_rate = "4 MiB/s"\n'
        '[classes.fast]\nhosts = ["f.example.com"]\nprefetch_rate = "100 MiB/s"\n'
        '[classes.slow]\nhosts = ["s.example.com"]\nprefetch_rate = "1 MiB/s"\n'
        '[classes.off]\nhosts = ["o.example.com"]\nprefetch = false\nprefetch_rate = "1 MiB/s"\n'
        '[classes.other]\nhosts = ["x.example.com"]\n',
    )
    lines = render_delay_pools(rules).splitlines()
    assert f"acl pc_prefetch_fast req_header {PREFETCH_HEADER} ^fast$" in lines
    assert "delay_pools 3" in lines
    assert "delay_parameters 1 4194304/4194304" in lines  # capped at the global rate
    assert "delay_access 1 allow pc_prefetch_fast" in lines
    assert "delay_parameters 2 1048576/1048576" in lines
    assert "delay_access 2 allow pc_prefetch_slow" in lines
    assert "delay_access 3 allow pc_prefetch" in lines  # everything else
    assert not any("pc_prefetch_off" in line for line in lines)


def test_class_rates_without_a_global_rate(tmp_path: Path) -> None:
    rules = rules_with(
        tmp_path, '[classes.a]\nhosts = ["a.example.com"]\nprefetch_rate = "50 Mbit/s"\n'
    )
    lines = render_delay_pools(rules).splitlines()
    assert "delay_pools 1" in lines
    assert "delay_parameters 1 6250000/6250000" in lines
