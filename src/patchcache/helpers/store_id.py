"""The store-ID helper's decision: one cache key for every URL variant of the same content.

Squid asks for every request that `store_id_access` lets through (Squid's `store_id_program`
documentation). The answer is `OK store-id=KEY` for URLs a class maps and allows caching,
`ERR` (keep the URL as the key) otherwise. When a shared state directory is given, the answer
also carries `expand=1` while the object's whole size is known and allowed (queued, filling or
complete): Squid then fetches the whole object for that request (`range_offset_limit none
pc_expand`). Objects of unknown size are never expanded: that is how Squid's quadratic refetch
of over-size objects starts.

Speed: a BITS client asks for the same URL once per range, hundreds of times, so the static part
of the answer (the match, and the reply already formatted) is kept in a bounded dictionary keyed
by URL. The dynamic part (may this key be expanded?) is asked of the state store on every request
for an expandable class, and a "yes" is remembered only briefly: a stale "no" would give a client
joining an in-flight fill a 200 instead of its 206 (see ../shared/squid-facts.md), and a stale
"yes" after a failure only costs a whole-object fetch Squid would store anyway.
"""

from __future__ import annotations

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


class BoundedMemo(Generic[T]):
    """A bounded str -> value memo. Evicts the oldest insertions first, an eighth at a time so
    the eviction cost is amortised."""

    def __init__(self, size: int, compute: Callable[[str], T]) -> None:
        self._size = size
        self._compute = compute
        self._memo: dict[str, T] = {}

    def get(self, text: str) -> T:
        memo = self._memo
        value = memo.get(text, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        value = self._compute(text)
        if self._size:
            if len(memo) >= self._size:
                for old in list(memo)[: max(1, self._size // 8)]:
                    del memo[old]
            memo[text] = value
        return value


class AnswerCache:
    """URL -> Match (or None), memoised: a BITS client asks for one URL once per range."""

    def __init__(self, rules: CompiledRules, size: int) -> None:
        self._memo: BoundedMemo[object] = BoundedMemo(
            size, lambda url: rules.match(url) or _NO_MATCH
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
    ) -> None:
        self._rules = rules
        self._memo: BoundedMemo[_Answer] = BoundedMemo(
            rules.settings.answer_cache_size, self._static_answer
        )
        self._state = state
        self._yes_ttl = yes_ttl
        self._clock = clock
        self._recent_yes: dict[str, float] = {}

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
        if self._state.expandable(key):
            if len(self._recent_yes) > 4096:
                self._recent_yes = {k: v for k, v in self._recent_yes.items() if v > now}
            self._recent_yes[key] = now + self._yes_ttl
            return True
        self._recent_yes.pop(key, None)
        return False
