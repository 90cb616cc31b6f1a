"""Lines of `patchcache squid-conf` that carry a decision: helper overload, freshness per class."""

from __future__ import annotations

from pathlib import Path

from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf


def _lines(opts: ConfOptions) -> list[str]:
    return render_squid_conf(load_rules(), opts).splitlines()


def test_helper_pools_degrade_under_persistent_overload() -> None:
    lines = _lines(ConfOptions(url_rewrite=True, store_id_children=3, concurrency=10))
    children = [line for line in lines if line.startswith(("store_id_children", "url_rewrite_c"))]
    assert len(children) == 2
    for line in children:
        assert line.endswith("queue-size=60 on-persistent-overload=ERR"), line


def test_queue_size_without_concurrency() -> None:
    (line,) = [
        x for x in _lines(ConfOptions(concurrency=0, store_id_children=4)) if "_children" in x
    ]
    assert "queue-size=8" in line


def test_revalidated_classes_are_always_revalidated_and_pinned_ones_pinned(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('packs = ["windows-update", "antivirus"]\n')
    lines = render_squid_conf(load_rules(rules), ConfOptions()).splitlines()
    patterns = {
        line.split()[1]: line.split(maxsplit=2)[2]
        for line in lines
        if line.startswith("refresh_pattern ")
    }
    assert patterns["^http://av-kaspersky\\.patchcache\\.squid\\.internal/"] == "0 0% 0"
    assert patterns["^http://windows-update-path\\.patchcache\\.squid\\.internal/"] == "0 0% 0"
    pinned = patterns["^http://windows-update\\.patchcache\\.squid\\.internal/"]
    assert pinned.startswith("10080 100% 525600 ")
