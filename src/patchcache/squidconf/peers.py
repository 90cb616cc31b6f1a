"""squid.conf lines for more than one proxy: a branch under a parent, and the front of a CARP farm.

Tree (`patchcache squid-conf --parent URL`): the branch runs the whole suite like any other box
(its own state, ICAP service and prefetcher), so it learns each object's size from the first
ranged reply and then fetches the object whole, once, through its parent. The request the branch
sends up carries the client's original URL, so the parent's own store-ID helper maps it to the
same key: both levels keep one copy per content, and the parent's collapsed forwarding joins the
branch's whole fetch with its own fill. Class downloads never go direct (`never_direct`), or a
branch whose parent is slow would fetch from the origin behind the parent's back.

Farm front (`patchcache squid-conf --carp-back URL ...`): CARP picks a back end by hashing the
URL (Squid's carp.cc hashes the request URI or the parts `carp-key=` names, never the store-ID),
and the URL variants of one update differ in host (mirrors) and query (per-client signatures such
as Delivery Optimization's P1..P4, which must still reach the origin unchanged). For the classes'
hosts the front therefore hashes the path alone (`carp-key=path`): every host and query variant
of one object lands on the same back end, which keys it with its own store-ID helper and fetches
it once. Unrelated objects that share a path only share a back end (load, never content: each back
end keys by its own rules). Other traffic keeps CARP on the whole URL through a second set of
peer entries for the same back ends, so its load still spreads. The front keeps no copy of class
objects: the farm's copy is on the back end. Variants the rules merge but whose paths differ
(Windows Update's `/c/` and `/d/` prefixes) can still land on two back ends: one copy each.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from patchcache.errors import ConfigError


def peer_address(url: str, *, field: str) -> tuple[str, int]:
    """(host, port) of a peer given as `http://host[:port]` (port 3128 by default)."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or 3128
    except ValueError as exc:
        raise ConfigError(f"{url!r} is not a proxy URL: {exc}", field=field) from exc
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"{url!r} must be like http://host:port", field=field)
    if parts.query or parts.username or parts.password:
        raise ConfigError(f"{url!r} must be like http://host:port", field=field)
    return parts.hostname, port


def parent_lines(parent_url: str) -> list[str]:
    """The branch's parent: class downloads always go through it (needs `acl pc_classes`)."""
    host, port = peer_address(parent_url, field="--parent")
    return [
        "# Tier: class downloads go to the parent cache (it keys and fills them for every branch).",
        f"cache_peer {host} parent {port} 0 no-query no-digest default name=pc_parent",
        "never_direct allow pc_classes",
        "",
    ]


def farm_front_lines(backs: tuple[str, ...]) -> list[str]:
    """CARP over the back ends: path-only hashing for class hosts, whole-URL for the rest."""
    if len(backs) < 2:
        raise ConfigError("a CARP farm needs at least two back ends", field="--carp-back")
    addresses = [peer_address(url, field="--carp-back") for url in backs]
    if len(set(addresses)) != len(addresses):
        raise ConfigError("the same back end is listed twice", field="--carp-back")
    lines = [
        "# Farm: class downloads hashed on the path alone, so every host and query variant of an",
        "# object reaches the same back end (CARP hashes the URL, not the store-ID).",
    ]
    for number, (host, port) in enumerate(addresses, start=1):
        lines.append(
            f"cache_peer {host} parent {port} 0 no-query no-digest carp carp-key=path "
            f"name=pc_class_back{number}"
        )
        lines.append(f"cache_peer_access pc_class_back{number} allow pc_classes")
        lines.append(f"cache_peer_access pc_class_back{number} deny all")
    lines.append("# Other traffic: CARP on the whole URL over the same back ends.")
    for number, (host, port) in enumerate(addresses, start=1):
        lines.append(
            f"cache_peer {host} parent {port} 0 no-query no-digest carp name=pc_back{number}"
        )
        lines.append(f"cache_peer_access pc_back{number} deny pc_classes")
        lines.append(f"cache_peer_access pc_back{number} allow all")
    lines += [
        "never_direct allow all",
        "# The back end keeps the farm's copy; one at the front would be a second one.",
        "cache deny pc_classes",
        "",
    ]
    return lines
