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


TRUSTED_RULES = """
[classes.delivery-optimization]
trusted_networks = ["10.1.0.0/16", "10.1.2.0/24", "2001:db8::/32"]
[classes.local]
hosts = ["updates.corp.example"]
trusted_networks = ["10.1.0.0/16"]
path = '^/pkg/.+$'
max_object_size = "300 MiB"
"""


def test_trusted_networks_reach_the_helpers_like_the_class_hosts(tmp_path: Path) -> None:
    """IP-literal hosts in trusted networks are class traffic: the same ACL that lets the
    classes' host names reach the helper and the ICAP service covers them (`dst -n`: no DNS)."""
    rules = tmp_path / "rules.toml"
    rules.write_text(TRUSTED_RULES)
    opts = ConfOptions(state_dir=Path("/var/lib/pc"), icap_url="icap://127.0.0.1:1344/r")
    lines = render_squid_conf(load_rules(rules), opts).splitlines()
    # Overlapping networks collapsed (Squid warns about, and drops, an entry inside another).
    assert "acl pc_classes_nets dst -n 10.1.0.0/16 2001:db8::/32" in lines
    assert "acl pc_classes any-of pc_classes_nets pc_classes_names" in lines
    assert any(x.startswith("acl pc_classes_names dstdomain ") for x in lines)
    assert "store_id_access allow pc_classes" in lines
    assert "adaptation_access pc_respmod allow pc_classes" in lines
    # The smaller class's limit covers its network too; the DO class (larger limit) shares
    # that network, so with ICAP the exact per-path decision is left to the ICAP service.
    assert "acl pc_limit0_hosts_nets dst -n 10.1.0.0/16" in lines
    assert "acl pc_limit0_larger dst -n 10.1.0.0/16" in lines
    assert "store_miss deny pc_limit0_hosts !pc_limit0_larger pc_limit0_over" in lines


def test_without_trusted_networks_the_class_acl_is_plain_dstdomain() -> None:
    lines = _lines(ConfOptions())
    assert not any(" dst " in x or "any-of" in x for x in lines)
    assert any(x.startswith("acl pc_classes dstdomain ") for x in lines)
