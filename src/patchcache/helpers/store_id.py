"""The store-ID helper's decision: one cache key for every URL variant of the same content.

Squid asks for every request that `store_id_access` lets through (Squid's `store_id_program`
documentation). The answer is `OK store-id=KEY` for URLs a class maps and allows caching,
`ERR` (keep the URL as the key) otherwise. When a shared state directory is given, the answer
also carries `expand=1` while the object's whole size is known and allowed (queued, filling or
complete): Squid then fetches the whole object for that request (`range_offset_limit none
pc_expand`). Objects of unknown size are never expanded: that is how Squid's quadratic refetch
of over-size objects starts.

When the state cannot be read at run time (a locked, corrupt or vanished database), the answer
is the plain key without `expand=1`, exactly as when the state cannot be opened at start, and
one line per minute goes to stderr (cache.log). An exception would have become `BH`: Squid
retries it twice, and every update request lost its shared key.

Speed: a BITS client asks for the same URL once per range, hundreds of times, so the static part
of the answer (the match, and the reply already formatted) is kept in a bounded dictionary keyed
by URL. The dynamic part (may this key be expanded?) is asked of the state store on every request
for an expandable class, and a "yes" is remembered only briefly: a stale "no" would give a client
joining an in-flight fill a 200 instead of its 206 (docs/squid-behaviour.md), and a stale
"yes" after a failure only costs a whole-object fetch Squid would store anyway.

Memory: Squid passes URLs of tens of kilobytes. The memo is bounded in bytes as well as in
entries (an estimate from the URL's length: the answer holds the key and two reply lines, each
about as long as the URL), and URLs longer than `MAX_MEMO_URL` are answered without memoising.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from patchcache.helpers.head_probe import HeadFacts
from patchcache.helpers.protocol import DEFER, Err, HelperRequest, PreparedReply, ok_text
from patchcache.rules import CompiledClass, CompiledRules, Match
from patchcache.state_ports import FirstSightRecorder

T = TypeVar("T")
_ERR = PreparedReply.of(Err()).text


class ExpansionOracle(Protocol):
    """The part of the state store the helper needs."""

    def expandable(self, key: str) -> bool: ...


class SizeLedger(ExpansionOracle, FirstSightRecorder, Protocol):
    """The part of the state store the helper needs to look sizes up itself (`--head-via`)."""

    def expansion(self, key: str) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class HeadLookup:
    """How the helper learns the size of an object first seen without one: `head` gives its
    facts (head_probe.head_facts bound to the proxy and the timeout). `retry_after`: seconds
    during which a failed look-up is not tried again for the same key (its ranges pass through
    plain; the ICAP service's first sight still records the object)."""

    head: Callable[[str], Awaitable[HeadFacts]]
    retry_after: float = 30.0


# A client's HEAD seen this recently: wait up to _HEAD_WAIT_STEPS * _HEAD_WAIT_STEP seconds for
# the ICAP service to record its answer before looking the size up ourselves.
_HEAD_RECENT = 5.0
_HEAD_WAIT_STEP = 0.02
_HEAD_WAIT_STEPS = 15

_NO_MATCH = object()
_MISSING = object()


# URLs longer than this are answered without being memoised: a BITS client's URL is a few
# hundred characters, and a long one is cheap to match again next time (linear-time rules).
MAX_MEMO_URL = 4096
# Bytes one memo entry costs besides its text: the dict slot, the tuple and str headers.
_ENTRY_OVERHEAD = 512
# Copies of the URL's length an entry holds: the URL, the key and the two reply lines.
_ENTRY_COPIES = 4
# Default memo budget per helper process; 8192 ordinary answers (~1 KiB each) fit well within.
DEFAULT_MEMO_BYTES = 16 * 1024 * 1024


def memo_cost(text: str) -> int:
    """Estimated bytes a memo entry for ``text`` holds (non-ASCII text: four bytes a char)."""
    width = 1 if text.isascii() else 4
    return _ENTRY_OVERHEAD + _ENTRY_COPIES * width * len(text)


class BoundedMemo(Generic[T]):
    """A str -> value memo bounded in entries and in (estimated) bytes. Evicts the oldest
    insertions first, an eighth of the bound at a time so the eviction cost is amortised.
    Texts longer than ``max_text`` are computed every time and never kept."""

    def __init__(
        self,
        size: int,
        compute: Callable[[str], T],
        *,
        max_bytes: int = DEFAULT_MEMO_BYTES,
        max_text: int = MAX_MEMO_URL,
    ) -> None:
        self._size = size
        self._compute = compute
        self._max_bytes = max_bytes
        self._max_text = max_text
        self._memo: dict[str, T] = {}
        self.bytes = 0  # estimated, see memo_cost

    def __len__(self) -> int:
        return len(self._memo)

    def get(self, text: str) -> T:
        memo = self._memo
        value = memo.get(text, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        value = self._compute(text)
        if self._size and len(text) <= self._max_text:
            cost = memo_cost(text)
            if len(memo) >= self._size or self.bytes + cost > self._max_bytes:
                self._evict(cost)
            if self.bytes + cost <= self._max_bytes:
                memo[text] = value
                self.bytes += cost
        return value

    def _evict(self, cost: int) -> None:
        memo = self._memo
        keep_count = self._size - max(1, self._size // 8)
        keep_bytes = self._max_bytes - cost - self._max_bytes // 8
        for old in list(memo):
            if len(memo) <= keep_count and self.bytes <= keep_bytes:
                break
            del memo[old]
            self.bytes -= memo_cost(old)


class AnswerCache:
    """URL -> Match (or None), memoised: a BITS client asks for one URL once per range."""

    def __init__(self, rules: CompiledRules, size: int) -> None:
        self._memo: BoundedMemo[object] = BoundedMemo(
            size,
            lambda url: rules.match(url) or _NO_MATCH,
            max_bytes=rules.settings.answer_cache_bytes,
        )

    def match(self, url: str) -> Match | None:
        found = self._memo.get(url)
        return found if isinstance(found, Match) else None


# The static part of the answer for one URL: (key, reply text without note, reply text with the
# note or None when the key may never expand, the class when the helper may look its size up
# itself). A plain tuple: one is built per distinct URL, on the hot path.
_Answer = tuple[str, str, str | None, CompiledClass | None]
_NO_ANSWER: _Answer = ("", _ERR, None, None)


class StoreIdAnswerer:
    """Callable answering one helper request; built once with the compiled rules.

    With `lookup` (and a state that is a `SizeLedger`), the first sight of an object whose
    class may expand and whose size the state does not know is deferred: one HEAD through Squid
    (head_probe.py) gives the size, the object is recorded like the ICAP service's first sight
    (so every helper process and the prefetcher see it), and the line is answered `expand=1`
    if the size is within the class limit. Lines of one object wait on one HEAD; other lines are
    answered meanwhile. Later requests of the object find the record: no HEAD, no wait."""

    def __init__(
        self,
        rules: CompiledRules,
        state: ExpansionOracle | None = None,
        *,
        yes_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        warn: Callable[[str], None] | None = None,
        warn_interval: float = 60.0,
        lookup: HeadLookup | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._ledger: SizeLedger | None = (
            state if lookup is not None and hasattr(state, "expansion") else None  # type: ignore[assignment]
        )
        self._lookup = lookup if self._ledger is not None else None
        self._memo: BoundedMemo[_Answer] = BoundedMemo(
            rules.settings.answer_cache_size,
            self._static_answer,
            max_bytes=rules.settings.answer_cache_bytes,
        )
        self._state = state
        self._yes_ttl = yes_ttl
        self._clock = clock
        self._wall_clock = wall_clock
        self._recent_yes: dict[str, float] = {}
        self._no_lookup_until: dict[str, float] = {}
        self._looking: dict[str, asyncio.Future[bool]] = {}
        self._heads_seen: dict[str, float] = {}  # key -> when a client's HEAD of it passed
        self._writer: ThreadPoolExecutor | None = None
        self._warn = warn or _warn_stderr
        self._warn_interval = warn_interval
        self._next_warning = float("-inf")
        self._failures = 0  # state read failures since the last warning

    def _static_answer(self, url: str) -> _Answer:
        found = self._rules.key_for(url)
        if found is None or not found[0].rule.cache:
            return _NO_ANSWER
        cls, key = found
        plain = ok_text(("store-id", key))
        if self._state is None or not cls.rule.expand_ranges:
            return key, plain, None, None
        # Only where the ICAP service would record a first sight (and queue a prefetch).
        looks_up = self._lookup is not None and cls.rule.prefetch and cls.expands_at_first_sight
        return key, plain, ok_text(("store-id", key), ("expand", "1")), cls if looks_up else None

    def __call__(self, request: HelperRequest) -> PreparedReply:
        return PreparedReply(self.now(request.url))

    def for_url(self, url: str) -> str:
        """The reply's text for ``url``: the runtime calls this directly for clean lines.
        `DEFER` when the size must be looked up first (the runtime then awaits `later`)."""
        key, plain, expanded, lookup = self._memo.get(url)
        if expanded is None:
            return plain
        if lookup is None:
            return expanded if self._expand(key) else plain
        known = self._known(key)
        if known:
            return expanded
        if known is None and self._no_lookup_until.get(key, 0.0) <= self._clock():
            return DEFER
        return plain

    def now(self, url: str) -> str:
        """The answer without waiting for a look-up."""
        key, plain, expanded, _lookup = self._memo.get(url)
        return expanded if expanded is not None and self._expand(key) else plain

    async def later(self, url: str, extras: str) -> str:
        """The answer to a deferred line, once the object's size is known (or not). A HEAD
        request is answered at once: its own response is the look-up (the ICAP service records
        it), and a second HEAD would only delay it."""
        key, plain, expanded, cls = self._memo.get(url)
        if expanded is None or cls is None:
            return plain
        words = extras.split()
        if "HEAD" in words:
            self._heads_seen[key] = self._clock()
            if len(self._heads_seen) > 4096:
                self._heads_seen.clear()
            return plain
        if "range=-" in words:
            # No Range header (squid-conf's store_id_extras): the whole object is asked for,
            # Squid stores it as it is; nothing to expand, nothing to look up.
            return plain
        future = self._looking.get(key)
        if future is None:
            future = asyncio.ensure_future(self._look_up(key, url, cls))
            self._looking[key] = future
            future.add_done_callback(lambda _done: self._looking.pop(key, None))
        try:
            yes = await asyncio.shield(future)
        except Exception as exc:  # a state failure: the plain key is always a safe answer
            self._state_failed(self._clock(), exc)
            yes = False
        return expanded if yes else plain

    async def _look_up(self, key: str, url: str, cls: CompiledClass) -> bool:
        assert self._ledger is not None and self._lookup is not None
        ledger = self._ledger
        loop = asyncio.get_running_loop()
        if self._writer is None:
            # State writes wait on this thread, never on the event loop serving Squid.
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="store-id-state")
        seen = self._heads_seen.pop(key, None)
        if seen is not None and self._clock() - seen < _HEAD_RECENT:
            # The client's own HEAD just passed: the ICAP service is recording its answer
            # (its writes are queued, tens of ms). Wait for that instead of a second HEAD.
            for _ in range(_HEAD_WAIT_STEPS):
                known = await loop.run_in_executor(self._writer, ledger.expansion, key)
                if known is not None:
                    return known
                await asyncio.sleep(_HEAD_WAIT_STEP)
        facts = await self._lookup.head(url)
        if facts.size is None:
            self._no_lookup(key)
            return False
        if facts.size > cls.max_object_size:
            await loop.run_in_executor(
                self._writer,
                ledger.record_too_big,
                key,
                url,
                cls.name,
                facts.size,
                facts.etag,
                facts.last_modified,
            )
            return False
        due_at = self._wall_clock() + self._rules.settings.prefetch_delay

        def record() -> bool | None:
            ledger.record_first_sight(
                key, url, cls.name, facts.size or 0, facts.etag, facts.last_modified, due_at=due_at
            )
            return ledger.expansion(key)

        known = await loop.run_in_executor(self._writer, record)
        if known is None:
            self._no_lookup(key)
        return known is True

    def _no_lookup(self, key: str) -> None:
        assert self._lookup is not None
        now = self._clock()
        if len(self._no_lookup_until) > 4096:
            self._no_lookup_until = {k: v for k, v in self._no_lookup_until.items() if v > now}
            if len(self._no_lookup_until) > 4096:
                self._no_lookup_until.clear()
        self._no_lookup_until[key] = now + self._lookup.retry_after

    def _known(self, key: str) -> bool | None:
        """`_expand` with a third answer, None: the state knows nothing of the size."""
        now = self._clock()
        until = self._recent_yes.get(key)
        if until is not None and until > now:
            return True
        assert self._ledger is not None
        try:
            known = self._ledger.expansion(key)
        except Exception as exc:
            self._state_failed(now, exc)
            return False
        if known:
            self._remember_yes(key, now)
        return known

    def _expand(self, key: str) -> bool:
        now = self._clock()
        until = self._recent_yes.get(key)
        if until is not None and until > now:
            return True
        assert self._state is not None
        try:
            yes = self._state.expandable(key)
        except Exception as exc:  # any read failure: the plain key is always a safe answer
            self._state_failed(now, exc)
            return False
        if yes:
            self._remember_yes(key, now)
            return True
        self._recent_yes.pop(key, None)
        return False

    def _remember_yes(self, key: str, now: float) -> None:
        if len(key) > MAX_MEMO_URL:
            return  # not remembered: 4096 such keys would hold hundreds of MB
        if len(self._recent_yes) > 4096:
            self._recent_yes = {k: v for k, v in self._recent_yes.items() if v > now}
            if len(self._recent_yes) > 4096:  # all fresh: a flood of keys, start over
                self._recent_yes.clear()
        self._recent_yes[key] = now + self._yes_ttl

    def _state_failed(self, now: float, exc: Exception) -> None:
        self._failures += 1
        if now < self._next_warning:
            return
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        self._warn(
            f"state read failed {self._failures} time(s), answering keys without expansion: "
            f"{detail}"
        )
        self._failures = 0
        self._next_warning = now + self._warn_interval


def _warn_stderr(message: str) -> None:
    print(f"patchcache store-id: {message}", file=sys.stderr, flush=True)
