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
joining an in-flight fill a 200 instead of its 206 (see ../shared/squid-facts.md), and a stale
"yes" after a failure only costs a whole-object fetch Squid would store anyway.

Memory: Squid passes URLs of tens of kilobytes. The memo is bounded in bytes as well as in
entries (an estimate from the URL's length: the answer holds the key and two reply lines, each
about as long as the URL), and URLs longer than `MAX_MEMO_URL` are answered without memoising.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from patchcache.helpers.protocol import Err, HelperRequest, PreparedReply, ok_text
from patchcache.rules import CompiledRules, Match

T = TypeVar("T")
_ERR = PreparedReply.of(Err()).text


class ExpansionOracle(Protocol):
    """The part of the state store the helper needs."""

    def expandable(self, key: str) -> bool: ...


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
# note or None when the key may never expand). A plain tuple of str: one is built per distinct
# URL, on the hot path.
_Answer = tuple[str, str, str | None]
_NO_ANSWER: _Answer = ("", _ERR, None)


class StoreIdAnswerer:
    """Callable answering one helper request; built once with the compiled rules."""

    def __init__(
        self,
        rules: CompiledRules,
        state: ExpansionOracle | None = None,
        *,
        yes_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        warn: Callable[[str], None] | None = None,
        warn_interval: float = 60.0,
    ) -> None:
        self._rules = rules
        self._memo: BoundedMemo[_Answer] = BoundedMemo(
            rules.settings.answer_cache_size,
            self._static_answer,
            max_bytes=rules.settings.answer_cache_bytes,
        )
        self._state = state
        self._yes_ttl = yes_ttl
        self._clock = clock
        self._recent_yes: dict[str, float] = {}
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
            return key, plain, None
        return key, plain, ok_text(("store-id", key), ("expand", "1"))

    def __call__(self, request: HelperRequest) -> PreparedReply:
        return PreparedReply(self.for_url(request.url))

    def for_url(self, url: str) -> str:
        """The reply's text for ``url``: the runtime calls this directly for clean lines."""
        key, plain, expanded = self._memo.get(url)
        if expanded is not None and self._expand(key):
            return expanded
        return plain

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
            if len(key) > MAX_MEMO_URL:
                return True  # not remembered: 4096 such keys would hold hundreds of MB
            if len(self._recent_yes) > 4096:
                self._recent_yes = {k: v for k, v in self._recent_yes.items() if v > now}
                if len(self._recent_yes) > 4096:  # all fresh: a flood of keys, start over
                    self._recent_yes.clear()
            self._recent_yes[key] = now + self._yes_ttl
            return True
        self._recent_yes.pop(key, None)
        return False

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
