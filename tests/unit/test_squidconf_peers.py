"""`squid-conf --parent` (a branch) and `--carp-back` (a farm's front): pure rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from patchcache.cli import main
from patchcache.errors import ConfigError
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_farm_front, render_squid_conf
from patchcache.squidconf.peers import farm_front_lines, parent_lines, peer_address


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://hq.example:3129", ("hq.example", 3129)),
        ("http://hq.example", ("hq.example", 3128)),
        ("hq.example:8080", ("hq.example", 8080)),
        ("http://127.0.0.1:3999/", ("127.0.0.1", 3999)),
    ],
)
def test_peer_address(url: str, expected: tuple[str, int]) -> None:
    assert peer_address(url, field="--parent") == expected


@pytest.mark.parametrize(
    "url",
    ["ftp://hq.example", "http://hq.example/x", "http://u:p@hq", "http://hq:99999", "http://"],
)
def test_bad_peer_url_names_the_option(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        peer_address(url, field="--parent")
    assert caught.value.field == "--parent"


def test_branch_keeps_the_whole_suite_and_goes_through_its_parent() -> None:
    opts = ConfOptions(
        state_dir=Path("/var/lib/pc"),
        icap_url="icap://127.0.0.1:1344/respmod",
        parent="http://hq.example:3128",
    )
    text = render_squid_conf(load_rules(), opts)
    assert "cache_peer hq.example parent 3128 0 no-query no-digest default name=pc_parent" in text
    assert "never_direct allow pc_classes" in text
    # The branch expands and learns sizes itself: one whole fetch per object on its link.
    assert "range_offset_limit none pc_expand" in text
    assert "icap_service pc_respmod" in text
    # The peer needs the class ACL, so it comes after its definition.
    assert text.index("acl pc_classes") < text.index("never_direct allow pc_classes")


def test_no_parent_no_peer_lines() -> None:
    assert "cache_peer" not in render_squid_conf(load_rules(), ConfOptions())
    assert parent_lines("http://hq:1")[1].startswith("cache_peer hq parent 1 ")


def test_farm_front_hashes_class_downloads_on_the_path() -> None:
    backs = ("http://b1:3128", "http://b2:3128", "http://b3:3128")
    text = render_farm_front(load_rules(), backs)
    for n, host in enumerate(("b1", "b2", "b3"), start=1):
        assert (
            f"cache_peer {host} parent 3128 0 no-query no-digest carp carp-key=path "
            f"name=pc_class_back{n}"
        ) in text
        assert f"cache_peer_access pc_class_back{n} allow pc_classes" in text
        assert f"cache_peer {host} parent 3128 0 no-query no-digest carp name=pc_back{n}" in text
        assert f"cache_peer_access pc_back{n} deny pc_classes" in text
    assert "never_direct allow all" in text
    assert "store_id_program" not in text  # the front only routes


@pytest.mark.parametrize(
    "backs", [("http://b1:3128",), ("http://b1:3128", "http://b1:3128"), ("http://b1", "ftp://b2")]
)
def test_farm_front_rejects_bad_back_lists(backs: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as caught:
        farm_front_lines(backs)
    assert caught.value.field == "--carp-back"


def test_cli_parent_and_carp_backs() -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["squid-conf", "--parent", "http://hq:3128", "--bin", "/bin/pc"])
    assert done.exit_code == 0, done.output
    assert "name=pc_parent" in done.output
    done = runner.invoke(main, ["squid-conf", "--carp-back", "b1:3128", "--carp-back", "b2:3128"])
    assert done.exit_code == 0, done.output
    assert "carp-key=path" in done.output
    done = runner.invoke(
        main, ["squid-conf", "--carp-back", "b1", "--carp-back", "b2", "--icap", "x"]
    )
    assert done.exit_code == 2 and "front runs no helper" in done.output
    done = runner.invoke(main, ["squid-conf", "--parent", "ftp://hq"])
    assert done.exit_code == 2 and "--parent" in done.output
