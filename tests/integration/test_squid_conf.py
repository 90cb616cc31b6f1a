"""Every shipped example and every generated snippet is accepted by the real `squid -k parse`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from patchcache.installation import console_script
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.squidconf.acls import greater_than_regex
from patchcache.squidconf.examples import EXAMPLES, render_example

pytestmark = pytest.mark.squid
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "squid_conf_examples"
# Squid warns on purpose about refresh_pattern overrides of pinned classes; nothing else may warn.
_ALLOWED_WARNING = re.compile(r"WARNING: use of '[a-z-]+' in 'refresh_pattern' violates HTTP")


def _binary() -> str:
    return str(console_script())


def squid_parse(conf_text: str, tmp_path: Path) -> str:
    """Run `squid -k parse`; fail on a non-zero exit or on any unexpected warning or error."""
    conf = tmp_path / "squid.conf"
    conf.write_text(conf_text.replace("/usr/bin/patchcache", _binary()))
    done = subprocess.run(
        ["squid", "-k", "parse", "-f", str(conf)], capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    bad = [
        line
        for line in output.splitlines()
        if re.search(r"ERROR|FATAL|WARNING|BUNGLED", line) and not _ALLOWED_WARNING.search(line)
    ]
    assert not bad, "\n".join(bad)
    return output


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.filename)
def test_example_is_current_and_parses(example: object, tmp_path: Path) -> None:
    from patchcache.squidconf.examples import Example

    assert isinstance(example, Example)
    on_disk = (EXAMPLES_DIR / example.filename).read_text()
    assert on_disk == render_example(example), (
        f"{example.filename} is stale: run "
        "`python -m patchcache.squidconf.examples squid_conf_examples`"
    )
    squid_parse(on_disk, tmp_path)


@pytest.mark.parametrize(
    "opts",
    [
        ConfOptions(),
        ConfOptions(state_dir=Path("/var/lib/pc")),
        ConfOptions(
            state_dir=Path("/var/lib/pc"),
            icap_url="icap://127.0.0.1:1344/respmod",
            icap_bypass=False,
            url_rewrite=True,
            head_via="http://127.0.0.1:3999",
            concurrency=0,
            store_id_children=1,
        ),
        ConfOptions(
            state_dir=Path("/var/lib/pc"),
            icap_url="icap://127.0.0.1:1344/respmod",
            parent="http://127.0.0.1:3998",
        ),
    ],
    ids=["store-id", "expansion", "everything", "branch"],
)
def test_generated_snippet_parses(opts: ConfOptions, tmp_path: Path) -> None:
    snippet = render_squid_conf(load_rules(), opts)
    conf = (
        "http_port 127.0.0.1:3999\n"
        + snippet
        + "http_access allow localhost\nhttp_access deny all\n"
    )
    squid_parse(conf, tmp_path)


def test_cli_squid_conf_with_admin_rules_parses(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        """
packs = ["windows-update", "delivery-optimization"]
[settings]
default_max_object_size = "2 MiB"
prefetch_rate = "20 MiB/s"
[classes.windows-update]
prefetch_rate = "4 MiB/s"
[classes.local]
hosts = ["updates.corp.example", "10.9.8.7"]
allow_ip_literals = true
path = '^/pkg/.+$'
max_object_size = "300 MiB"
"""
    )
    done = subprocess.run(
        [
            _binary(),
            "squid-conf",
            "--rules",
            str(rules),
            "--state-dir",
            str(tmp_path / "st"),
            "--icap",
            "icap://127.0.0.1:1344/respmod",
            "--url-rewrite",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "store_id_bypass off" in done.stdout
    assert "updates.corp.example" in done.stdout
    assert "delay_parameters 1 4194304/4194304" in done.stdout
    squid_parse("http_port 127.0.0.1:3999\n" + done.stdout, tmp_path)


def test_trusted_networks_snippet_parses(tmp_path: Path) -> None:
    """`dst -n` and `any-of` ACLs for trusted networks, overlapping ones included: no warning."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        """
[classes.delivery-optimization]
trusted_networks = ["10.1.0.0/16", "10.1.2.0/24", "2001:db8::/32", "127.0.0.0/8"]
[classes.local]
hosts = ["updates.corp.example"]
trusted_networks = ["10.1.0.0/16", "192.0.2.0/24"]
path = '^/pkg/.+$'
max_object_size = "300 MiB"
"""
    )
    opts = ConfOptions(
        state_dir=Path("/var/lib/pc"),
        icap_url="icap://127.0.0.1:1344/respmod",
        url_rewrite=True,
        head_via="http://127.0.0.1:3999",
    )
    snippet = render_squid_conf(load_rules(rules), opts)
    assert "acl pc_classes any-of pc_classes_nets pc_classes_names" in snippet
    squid_parse("http_port 127.0.0.1:3999\n" + snippet, tmp_path)


@pytest.mark.parametrize("limit", [0, 1, 9, 10, 99, 100, 1999, 8388608, 4294967296])
def test_greater_than_regex(limit: int) -> None:
    pattern = re.compile(greater_than_regex(limit))
    probes = set(range(0, 2100)) | {limit - 1, limit, limit + 1, limit * 10, 10 ** len(str(limit))}
    for value in probes:
        if value >= 0:
            assert bool(pattern.match(str(value))) == (value > limit), (limit, value)
