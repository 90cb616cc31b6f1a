"""Per-class counters over access-log entries, streaming, in bounded memory.

Attribution: a request belongs to the class the store-ID helper would give its URL
(`CompiledRules.key_for`, the helper's own fast path), and its object is that class's key. On
patchcache's own log line the store-ID note Squid really used names the key (and, through the
key's pseudo host, the class) directly. Everything else is "other", keyed by its URL.

Hits (`is_hit`): a `TCP_` result code containing `HIT` (TCP_HIT, TCP_MEM_HIT, TCP_IMS_HIT,
TCP_INM_HIT, TCP_CF_HIT, TCP_NEGATIVE_HIT, TCP_OFFLINE_HIT, with or without an `_ABORTED` or
`_TIMEDOUT` suffix), plus the revalidations whose body came from the cache:
TCP_REFRESH_UNMODIFIED (the origin answered 304), TCP_REFRESH_IGNORED and TCP_REFRESH_FAIL_OLD
(the origin failed, the stale copy was served). TCP_REFRESH_MODIFIED, TCP_CLIENT_REFRESH_MISS
and TCP_REFRESH_FAIL_ERR fetched (or failed to fetch) a new body: misses.

Upstream bytes: exact on patchcache's line (`%<bs`, body bytes read from the next hop);
on other lines estimated as the bytes sent to clients on misses (ignores header sizes, whole
objects fetched for a range, fetches a client aborted). Bytes saved: body bytes to clients minus
body bytes from upstream where exact, the bytes of hits where estimated.

Memory: counters per class and per hour of the log (a year is 8760 small lists). Objects are
counted exactly in a dictionary (key -> bytes, requests) up to `object_cap` keys per class;
past that the distinct count goes to a HyperLogLog (about 1 % error) and the dictionary is
pruned to its biggest objects, so top objects become approximate (a key pruned and seen again
restarts from zero). Both cases are flagged in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from patchcache.key_host import KEY_HOST_SUFFIX
from patchcache.report.hll import HyperLogLog
from patchcache.report.parse import (
    FORMAT_COMBINED,
    FORMAT_PATCHCACHE,
    FORMAT_SQUID,
    parse_fields,
)
from patchcache.rules import CompiledRules
from patchcache.rules.compiled import CompiledClass
from patchcache.rules.compiled import _stable_query as stable_query
from patchcache.rules.urls import split_parts

_HIT_REVALIDATIONS: Final = (
    "TCP_REFRESH_UNMODIFIED",
    "TCP_REFRESH_IGNORED",
    "TCP_REFRESH_FAIL_OLD",
)
OTHER: Final = "other"
HOUR: Final = 3600

# Indices of the counters kept per (class, hour).
REQUESTS, HIT_REQUESTS, BYTES, HIT_BYTES, UPSTREAM, SAVED, EXACT = range(7)
COUNTERS: Final = (
    "requests",
    "hit_requests",
    "bytes_to_clients",
    "hit_bytes",
    "upstream_bytes",
    "bytes_saved",
    "upstream_exact_requests",
)


def is_hit(code: str) -> bool:
    """Whether a `%Ss` result code means the body came from the cache (see the module doc)."""
    return code.startswith("TCP_") and ("HIT" in code or code.startswith(_HIT_REVALIDATIONS))


class Group:
    """Counters for one class (or for "other")."""

    __slots__ = (
        "current",
        "hll",
        "hour_end",
        "hour_start",
        "hours",
        "name",
        "object_cap",
        "objects",
        "pack",
        "prunes",
        "top_exact",
    )

    def __init__(self, name: str, pack: str | None, object_cap: int) -> None:
        self.name = name
        self.pack = pack
        self.hours: dict[int, list[int]] = {}
        self.objects: dict[str, list[int]] = {}  # key -> [bytes, requests]
        self.object_cap = object_cap
        self.hll: HyperLogLog | None = None
        self.top_exact = True
        self.prunes = 0
        # The counters of the hour the last line fell in, and its bounds.
        self.current: list[int] = []
        self.hour_start = self.hour_end = 0.0

    def switch_hour(self, ts: float) -> list[int]:
        hour = int(ts) // HOUR
        counts = self.hours.get(hour)
        if counts is None:
            counts = self.hours[hour] = [0] * len(COUNTERS)
        self.current = counts
        self.hour_start, self.hour_end = float(hour * HOUR), float((hour + 1) * HOUR)
        return counts

    def new_object(self, key: str) -> list[int]:
        """A new [bytes, requests] entry for `key`, pruning the table if it outgrew its cap."""
        if self.hll is not None:
            self.hll.add(key)
        obj = self.objects[key] = [0, 0]
        if len(self.objects) > self.object_cap:
            self.prune()
            obj = self.objects.setdefault(key, [0, 0])
        return obj

    def prune(self) -> None:
        """Called when `objects` outgrows its cap: keep the biggest half."""
        if self.hll is None:
            self.hll = HyperLogLog()
            for key in self.objects:
                self.hll.add(key)
        keep = sorted(self.objects.items(), key=lambda item: item[1][0], reverse=True)
        self.objects = dict(keep[: self.object_cap // 2])
        self.top_exact = False
        self.prunes += 1

    def totals(self) -> list[int]:
        total = [0] * len(COUNTERS)
        for counts in self.hours.values():
            for i, value in enumerate(counts):
                total[i] += value
        return total

    def distinct(self) -> tuple[int, bool]:
        if self.hll is None:
            return len(self.objects), True
        return max(self.hll.estimate(), len(self.objects)), False


@dataclass
class LineStats:
    read: int = 0
    counted: int = 0
    bad: int = 0
    outside_range: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)


class Aggregator:
    """Feed it lines; read `groups` and `stats` when done."""

    def __init__(
        self,
        rules: CompiledRules,
        packs: Mapping[str, str],
        *,
        since: float | None = None,
        until: float | None = None,
        object_cap: int = 50_000,
        memo_size: int = 65_536,
    ) -> None:
        self.rules = rules
        self.groups: dict[str, Group] = {
            cls.name: Group(cls.name, packs.get(cls.name), object_cap) for cls in rules.classes
        }
        self.other = Group(OTHER, None, object_cap)
        self.since = since if since is not None else float("-inf")
        self.until = until if until is not None else float("inf")
        self.stats = LineStats()
        # store-id or URL -> (group, its object's [bytes, requests] entry): one lookup per line
        # for both. Cleared whenever a group prunes its objects (entries would go stale).
        self._memo: dict[str, tuple[Group, list[int]]] = {}
        # A Delivery Optimization URL carries a fresh token (P1..P4) on every request, so a
        # memo of whole URLs alone would run the matcher for most of them. For a named host the
        # class depends on scheme, host and path only (CompiledRules._find), so URL-without-query
        # -> (group, key without query, class when the key ends with the stable query, else
        # None). Not for an IP-literal host: a Connected Cache URL's query (cacheHostOrigin)
        # decides its class and leaves its key, so those always go through the matcher.
        self._path_memo: dict[str, tuple[Group, str, CompiledClass | None]] = {}
        self._query_free = {
            cls.name for cls in rules.classes if cls.drop_all_query or "{query}" not in cls.rule.key
        }
        self._query_tail = {
            cls.name: cls
            for cls in rules.classes
            if cls.name not in self._query_free
            and cls.rule.key.endswith("{query}")
            and cls.rule.key.count("{query}") == 1
        }
        self._memo_size = memo_size
        self._hits: dict[str, bool] = {}

    def _attribute(self, url: str, store_id: str | None) -> tuple[Group, str, bool]:
        """The group and key of one request, and whether to memoise it by store-id or whole
        URL (not when `_path_memo` answers for the URL without its query: a per-request
        token would fill the memo with URLs seen once)."""
        group, key = self._attribute_uncached(url, store_id)
        name = group.name
        whole = (
            key is store_id
            or "?" not in url
            or (name not in self._query_free and name not in self._query_tail)
        )
        return group, key, whole

    def _attribute_uncached(self, url: str, store_id: str | None) -> tuple[Group, str]:
        if store_id is not None and store_id.startswith("http://"):
            host = store_id[7:].partition("/")[0]
            if host.endswith(KEY_HOST_SUFFIX):
                group = self.groups.get(host[: -len(KEY_HOST_SUFFIX)])
                if group is not None:
                    return group, store_id
        cut = url.find("?")
        if cut > 0:
            known = self._path_memo.get(url[:cut])
            if known is not None:
                group, base, tail = known
                if tail is None:
                    return group, base
                return group, base + stable_query(url[cut + 1 :], tail)
        found = self.rules.key_for(url)
        if found is None:
            return self.other, url
        cls, key = found
        answer = self.groups[cls.name], key
        if cut > 0 and (cls.name in self._query_free or cls.name in self._query_tail):
            bare = self.rules.key_for(url[:cut])
            tail = self._query_tail.get(cls.name)
            # Memoised only when the parts give back the very key the matcher made.
            if bare is not None and bare[0] is cls and not _host_is_address(url):
                rebuilt = bare[1] if tail is None else bare[1] + stable_query(url[cut + 1 :], tail)
                if rebuilt == key:
                    if len(self._path_memo) >= self._memo_size:
                        self._path_memo.clear()
                    self._path_memo[url[:cut]] = (answer[0], bare[1], tail)
        return answer

    def feed(self, lines: Iterable[str]) -> None:
        """Count a batch of lines (without newlines). Never raises on their content."""
        stats = self.stats
        memo = self._memo
        path_memo = self._path_memo
        memo_size = self._memo_size
        hits = self._hits
        formats = dict.fromkeys((FORMAT_SQUID, FORMAT_COMBINED, FORMAT_PATCHCACHE), 0)
        since, until = self.since, self.until
        read = bad = outside = 0
        for line in lines:
            read += 1
            entry = parse_fields(line)
            if entry is None:
                if line.strip():
                    bad += 1
                    if len(stats.bad_examples) < 5:
                        stats.bad_examples.append(repr(line[:120]))
                else:
                    read -= 1  # blank lines are not lines of a log
                continue
            ts, code, _status, size, _method, url, upstream, header, store_id, fmt = entry
            if ts < since or ts >= until:
                outside += 1
                continue
            formats[fmt] += 1
            found = memo.get(url if store_id is None else store_id)
            if found is None:
                # Inline the commonest miss: a class URL whose query holds only volatile
                # parameters (a DO token), its path already known.
                cut = url.find("?") if store_id is None else -1
                known = path_memo.get(url[:cut]) if cut > 0 else None
                whole = False
                if known is None:
                    group, key, whole = self._attribute(url, store_id)
                elif known[2] is None:
                    group, key = known[0], known[1]
                else:
                    group = known[0]
                    volatile_only = known[2].volatile_only_re
                    if volatile_only is not None and volatile_only.fullmatch(url, cut + 1):
                        key = known[1]
                    else:
                        key = known[1] + stable_query(url[cut + 1 :], known[2])
                obj = group.objects.get(key)
                if obj is None:
                    prunes = group.prunes
                    obj = group.new_object(key)
                    if group.prunes != prunes:
                        memo.clear()
                found = group, obj
                if whole:
                    if len(memo) >= memo_size:
                        memo.clear()
                    memo[url if store_id is None else store_id] = found
            group, obj = found
            # Literal indices (REQUESTS, HIT_REQUESTS, BYTES, HIT_BYTES, UPSTREAM, SAVED, EXACT):
            # module constants would cost a global lookup each, per line.
            if group.hour_start <= ts < group.hour_end:
                counts = group.current  # logs are in time order: usually the same hour
            else:
                counts = group.switch_hour(ts)
            hit = hits.get(code)
            if hit is None:
                hit = hits[code] = is_hit(code)
            counts[0] += 1
            counts[2] += size
            if upstream is not None:
                counts[6] += 1
                counts[4] += upstream
                counts[5] += size - (header or 0) - upstream
                if hit:
                    counts[1] += 1
                    counts[3] += size
            elif hit:
                counts[1] += 1
                counts[3] += size
                counts[5] += size
            else:
                counts[4] += size
            obj[0] += size
            obj[1] += 1
        counted = sum(formats.values())
        for name, value in formats.items():
            if value:
                stats.formats[name] = stats.formats.get(name, 0) + value
        stats.read += read
        stats.counted += counted
        stats.bad += bad
        stats.outside_range += outside

    def add_bad(self, count: int, example: str) -> None:
        """Lines the reader dropped before parsing (overlong junk)."""
        self.stats.read += count
        self.stats.bad += count
        if count and len(self.stats.bad_examples) < 5:
            self.stats.bad_examples.append(example)


def _host_is_address(url: str) -> bool:
    parts = split_parts(url)
    return not isinstance(parts, str) and parts[5]
