"""The squid.conf examples shipped in squid_conf_examples/, generated from one table.

`python -m patchcache.squidconf.examples DIR` rewrites them; the tests check the files on disk
are what this module generates, and that `squid -k parse` accepts each of them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_farm_front, render_squid_conf

BIN = "/usr/bin/patchcache"
RULES = Path("/etc/patchcache/rules.toml")
STATE = Path("/var/lib/patchcache")
ICAP = "icap://127.0.0.1:1344/respmod"

FULL = ConfOptions(
    patchcache_bin=BIN,
    rules_path=RULES,
    state_dir=STATE,
    icap_url=ICAP,
    head_via="http://127.0.0.1:3128",
)
STORE_ID_ONLY = ConfOptions(patchcache_bin=BIN, rules_path=RULES)
PARENT_URL = "http://parent.cache.example:3128"
CHILD = ConfOptions(
    patchcache_bin=BIN, rules_path=RULES, state_dir=STATE, icap_url=ICAP, parent=PARENT_URL
)
BACKS = tuple(f"http://back{n}.cache.example:3128" for n in (1, 2, 3))

_COMMON_TAIL = """
http_access allow localhost
http_access allow localnet
http_access deny all

cache_dir ufs /var/spool/squid 200000 16 256
coredump_dir /var/spool/squid
"""


@dataclass(frozen=True, slots=True)
class Example:
    filename: str
    title: str
    command: str
    head: str
    opts: ConfOptions
    tail: str
    carp_backs: tuple[str, ...] = ()  # a farm front: rendered by render_farm_front


EXAMPLES = (
    Example(
        "single-proxy.conf",
        "A forward proxy with the whole patchcache suite attached.",
        f"patchcache squid-conf --rules {RULES} --state-dir {STATE} --icap {ICAP}",
        "http_port 3128\nacl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n",
        FULL,
        _COMMON_TAIL,
    ),
    Example(
        "store-id-only.conf",
        "The smallest useful setup: one key per content, redirect/error guards.",
        f"patchcache squid-conf --rules {RULES}",
        "http_port 3128\nacl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n",
        STORE_ID_ONLY,
        _COMMON_TAIL,
    ),
    Example(
        "intercepting-proxy.conf",
        "A transparent proxy: port 3129 receives redirected port-80 traffic (iptables REDIRECT).",
        f"patchcache squid-conf --rules {RULES} --state-dir {STATE} --icap {ICAP}",
        "# Explicit port for admin tools and the prefetcher;\n"
        "# intercept port for redirected clients.\n"
        "http_port 3128\nhttp_port 3129 intercept\n"
        "acl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n",
        FULL,
        _COMMON_TAIL,
    ),
    Example(
        "two-tier-parent.conf",
        "The central cache of a two-tier hierarchy: whole suite; branches send misses here.",
        f"patchcache squid-conf --rules {RULES} --state-dir {STATE} --icap {ICAP}",
        "http_port 3128\nacl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n",
        FULL,
        _COMMON_TAIL,
    ),
    Example(
        "two-tier-child.conf",
        "A branch cache: whole suite with its own state; class downloads go to the parent, "
        "once per object (the branch fetches it whole and serves every range itself).",
        f"patchcache squid-conf --rules {RULES} --state-dir {STATE} --icap {ICAP} "
        f"--parent {PARENT_URL}",
        "http_port 3128\nacl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n",
        CHILD,
        _COMMON_TAIL,
    ),
    Example(
        "carp-farm-front.conf",
        "The front of a CARP farm: routes only; each back end runs single-proxy.conf.",
        f"patchcache squid-conf --rules {RULES} " + " ".join(f"--carp-back {url}" for url in BACKS),
        "http_port 3128\nacl localnet src 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n",
        STORE_ID_ONLY,
        _COMMON_TAIL,
        carp_backs=BACKS,
    ),
)


def render_example(example: Example) -> str:
    if example.carp_backs:
        snippet = render_farm_front(load_rules(), example.carp_backs)
    else:
        snippet = render_squid_conf(load_rules(), example.opts)
    return (
        f"# {example.title}\n"
        f"# The patchcache block is the output of:\n#   {example.command}\n\n"
        f"{example.head}\n{snippet}{example.tail}"
    )


def write_examples(directory: Path) -> list[Path]:
    written = []
    for example in EXAMPLES:
        path = directory / example.filename
        path.write_text(render_example(example))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "squid_conf_examples")):
        print(path)
