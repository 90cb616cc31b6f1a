"""The URL-rewrite helper's decision: presence, in the manner of an enterprise content network.

Squid's `url_rewrite_program` gets the URL and the extras (by default
`%>a/%>A %un %>rm myip=%la myport=%lp`, so the first extra starts with the client address).

- A client in a subnet that a `[[presence]]` site maps is sent to that site's cache with
  `OK status=302 url="..."` (same path and query), so branch offices pull from the nearest cache.
- Otherwise a class with a `preferred_mirror` has its downloads rewritten to that mirror
  (`OK rewrite-url="..."`): every variant then hits the same upstream.
- Anything else is `ERR`: no change.

Only URLs a class matches are ever redirected: the helper is no open redirector. A URL already on
the target host is left alone, so a site's own cache fetching through this proxy cannot loop.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from patchcache.helpers.protocol import Err, HelperRequest, Ok
from patchcache.helpers.store_id import AnswerCache
from patchcache.rules import CompiledRules, Match

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class _Site:
    networks: tuple[IpNetwork, ...]
    cache_url: str
    authority: str
    classes: frozenset[str]


def client_address(extras: tuple[str, ...]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client IP from the extras: a `client=IP` token, else the first token's `IP/fqdn`."""
    candidates = [e[7:] for e in extras if e.startswith("client=")]
    if extras:
        candidates.append(extras[0].split("/", 1)[0])
    for text in candidates:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            continue
    return None


class UrlRewriteAnswerer:
    """Callable answering one URL-rewrite request."""

    def __init__(self, rules: CompiledRules) -> None:
        self._cache = AnswerCache(rules, rules.settings.answer_cache_size)
        self._sites = tuple(
            _Site(
                networks=tuple(ipaddress.ip_network(n) for n in site.subnets),
                cache_url=site.cache_url,
                authority=urlsplit(site.cache_url).netloc.lower(),
                classes=frozenset(site.classes),
            )
            for site in rules.presence
        )

    def __call__(self, request: HelperRequest) -> Ok | Err:
        found = self._cache.match(request.url)
        if found is None or not found.cls.rule.cache:
            return Err()
        authority = _authority(found)
        client = client_address(request.extras) if self._sites else None
        if client is not None:
            for site in self._sites:
                if site.classes and found.cls.name not in site.classes:
                    continue
                if any(client in net for net in site.networks if net.version == client.version):
                    if authority == site.authority:
                        return Err()
                    return Ok((("status", "302"), ("url", site.cache_url + _path_query(found))))
        mirror = found.cls.rule.preferred_mirror
        if mirror is not None and urlsplit(mirror).netloc.lower() != authority:
            return Ok((("rewrite-url", mirror + _path_query(found)),))
        return Err()


def _authority(found: Match) -> str:
    url = found.url
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port is not None else host


def _path_query(found: Match) -> str:
    query = found.url.query
    return found.url.path + (f"?{query}" if query is not None else "")
