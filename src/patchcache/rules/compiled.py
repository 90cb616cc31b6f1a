"""The immutable, compiled form of the rules that every component is handed.

Matching a URL:
1. `split_url` refuses URLs whose host could be spoofed (see `patchcache.rules.urls`).
2. The host selects candidate classes through two dictionaries (exact names and `*.suffix`
   patterns), so most URLs are rejected without running a single regex. A host that is an IP
   address selects the classes whose `trusted_networks` hold it (or, for a Connected Cache URL,
   the classes trusting its `cacheHostOrigin` host): see `patchcache.rules.addresses`.
3. Candidates are tried in rule order; the first whose path regex matches the whole path wins.
   Path regexes run on RE2 (`patchcache.rules.regex`): linear time, whatever the admin wrote.
4. The key is rendered from the class's template, prefixed with a per-class pseudo host
   (`http://<class>.patchcache.squid.internal`) so that two classes can never share a key.

Keys are deliberately URL-shaped: Squid logs them and admins read them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from patchcache.key_host import class_key_root
from patchcache.rules.addresses import (
    IpAddress,
    IpNetwork,
    check_trusted_network,
    connected_cache_origin,
    in_networks,
    trusted_address,
)
from patchcache.rules.model import ClassRule, PresenceSite, Settings
from patchcache.rules.regex import PathMatch, PathRegex
from patchcache.rules.urls import SplitUrl, UrlRefused, split_parts, split_url

# Named groups whose value is case-insensitive content identity: lower-cased in keys.
CASELESS_GROUPS = frozenset({"digest", "guid"})
_TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
# Kinds of key template parts, decided once when the rules are compiled.
_PART_LITERAL, _PART_PATH, _PART_QUERY, _PART_GROUP, _PART_CASELESS_GROUP = range(5)


@dataclass(frozen=True, slots=True)
class CompiledClass:
    """One class, ready to match. `rule` is the validated source, kept for limits and flags."""

    name: str
    rule: ClassRule
    index: int
    path_re: PathRegex
    key_parts: tuple[tuple[int, str], ...]  # (one of the _PART_* kinds, literal or group name)
    volatile: frozenset[str]
    # Matches a query made of volatile parameters only (the usual DO query, P1..P4): one regex
    # call instead of splitting and filtering every parameter. None when nothing is volatile.
    volatile_only_re: re.Pattern[str] | None
    drop_all_query: bool
    key_prefix: str
    networks: tuple[IpNetwork, ...]  # trusted_networks, parsed

    @property
    def max_object_size(self) -> int:
        return self.rule.max_object_size

    @property
    def expands_at_first_sight(self) -> bool:
        """Whether a first sight makes the object expandable at once (no `expand_after`)."""
        return self.rule.expand_after is None


@dataclass(frozen=True, slots=True)
class AddressRoute:
    """The classes an IP-literal URL may reach. `tried` pairs each class looked at with the
    reason it may not take the URL (None: it may, if scheme and path fit); `query` is the query
    its key is made from (a Connected Cache URL's without `cacheHostOrigin`); `refused` says why
    no class was looked at."""

    tried: tuple[tuple[CompiledClass, str | None], ...]
    query: str | None
    refused: str | None = None
    what: str = ""  # what is trusted when a class takes the URL, for `explain`


@dataclass(frozen=True, slots=True)
class Match:
    """The answer for one URL: its class, its cache key, the content digest if the URL has one."""

    cls: CompiledClass
    key: str
    url: SplitUrl
    digest: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """What `patchcache explain` prints: the match, or why there is none."""

    url: str
    match: Match | None
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """Everything the components need from the rules, immutable and shareable."""

    classes: tuple[CompiledClass, ...]
    settings: Settings
    presence: tuple[PresenceSite, ...]
    sources: tuple[str, ...]
    fingerprint: str
    _exact: Mapping[str, tuple[CompiledClass, ...]] = field(repr=False)
    _suffix: Mapping[str, tuple[CompiledClass, ...]] = field(repr=False)
    # Classes that take IP-literal hosts at all (trusted_networks or allow_ip_literals).
    _by_address: tuple[CompiledClass, ...] = field(default=(), repr=False)
    # Derived from the two maps above and never from outside input alone: a memo of
    # host -> candidates, bounded. The rules themselves stay immutable.
    _host_memo: dict[str, tuple[CompiledClass, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _address_memo: dict[
        str, tuple[IpAddress | str, tuple[tuple[CompiledClass, str | None], ...]]
    ] = field(default_factory=dict, repr=False, compare=False)

    def by_name(self, name: str) -> CompiledClass | None:
        for cls in self.classes:
            if cls.name == name:
                return cls
        return None

    def candidates(self, host: str) -> tuple[CompiledClass, ...]:
        """Classes whose trusted hosts include `host`, in rule order."""
        memo = self._host_memo
        known = memo.get(host)
        if known is not None:
            return known
        found: list[CompiledClass] = list(self._exact.get(host, ()))
        start = host.find(".")
        while start >= 0:
            more = self._suffix.get(host[start + 1 :])
            if more:
                found.extend(more)
            start = host.find(".", start + 1)
        if len(found) > 1:
            by_index = {cls.index: cls for cls in found}
            found = [by_index[i] for i in sorted(by_index)]
        result = tuple(found)
        if len(memo) >= 8192:
            memo.clear()
        memo[host] = result
        return result

    def _address_of(
        self, host: str
    ) -> tuple[IpAddress | str, tuple[tuple[CompiledClass, str | None], ...]]:
        """The address of an IP-literal host (or why it is never trusted) and the classes a
        plain URL with that host may reach; memoised like `candidates`."""
        memo = self._address_memo
        known = memo.get(host)
        if known is not None:
            return known
        address = trusted_address(host)
        plain: tuple[tuple[CompiledClass, str | None], ...] = ()
        if not isinstance(address, str):
            plain = tuple((cls, _address_refusal(cls, address)) for cls in self._by_address)
        if len(memo) >= 8192:
            memo.clear()
        memo[host] = address, plain
        return address, plain

    def address_route(self, host: str, query: str | None) -> AddressRoute:
        """The classes an IP-literal `host` (as `split_parts` gives it) may reach with `query`."""
        address, plain = self._address_of(host)
        if isinstance(address, str):
            return AddressRoute((), query, address)
        origin = connected_cache_origin(query)
        if isinstance(origin, str):
            return AddressRoute((), query, f"Connected Cache URL refused: {origin}")
        if origin is not None:
            origin_host, rest = origin
            named = self.candidates(origin_host)
            if not named:
                return AddressRoute((), rest, f"origin host {origin_host!r} is trusted by no class")
            return AddressRoute(
                tuple((cls, _connected_cache_refusal(cls, address)) for cls in named),
                rest,
                what=f"Connected Cache at {host} for origin {origin_host!r}",
            )
        if not plain:
            return AddressRoute((), query, f"IP literal {host!r}: no class has trusted_networks")
        return AddressRoute(plain, query, what=f"address {host!r}")

    def _find(self, scheme: str, host: str, path: str) -> tuple[CompiledClass, PathMatch] | None:
        """The first class trusting the named `host` that allows the scheme and matches the path."""
        for cls in self.candidates(host):
            if scheme not in cls.rule.schemes:
                continue
            found = cls.path_re.fullmatch(path)
            if found is not None:
                return cls, found
        return None

    def _find_address(
        self, scheme: str, host: str, path: str, query: str | None
    ) -> tuple[CompiledClass, PathMatch, str | None] | None:
        """Like `_find` for an IP-literal host; also the query the key is made from."""
        route = self.address_route(host, query)
        for cls, refusal in route.tried:
            if refusal is None and scheme in cls.rule.schemes:
                found = cls.path_re.fullmatch(path)
                if found is not None:
                    return cls, found, route.query
        return None

    def key_for(self, url: str) -> tuple[CompiledClass, str] | None:
        """The class and key for `url`, without building a `Match`: the store-ID fast path."""
        parts = split_parts(url)
        if isinstance(parts, str):
            return None
        scheme, host, _port, path, query, is_ip = parts
        if is_ip:
            by_address = self._find_address(scheme, host, path, query)
            if by_address is None:
                return None
            cls, found, query = by_address
            return cls, _render_key(cls, path, query, found)
        hit = self._find(scheme, host, path)
        if hit is None:
            return None
        return hit[0], _render_key(hit[0], path, query, hit[1])

    def match(self, url: str) -> Match | None:
        """The class and key for `url`, or None when no class may map it."""
        try:
            split = split_url(url)
        except UrlRefused:
            return None
        if split.is_ip:
            by_address = self._find_address(split.scheme, split.host, split.path, split.query)
            if by_address is None:
                return None
            return _build_match(by_address[0], split, by_address[1], "", by_address[2])
        hit = self._find(split.scheme, split.host, split.path)
        return None if hit is None else _build_match(hit[0], split, hit[1], "", split.query)

    def explain(self, url: str) -> Explanation:
        """Like `match`, with the reasons a person needs to see."""
        try:
            split = split_url(url)
        except UrlRefused as exc:
            return Explanation(url, None, (f"refused: {exc}",))
        reasons: list[str] = []
        query = split.query
        trusted = f"host {split.host!r}"
        if split.is_ip:
            route = self.address_route(split.host, split.query)
            if route.refused is not None:
                return Explanation(url, None, (route.refused,))
            tried, query, trusted = route.tried, route.query, route.what
        else:
            tried = tuple((cls, None) for cls in self.candidates(split.host))
            if not tried:
                return Explanation(url, None, (f"host {split.host!r} is trusted by no class",))
        for cls, refusal in tried:
            if refusal is not None:
                reasons.append(f"{cls.name}: {refusal}")
                continue
            if split.scheme not in cls.rule.schemes:
                reasons.append(f"{cls.name}: scheme {split.scheme} not in {cls.rule.schemes}")
                continue
            found = cls.path_re.fullmatch(split.path)
            if found is None:
                reasons.append(f"{cls.name}: path does not match {cls.rule.path!r}")
                continue
            why = f"{trusted} trusted and path matches {cls.rule.path!r}"
            reasons.append(f"{cls.name}: {why}")
            return Explanation(url, _build_match(cls, split, found, why, query), tuple(reasons))
        return Explanation(url, None, tuple(reasons))


def _address_refusal(cls: CompiledClass, address: IpAddress) -> str | None:
    """Why `cls` may not take a URL whose host is `address` (None: it may)."""
    if cls.rule.allow_ip_literals:  # the older form: addresses listed in `hosts`, each exactly
        if str(address) in cls.rule.hosts:
            return None
        return f"{address} is not listed in hosts (allow_ip_literals)"
    if in_networks(address, cls.networks):
        return None
    return f"{address} is not in trusted_networks {list(cls.rule.trusted_networks)}"


def _connected_cache_refusal(cls: CompiledClass, address: IpAddress) -> str | None:
    """Why `cls` may not take a Connected Cache URL from cache `address` (None: it may)."""
    if not cls.rule.connected_cache:
        return "connected_cache is off"
    if not in_networks(address, cls.networks):
        return (
            f"cache address {address} is not in trusted_networks {list(cls.rule.trusted_networks)}"
        )
    return None


def _build_match(
    cls: CompiledClass, split: SplitUrl, found: PathMatch, why: str, query: str | None
) -> Match:
    digest = found.group("digest") if cls.rule.digest else None
    return Match(
        cls=cls,
        key=_render_key(cls, split.path, query, found),
        url=split,
        digest=_ascii_lower(digest) if digest else None,
        reason=why,
    )


def _ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only: str.lower() maps some non-ASCII letters onto ASCII ones
    (KELVIN SIGN -> "k"), which would give two different byte strings one key."""
    return text.lower() if text.isascii() else text


def _render_key(cls: CompiledClass, path: str, query: str | None, found: PathMatch) -> str:
    key = cls.key_prefix
    for kind, text in cls.key_parts:
        if kind == _PART_LITERAL:
            key += text
        elif kind == _PART_GROUP:
            key += found.group(text) or ""
        elif kind == _PART_CASELESS_GROUP:
            key += _ascii_lower(found.group(text) or "")
        elif kind == _PART_PATH:
            key += path
        else:
            key += _stable_query(query, cls)
    return key


def _stable_query(query: str | None, cls: CompiledClass) -> str:
    """The query without volatile parameters and empty parts, in original order ('' when
    nothing is left). Empty parts ("a=1&&b=2", "a=1&") carry nothing: kept, they gave one object
    several keys, and a query of only volatile and empty parts a key ending in a bare "?"."""
    if not query or cls.drop_all_query:
        return ""
    volatile = cls.volatile
    if not volatile and "&&" not in query and query[0] != "&" and query[-1] != "&":
        return "?" + query
    if cls.volatile_only_re is not None and cls.volatile_only_re.fullmatch(query):
        return ""
    kept = [part for part in query.split("&") if part and part.partition("=")[0] not in volatile]
    return "?" + "&".join(kept) if kept else ""


def _compile_template(template: str) -> tuple[tuple[int, str], ...]:
    if not template.startswith(("/", "{")):
        template = "/" + template
    parts: list[tuple[int, str]] = []
    pos = 0
    for found in _TEMPLATE_RE.finditer(template):
        if found.start() > pos:
            parts.append((_PART_LITERAL, template[pos : found.start()]))
        parts.append((_placeholder_kind(found.group(1)), found.group(1)))
        pos = found.end()
    if pos < len(template):
        parts.append((_PART_LITERAL, template[pos:]))
    return tuple(parts)


def _volatile_only_re(volatile: frozenset[str]) -> re.Pattern[str] | None:
    if not volatile:
        return None
    names = "|".join(re.escape(name) for name in sorted(volatile))
    # Parameters split on "&", names end at "=" (a part without "=" is all name), as in
    # _stable_query; queries with empty parts ("a&&b") take the general path. The names are
    # escaped literals and every repetition starts with "&": linear on Python's engine.
    return re.compile(rf"(?:{names})(?:=[^&]*)?(?:&(?:{names})(?:=[^&]*)?)*")


def _placeholder_kind(name: str) -> int:
    if name == "path":
        return _PART_PATH
    if name == "query":
        return _PART_QUERY
    return _PART_CASELESS_GROUP if name in CASELESS_GROUPS else _PART_GROUP


def compile_rules(
    classes: Mapping[str, ClassRule],
    settings: Settings,
    presence: tuple[PresenceSite, ...],
    sources: tuple[str, ...],
) -> CompiledRules:
    """Build the matcher. `classes` must already be in priority order and validated."""
    compiled: list[CompiledClass] = []
    exact: dict[str, list[CompiledClass]] = {}
    suffix: dict[str, list[CompiledClass]] = {}
    for index, (name, rule) in enumerate(
        (name, rule) for name, rule in classes.items() if rule.enabled
    ):
        volatile = frozenset(rule.volatile_params) - {"*"}
        parts = _compile_template(rule.key)
        cls = CompiledClass(
            name=name,
            rule=rule,
            index=index,
            path_re=PathRegex(rule.path),
            key_parts=parts,
            volatile=volatile,
            volatile_only_re=_volatile_only_re(volatile),
            drop_all_query="*" in rule.volatile_params,
            key_prefix=class_key_root(name),
            networks=tuple(check_trusted_network(text) for text in rule.trusted_networks),
        )
        compiled.append(cls)
        for pattern in rule.hosts:
            if pattern.startswith("*."):
                suffix.setdefault(pattern[2:], []).append(cls)
            else:
                exact.setdefault(pattern, []).append(cls)
    fingerprint = _fingerprint(classes, settings, presence)
    return CompiledRules(
        classes=tuple(compiled),
        settings=settings,
        presence=presence,
        sources=sources,
        fingerprint=fingerprint,
        _exact={host: tuple(items) for host, items in exact.items()},
        _suffix={host: tuple(items) for host, items in suffix.items()},
        _by_address=tuple(c for c in compiled if c.networks or c.rule.allow_ip_literals),
    )


def _fingerprint(
    classes: Mapping[str, ClassRule], settings: Settings, presence: tuple[PresenceSite, ...]
) -> str:
    """A short stable hash of the effective rules (the ICAP ISTag changes when this changes)."""
    document: dict[str, Any] = {
        "classes": [[name, rule.model_dump(mode="json")] for name, rule in classes.items()],
        "settings": settings.model_dump(mode="json"),
        "presence": [site.model_dump(mode="json") for site in presence],
    }
    blob = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
