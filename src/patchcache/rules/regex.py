"""Path regexes of the rules, run by RE2: matching time is linear in the path, whatever was written.

Python's `re` backtracks: `^/(a+)+$` against a 29-byte path takes seconds, a longer one forever,
and the store-ID helper and the ICAP service are single-threaded. Rules come from admins, so every
pattern they write runs on RE2 (the `google-re2` bindings), whose automata never backtrack. RE2
lacks look-around, backreferences, possessive quantifiers, `\\Z` and conditionals; a rules file
using them is refused with the reason when it is loaded.

Patterns and paths go to RE2 as UTF-8 bytes: the bindings' `str` interface maps every offset
back to characters and costs three times as much per match. Group values come back as `str`.
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


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr (cache.log)
    return options


_OPTIONS = _options()


class RegexError(ValueError):
    """The pattern cannot run on RE2; the message says why."""


class PathMatch:
    """A full match; `group(name)` as in `re`, None for a group that took no part."""

    __slots__ = ("_found", "_index")

    def __init__(self, found: Any, index: dict[str, int]) -> None:
        self._found = found
        self._index = index

    def group(self, name: str) -> str | None:
        value = self._found.group(self._index[name])
        if value is None:
            return None
        text: str = value.decode("utf-8", "surrogatepass")
        return text


class PathRegex:
    """One compiled path pattern; only full matches are ever asked for."""

    __slots__ = ("_index", "_regexp", "pattern")

    def __init__(self, pattern: str) -> None:
        if _SINGLE_BYTE_RE.search(pattern):
            raise RegexError("\\C (any single byte) is not allowed: it can split a character")
        try:
            self._regexp = re2.compile(pattern.encode("utf-8", "surrogatepass"), _OPTIONS)
        except re2.error as exc:
            detail = exc.args[0] if exc.args else exc
            if isinstance(detail, bytes):
                detail = detail.decode("utf-8", "replace")
            message = f"does not compile on RE2, the linear-time engine rules run on: {detail}"
            if str(detail).startswith(_UNSUPPORTED):
                message += (
                    " (RE2 has no look-around, backreferences, possessive quantifiers or \\Z;"
                    " write \\z for the end of the path)"
                )
            raise RegexError(message) from None
        self.pattern = pattern
        self._index: dict[str, int] = {
            name.decode("utf-8"): number for name, number in self._regexp.groupindex.items()
        }

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset(self._index)

    def fullmatch(self, text: str) -> PathMatch | None:
        found = self._regexp.fullmatch(text.encode("utf-8", "surrogatepass"))
        return None if found is None else PathMatch(found, self._index)
