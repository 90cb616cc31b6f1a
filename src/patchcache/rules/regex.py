"""Path regexes of the rules, run by RE2: matching time is linear in the path, whatever was written.

Python's `re` backtracks: `^/(a+)+$` against a 29-byte path takes seconds, a longer one forever,
and the store-ID helper and the ICAP service are single-threaded. Rules come from admins, so every
pattern they write runs on RE2 (the `google-re2` bindings), whose automata never backtrack. RE2
lacks look-around, backreferences, possessive quantifiers, `\\Z` and conditionals; a rules file
using them is refused with the reason when it is loaded.

Patterns and paths go to RE2 as UTF-8 bytes. The bindings' `re`-like layer (`re2.compile`) costs
as much again as the match itself on a typical path (a generator, a match object and a group
lookup per call; the `str` interface three times as much), so when the bindings' core
(`re2._re2`, which that layer is written on) has the calls used here, matching calls it
directly: about 28k instead of 53k instructions per capturing match of the Windows Update
pattern (callgrind; Python's `re` takes 6k, its price is the backtracking). Otherwise the
public layer is used; both give the same answers (tests/unit/test_rules_config.py).
"""

from __future__ import annotations

import re
from typing import Any

import re2  # type: ignore[import-untyped]

__all__ = ["PathMatch", "PathRegex", "RegexError"]

# \C matches a single byte, so a group could end inside a UTF-8 sequence: refused. An escaped
# backslash before the C ("\\C") is a literal backslash and a C, which is fine.
_SINGLE_BYTE_RE = re.compile(r"(?<!\\)(?:\\\\)*\\C")
# RE2's errors for Python syntax it lacks (rather than a plain typo).
_UNSUPPORTED = ("invalid perl operator", "invalid escape sequence", "bad repetition operator")


def _core() -> tuple[Any, Any] | None:
    """The bindings' core class and its full-match anchor, if they are as this module knows."""
    try:
        from re2 import _re2

        core = _re2.RE2
        anchor = core.Anchor.ANCHOR_BOTH
        for name in ("Match", "NamedCapturingGroups", "ok", "error"):
            getattr(core, name)
    except (ImportError, AttributeError):
        return None
    return core, anchor


_CORE = _core()


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr (cache.log)
    return options


_OPTIONS = _options()


class RegexError(ValueError):
    """The pattern cannot run on RE2; the message says why."""


class PathMatch:
    """A full match; `group(name)` as in `re`, None for a group that took no part."""

    __slots__ = ("_data", "_index", "_spans", "_text")

    def __init__(
        self, text: str, data: bytes | None, spans: list[tuple[int, int]], index: dict[str, int]
    ) -> None:
        self._text = text  # the path; its offsets are byte offsets when it is ASCII
        self._data = data  # its UTF-8 bytes when it is not ASCII, else None
        self._spans = spans
        self._index = index

    def group(self, name: str) -> str | None:
        start, end = self._spans[self._index[name]]
        if start < 0:
            return None
        if self._data is None:
            return self._text[start:end]
        return self._data[start:end].decode("utf-8", "surrogatepass")


class PathRegex:
    """One compiled path pattern; only full matches are ever asked for."""

    __slots__ = ("_anchor", "_core", "_index", "_public", "pattern")

    def __init__(self, pattern: str, *, use_core: bool = True) -> None:
        if _SINGLE_BYTE_RE.search(pattern):
            raise RegexError("\\C (any single byte) is not allowed: it can split a character")
        encoded = pattern.encode("utf-8", "surrogatepass")
        self.pattern = pattern
        self._core: Any = None
        self._public: Any = None
        names: list[tuple[bytes, int]]
        if _CORE is not None and use_core:
            core_class, self._anchor = _CORE
            self._core = core_class(encoded, _OPTIONS)
            if not self._core.ok():
                raise _refusal(self._core.error())
            names = list(self._core.NamedCapturingGroups())
        else:
            self._anchor = None
            try:
                self._public = re2.compile(encoded, _OPTIONS)
            except re2.error as exc:
                raise _refusal(exc.args[0] if exc.args else exc) from None
            names = list(self._public.groupindex.items())
        self._index: dict[str, int] = {name.decode("utf-8"): number for name, number in names}

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset(self._index)

    def fullmatch(self, text: str) -> PathMatch | None:
        ascii_text = text.isascii()
        data = text.encode("ascii") if ascii_text else text.encode("utf-8", "surrogatepass")
        if self._core is not None:
            spans: list[tuple[int, int]] = self._core.Match(self._anchor, data, 0, len(data))
            if spans[0][0] < 0:
                return None
        else:
            found = self._public.fullmatch(data)
            if found is None:
                return None
            spans = [found.span(number) for number in range(self._public.groups + 1)]
        return PathMatch(text, None if ascii_text else data, spans, self._index)


def _refusal(detail: object) -> RegexError:
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    message = f"does not compile on RE2, the linear-time engine rules run on: {detail}"
    if str(detail).startswith(_UNSUPPORTED):
        message += (
            " (RE2 has no look-around, backreferences, possessive quantifiers or \\Z;"
            " write \\z for the end of the path)"
        )
    return RegexError(message)
