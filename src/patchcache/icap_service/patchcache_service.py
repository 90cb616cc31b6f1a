"""RESPMOD decisions: per-class maximum object size and first sight of ranged downloads.

Squid has one global `maximum_object_size` (docs/squid-behaviour.md, "A maximum object size
per class"). `patchcache squid-conf` raises it to the largest class limit and adds
`store_miss deny pc_nostore` with `acl pc_nostore rep_header X-PatchCache-Store ^no`; this service
sees every miss response of the classes' hosts before Squid stores it and adds that header (ICAP
206, `use-original-body=0`: the body never passes through Python) when:

- the URL's class does not allow caching, or
- the object's total size is over its class limit (200: Content-Length; 206: the total of
  `Content-Range: bytes a-b/TOTAL`), or
- the size is unknown (chunked, no length) and the class limit is below Squid's own global limit,
  which would otherwise be the only check, unless the store-ID helper expanded the request
  (`X-PC-Expand: 1`): it does so only for an object whose recorded size is within the limit.

A response Squid will not store (patchcache.cacheability: `Vary: *`, or `no-store` or `private`
unless the class is pinned) is never recorded, and parks a record made while the object's
answers were storable (`record_unstorable`): expanded, every range would fetch it whole again.
A 206 of a class that allows prefetch, with a known total within the limit, that Squid will store
is the *first sight* of a ranged download: the object is recorded in the shared state
and one prefetch job queued (`StateStore.record_first_sight` deduplicates across processes), due
`prefetch_delay` seconds later: the record makes the store-ID helper expand the clients' next ranges
at once, so the clients' own requests usually fill the object and the prefetcher then only has
to verify it. A HEAD's cacheable 200 (BITS asks one before its ranges) is a first sight too, for
classes that expand on first sight. An over-limit 206 is recorded as too big so the store-ID
helper never asks Squid to expand it.
No answer depends on a write's outcome: `patchcache icap` passes a `QueuedStateWriter`
(state_writer.py), so the writes wait on a thread of their own, never on the event loop.

Classes are found with the same compiled rules as the store-ID helper, from the request URL.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from patchcache.cacheability import uncacheable_reason
from patchcache.helpers.head_probe import judge
from patchcache.icap_service.decision import (
    AddResponseHeaders,
    NoModification,
    ReqmodDecision,
    RespmodDecision,
)
from patchcache.icap_service.protocol import Headers, RequestHead
from patchcache.icap_service.service_interface import IcapMethod
from patchcache.rules import CompiledRules
from patchcache.rules.model import ExpandAfter
from patchcache.state_ports import FirstSightRecorder

if TYPE_CHECKING:
    from patchcache.metrics.icap import IcapCounters

# Decision slots of patchcache.metrics.icap (not imported here: it imports prometheus_client).
_STORE, _REFUSE, _FIRST_SIGHT, _BYPASS = 0, 1, 2, 3

log = logging.getLogger(__name__)

MARK_HEADER = "X-PatchCache-Store"
# The ICAP request header that carries the store-ID helper's `expand` note (squid-conf's
# `adaptation_meta`).
EXPAND_META = "X-PC-Expand"
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


_StateWriter = Callable[[str, str, str, int, str | None, str | None], bool]


@dataclass(frozen=True, slots=True)
class SizeInfo:
    """What a response says about the whole object's size."""

    total: int | None
    partial: bool


def object_size(status: int, headers: Headers) -> SizeInfo:
    """Total object size from a 200 (Content-Length) or a 206 (Content-Range total)."""
    if status == 206:
        found = _CONTENT_RANGE_RE.match(headers.get("Content-Range") or "")
        if found is None or found.group(3) == "*":
            return SizeInfo(None, True)
        return SizeInfo(int(found.group(3)), True)
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        return SizeInfo(None, False)
    length = (headers.get("Content-Length") or "").strip()
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if length.isascii() and length.isdigit():
        return SizeInfo(int(length), False)
    return SizeInfo(None, False)


def request_url(request: RequestHead) -> str | None:
    """The absolute URL of the encapsulated HTTP request (Squid sends absolute targets)."""
    http = request.http_request
    if http is None:
        return None
    target = http.target
    if "://" in target:
        return target
    host = http.headers.get("Host")
    if not host or not target.startswith("/"):
        return None
    return f"http://{host}{target}"


def squid_global_limit(rules: CompiledRules) -> int:
    """The `maximum_object_size` that `patchcache squid-conf` configures."""
    largest = max((c.max_object_size for c in rules.classes if c.rule.cache), default=0)
    return max(largest, rules.settings.default_max_object_size)


class PatchcacheService:
    """The ICAP service patchcache runs: RESPMOD on `/respmod`, a no-op REQMOD on `/reqmod`."""

    def __init__(
        self,
        rules: CompiledRules,
        state: FirstSightRecorder | None = None,
        *,
        clock: Callable[[], float] = time.time,
        counters: IcapCounters | None = None,
    ) -> None:
        self._rules = rules
        # Metrics: one shared-memory add per request (patchcache.metrics.icap), or nothing.
        self._count: Callable[[str, int], None] = (
            counters.count if counters is not None else _no_count
        )
        self._count_reqmod: Callable[[str, int], None] = (
            counters.count_reqmod if counters is not None else _no_count
        )
        # The rules are fixed for this object's life: its ISTag too. Asked per request.
        self._istag = f"pc-{rules.fingerprint}"
        self._clock = clock
        self._state = state
        self._global_limit = squid_global_limit(rules)
        self._paths: Mapping[str, IcapMethod] = {"/respmod": "RESPMOD", "/reqmod": "REQMOD"}

    @property
    def istag(self) -> str:
        # Differs whenever the effective rules differ, so Squid drops cached OPTIONS.
        return self._istag

    @property
    def service_paths(self) -> Mapping[str, IcapMethod]:
        return self._paths

    def reqmod(self, request: RequestHead) -> ReqmodDecision:
        self._count_reqmod("", _BYPASS)
        return NoModification()

    def respmod(self, request: RequestHead) -> RespmodDecision:
        response = request.http_response
        url = request_url(request)
        if response is None or url is None:
            self._count("", _BYPASS)
            return NoModification()
        # key_for is match() without the Match object (the store-ID helper's fast path); the
        # two agree on class and key (tests/unit/test_rules_keys.py).
        found = self._rules.key_for(url)
        if found is None:
            self._count("", _BYPASS)
            return NoModification()  # ordinary traffic: Squid's own default limit applies
        cls, key = found
        if not cls.rule.cache:
            self._count(cls.name, _REFUSE)
            return _refuse(cls.name, "class does not cache")
        if response.status not in (200, 206):
            self._count(cls.name, _BYPASS)
            return NoModification()  # squid-conf's guards keep non-200/206 out of mapped keys
        size = object_size(response.status, response.headers)
        etag = response.headers.get("ETag")
        last_modified = response.headers.get("Last-Modified")
        if size.total is None:
            if (
                cls.max_object_size < self._global_limit
                and not size.partial
                and not _expanded_by_helper(request)
            ):
                self._count(cls.name, _REFUSE)
                return _refuse(cls.name, "size unknown")
            self._count(cls.name, _STORE)
            return NoModification()
        if size.total > cls.max_object_size:
            self._count(cls.name, _REFUSE)
            if self._state is not None:
                self._safely(
                    self._state.record_too_big,
                    key,
                    url,
                    cls.name,
                    size.total,
                    etag,
                    last_modified,
                )
            return _refuse(cls.name, f"{size.total} bytes over {cls.max_object_size}")
        rule = cls.rule
        if rule.expand_ranges and self._state is not None:
            unstorable = uncacheable_reason(
                response.status, response.headers.items, pinned=rule.freshness == "pin"
            )
            if unstorable is not None:
                self._park_unstorable(key, unstorable)
                self._count(cls.name, _STORE)
                return NoModification()
        after = rule.expand_after
        if size.partial and after is not None and self._state is not None and rule.prefetch:
            if rule.expand_ranges:
                self._demand(request, response.headers, key, url, cls.name, size.total, after)
            self._count(cls.name, _STORE)
            return NoModification()
        if (
            (size.partial or _is_head(request))
            and self._state is not None
            and cls.rule.prefetch
            and cls.rule.expand_ranges
            and (size.partial or cls.expands_at_first_sight)
            and (size.partial or _cacheable_head(response.status, response.headers))
        ):
            self._count(cls.name, _FIRST_SIGHT)
            self._safely(
                functools.partial(
                    self._state.record_first_sight,
                    due_at=self._clock() + self._rules.settings.prefetch_delay,
                ),
                key,
                url,
                cls.name,
                size.total,
                etag,
                last_modified,
            )
        else:
            self._count(cls.name, _STORE)
        return NoModification()

    def _demand(
        self,
        request: RequestHead,
        headers: Headers,
        key: str,
        url: str,
        class_name: str,
        total: int,
        after: ExpandAfter,
    ) -> None:
        """A ranged miss of a class that expands only after demand (`expand_after`): count it.
        The client is Squid's `X-Client-IP` (`icap_send_client_ip on`, squid-conf writes it)."""
        record = getattr(self._state, "record_demand", None)
        found = _CONTENT_RANGE_RE.match(headers.get("Content-Range") or "")
        if record is None or found is None:
            return
        client = (request.headers.get("X-Client-IP") or "-").strip()
        try:
            record(
                key,
                url,
                class_name,
                total,
                headers.get("ETag"),
                headers.get("Last-Modified"),
                client=client,
                first=int(found.group(1)),
                last=int(found.group(2)),
                clients_needed=after.clients,
                fraction=after.fraction,
                due_at=self._clock() + self._rules.settings.prefetch_delay,
            )
        except Exception as exc:
            log.warning("state update for %s failed: %s", key, exc)

    def _park_unstorable(self, key: str, reason: str) -> None:
        # Expanding what Squid will not store refetches the object from byte 0 for every
        # range: such an object is never recorded, and one recorded while its answers were
        # storable is parked, so the store-ID helper stops expanding it.
        log.info("%s not expanded: Squid would not store it (%s)", key, reason)
        park = getattr(self._state, "record_unstorable", None)
        if park is None:
            return
        try:
            park(key, reason)
        except Exception as exc:
            log.warning("state update for %s failed: %s", key, exc)

    @staticmethod
    def _safely(
        action: _StateWriter,
        key: str,
        url: str,
        name: str,
        total: int,
        etag: str | None,
        last_modified: str | None,
    ) -> None:
        # A state failure must not turn a response into an ICAP error: the object is then
        # simply not prefetched. One log line says why.
        try:
            action(key, url, name, total, etag, last_modified)
        except Exception as exc:
            log.warning("state update for %s failed: %s", key, exc)


def _no_count(class_name: str, decision: int) -> None:
    pass


def _expanded_by_helper(request: RequestHead) -> bool:
    """Whether the store-ID helper expanded this request (`expand=1`, passed on by Squid as
    `adaptation_meta X-PC-Expand`; a client cannot set a note). The helper says so only for an
    object whose recorded size is within its class limit, so a chunked whole response (no
    length in its head) of such an object may be stored: refusing it made every expanded
    range fetch the whole object again (one copy upstream per range)."""
    return (request.headers.get(EXPAND_META) or "").strip() == "1"


def _is_head(request: RequestHead) -> bool:
    http = request.http_request
    return http is not None and http.method == "HEAD"


def _cacheable_head(status: int, headers: Headers) -> bool:
    """A HEAD's response (BITS sends one before its ranges) teaches the size the same way a
    206's does, when it is a cacheable 200 (the store-ID helper's look-up judges alike)."""
    names = ("cache-control", "vary", "content-length")
    return judge(status, {name: headers.get(name) or "" for name in names}).size is not None


def _refuse(class_name: str, reason: str) -> AddResponseHeaders:
    value = f"no; class={class_name}; reason={reason}"
    return AddResponseHeaders(headers=((MARK_HEADER, value),), remove=(MARK_HEADER,))
