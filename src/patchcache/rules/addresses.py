"""Trusted addresses: URLs whose host is an IP literal, and Connected Cache URLs.

A host name in a class's `hosts` is trusted because the vendor's DNS says who answers for it;
an IP address says nothing of the kind, and a key shared with the named hosts would let whoever
answers at that address fill every client's copy (cache poisoning). So IP literals are never
mapped unless the admin vouches for the addresses: a class's `trusted_networks` (CIDR) are the
networks of caches the admin knows serve the vendor's content, typically an ISP's or the
organisation's own Microsoft Connected Cache nodes, which Delivery Optimization reaches by
address. An IP-literal URL inside one of them gets the key the class's named hosts would give
the same path and query.

Connected Cache URLs carry the origin host in the query: Microsoft's own check of a node is
`http://<cache>/mscomtest/wuidt.gif?cacheHostOrigin=au.download.windowsupdate.com`, and a
Delivery Optimization download looks like
`http://<cache>/filestreamingservice/files/<guid>?P1=...&P4=...&cacheHostOrigin=dl.delivery.mp.microsoft.com`
(the origin's path and query, the origin host appended). Such a URL is mapped only when the
cache address is in the class's `trusted_networks`, the class opted in (`connected_cache`), and
the origin host is one of the class's `hosts`, checked like any URL host (ASCII before case
folding, no percent-encoding, no port, no user-info). The parameter is left out of the key: it
names where the cache fetches from, not the content. Exactly one `cacheHostOrigin` parameter is
accepted, spelled exactly so; an empty one, a second one or another spelling of its name
refuses the URL (two parsers could pick different ones).

Addresses are judged as Squid would connect to them: only dotted-quad IPv4 and bracketed IPv6
(`patchcache.rules.urls` refuses integer, octal and hex forms such as `167772161` or
`010.1.2.3`, which resolvers read differently), and an IPv4-mapped IPv6 address
(`[::ffff:10.1.2.3]`) is never trusted: write the IPv4 address.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from patchcache.rules.urls import authority_parts

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ORIGIN_PARAM: Final = "cacheHostOrigin"
_ORIGIN_PARAM_FOLDED: Final = ORIGIN_PARAM.lower()
# The widest networks an admin may vouch for: a shorter prefix is more likely a typo (0.0.0.0/0,
# 10.0.0.0/1) than a cache farm, and would trust addresses anyone can hold.
MIN_PREFIX: Final = {4: 8, 6: 16}
_IPV4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def check_trusted_network(text: str) -> IpNetwork:
    """One `trusted_networks` entry as a network, or ValueError saying what is wrong."""
    _address, slash, prefix = text.partition("/")
    if slash and not (prefix.isascii() and prefix.isdigit()):
        raise ValueError(f"trusted network {text!r}: write the prefix length, e.g. '10.1.0.0/16'")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"trusted network {text!r} is not a network in CIDR form: {exc}") from None
    shortest = MIN_PREFIX[network.version]
    if network.prefixlen < shortest:
        raise ValueError(
            f"trusted network {text!r} is wider than /{shortest}: list the caches' own networks"
        )
    if isinstance(network, ipaddress.IPv6Network) and network.overlaps(_IPV4_MAPPED):
        raise ValueError(
            f"trusted network {text!r} holds IPv4-mapped addresses: list the IPv4 network"
        )
    return network


def trusted_address(host: str) -> IpAddress | str:
    """The address of an IP-literal host (as `split_parts` gives it), or why it is never trusted."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"host {host!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        mapped = address.ipv4_mapped
        return f"IPv4-mapped IPv6 address {host} ({mapped}) is never trusted: write {mapped}"
    return address


def in_networks(address: IpAddress, networks: tuple[IpNetwork, ...]) -> bool:
    return any(address in network for network in networks if network.version == address.version)


def connected_cache_origin(query: str | None) -> tuple[str, str | None] | str | None:
    """For a Connected Cache query: (origin host, the query without its cacheHostOrigin
    parameter). None when the query has no such parameter; the reason when it is refused."""
    # A cheap test first: most queries (DO tokens) have no parameter name containing "origin".
    if not query or "origin" not in query.lower():
        return None
    kept: list[str] = []
    origins: list[str] = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if not (name.isascii() and name.lower() == _ORIGIN_PARAM_FOLDED):
            kept.append(part)
            continue
        if name != ORIGIN_PARAM:
            return f"parameter {name!r} is not spelled {ORIGIN_PARAM!r}"
        origins.append(value if equals else "")
    if not origins:
        return None
    if len(origins) > 1:
        return f"{len(origins)} {ORIGIN_PARAM} parameters (exactly one is accepted)"
    value = origins[0]
    if not value:
        return f"empty {ORIGIN_PARAM}"
    parts = authority_parts(value)
    if isinstance(parts, str):
        return f"{ORIGIN_PARAM} {value!r}: {parts}"
    host, port, is_ip = parts
    if is_ip:
        return f"{ORIGIN_PARAM} {value!r} is an address, not a host name a class trusts"
    if port is not None or value.endswith(":"):
        return f"{ORIGIN_PARAM} {value!r}: a port is not part of an origin host"
    return host, "&".join(kept) or None
