"""squid.conf ACL building blocks: dstdomain lists for host patterns, and size regexes.

Squid has no numeric comparison for header values, so a per-class size limit is a
`rep_header Content-Length` regex matching every integer above the limit. Host patterns
(`name` or `*.suffix`) become dstdomain entries without redundancy: Squid warns about, and
ignores, a name already covered by a `.domain` entry. A class's `trusted_networks` (IP-literal
hosts the helpers map like its named hosts) join its host ACL as `dst -n` entries.
"""

from __future__ import annotations

import ipaddress

from patchcache.rules import CompiledClass


def greater_than_regex(limit: int) -> str:
    """A regex matching decimal integers strictly greater than `limit` (no leading zeros)."""
    digits = str(limit)
    n = len(digits)
    alternatives = [f"[1-9][0-9]{{{n},}}"]  # more digits than the limit
    for i, char in enumerate(digits):
        if char == "9":
            continue
        prefix = digits[:i]
        higher = f"[{int(char) + 1}-9]" if int(char) < 8 else "9"
        rest = n - i - 1
        tail = f"[0-9]{{{rest}}}" if rest else ""
        alternatives.append(f"{prefix}{higher}{tail}")
    return "^(" + "|".join(alternatives) + ")$"


def dstdomains(classes: list[CompiledClass]) -> list[str]:
    """Squid dstdomain entries covering the classes' hosts, without redundant entries
    (Squid warns about, and ignores, a name already covered by a `.domain` entry)."""
    return dstdomain_entries([p for c in classes for p in c.rule.hosts])


def hosts_overlap(a: str, b: str) -> bool:
    """Whether two host patterns (exact names or `*.suffix`) can match one host name. A
    `*.suffix` also counts as matching `suffix` itself: its dstdomain entry `.suffix` does."""
    if a.startswith("*.") and b.startswith("*."):
        first, second = a[2:], b[2:]
        return first == second or first.endswith("." + second) or second.endswith("." + first)
    if a.startswith("*."):
        a, b = b, a
    if b.startswith("*."):
        return a == b[2:] or a.endswith(b[1:])
    return a == b


def dstdomain_entries(patterns: list[str]) -> list[str]:
    """Dstdomain entries for host patterns: exact names not under a kept `.suffix`, then the
    shortest suffixes (a suffix under another kept one is dropped)."""
    suffixes = sorted(
        {p[1:] for p in patterns if p.startswith("*.")},
        key=lambda s: (len(s), s),
    )
    kept_suffixes: list[str] = []
    for suffix in suffixes:
        if not any(suffix.endswith(other) for other in kept_suffixes):
            kept_suffixes.append(suffix)
    exact = sorted({p for p in patterns if not p.startswith("*.")})
    exact = [h for h in exact if not any(("." + h).endswith(s) for s in kept_suffixes)]
    return exact + kept_suffixes


def acl_lines(name: str, kind: str, values: list[str]) -> list[str]:
    """`acl NAME KIND ...` lines, six values a line (Squid ORs the values of repeated lines)."""
    return [f"acl {name} {kind} {' '.join(values[i : i + 6])}" for i in range(0, len(values), 6)]


def class_acl_lines(name: str, classes: list[CompiledClass]) -> list[str]:
    """ACL `name`: requests for the classes' hosts, and for IP-literal hosts in their
    `trusted_networks` (which the helpers map like the named hosts)."""
    networks = [n for c in classes for n in c.rule.trusted_networks]
    return hosts_and_networks_acl(name, dstdomains(classes), networks)


def hosts_and_networks_acl(name: str, domains: list[str], networks: list[str]) -> list[str]:
    """One ACL for dstdomain entries and networks. `dst -n` matches the address of an
    IP-literal URL and never resolves a name (a mismatch at once), so it stays as fast as
    dstdomain; `any-of` ORs the two, networks first: dstdomain tries a reverse DNS lookup for
    an address it does not list, and the first match ends the evaluation. Without networks: a
    plain dstdomain ACL, as before."""
    if not networks:
        return acl_lines(name, "dstdomain", domains)
    nets = collapsed_networks(networks)
    if not domains:
        return acl_lines(name, "dst -n", nets)
    return [
        *acl_lines(f"{name}_names", "dstdomain", domains),
        *acl_lines(f"{name}_nets", "dst -n", nets),
        f"acl {name} any-of {name}_nets {name}_names",
    ]


def collapsed_networks(networks: list[str]) -> list[str]:
    """Networks without overlaps: Squid warns about, and ignores, an entry inside another."""
    parsed = [ipaddress.ip_network(n) for n in networks]
    v4 = [n for n in parsed if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in parsed if isinstance(n, ipaddress.IPv6Network)]
    return [str(n) for n in (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))]


def networks_overlap(a: str, b: str) -> bool:
    """Whether two CIDR networks share an address."""
    first, second = ipaddress.ip_network(a), ipaddress.ip_network(b)
    return first.version == second.version and first.overlaps(second)
