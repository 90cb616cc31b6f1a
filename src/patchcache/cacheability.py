"""Whether Squid will store a response: decided before an object is expanded.

Expanding a range (`expand=1`, `range_offset_limit none`) makes Squid fetch the whole object
from byte 0 so that it can store it. When Squid will not store it, every expanded range fetches
the object again from byte 0: the cost grows with the square of the number of ranges. So an
object is only recorded as expandable when its response is one Squid keeps (Squid 5.7,
HttpStateData::reusableReply and the Vary handling; docs/squid-behaviour.md):

- a status other than 200 or 206 (patchcache's `store_miss`/`send_hit` guards keep those out
  of shared keys anyway);
- `Vary: *`: Squid cannot build a variant key for it and never shares such a response;
- `Cache-Control: no-store` or `private` (with or without a field list), unless the class is
  pinned: the generated `refresh_pattern` of pinned classes has `ignore-no-store
  ignore-private`, so Squid stores those anyway.

The answer is a reason (for logs) or None when the response may be stored and expanded.
"""

from __future__ import annotations

from collections.abc import Iterable

_REFUSED_DIRECTIVES = ("no-store", "private")


def _tokens(values: Iterable[str]) -> list[str]:
    """Directive or field names of comma-separated header values, lower case, arguments
    dropped (a quoted argument may itself hold commas: `private="a, b"`)."""
    names: list[str] = []
    for value in values:
        quoted = False
        start = 0
        for index, char in enumerate(value + ","):
            if char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                name = value[start:index].partition("=")[0].strip().lower()
                if name:
                    names.append(name)
                start = index + 1
    return names


def uncacheable_reason(
    status: int, fields: Iterable[tuple[str, str]], *, pinned: bool
) -> str | None:
    """Why Squid would not store this response (None: it may be stored and expanded).

    ``fields`` are the response's header fields (name, value) in any case; repeated fields
    count together, as HTTP lists do.
    """
    if status not in (200, 206):
        return f"status {status}"
    cache_control: list[str] = []
    vary: list[str] = []
    for name, value in fields:
        lname = name.lower()
        if lname == "cache-control":
            cache_control.append(value)
        elif lname == "vary":
            vary.append(value)
    if "*" in _tokens(vary):
        return "Vary: *"
    if not pinned:
        directives = _tokens(cache_control)
        for refused in _REFUSED_DIRECTIVES:
            if refused in directives:
                return f"Cache-Control: {refused}"
    return None
