"""Header fields and the encapsulated HTTP heads' types; editing an HTTP head for a reply.

`Headers` is what every head's fields become: validated when the head arrives (_readers.py),
split into fields only when first read. `HttpRequestHead` and `HttpResponseHead` are the
encapsulated HTTP heads (``req-hdr``, ``res-hdr``, RFC 3507 section 4.4); `edit_http_head` makes
the adapted copy a decision sends back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from patchcache.icap_service import _native
from patchcache.icap_service._abnf import FIELD, is_token


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The setter of slot ``name``: it writes into a frozen instance being built, bypassing
    the ``__setattr__`` that makes it read-only afterwards."""
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


class Headers:
    """Header fields in arrival order, names as sent; look-ups ignore case. Immutable.

    Encapsulated HTTP heads are validated when they arrive but split into fields only on first
    use: a service that decides on the URL alone never pays for the response head's fields.
    """

    __slots__ = ("_block", "_index", "_items")
    _items: tuple[tuple[str, str], ...] | None
    _block: str | None
    _index: dict[str, str] | None

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        object.__setattr__(self, "_items", tuple(items))
        object.__setattr__(self, "_block", None)
        object.__setattr__(self, "_index", None)

    @staticmethod
    def _lazy(block: str) -> Headers:
        """From a block already validated (fields each ending with CRLF), decoded as latin-1."""
        # Built for every encapsulated head: one maker call (see _native.maker), not __init__.
        return make_lazy_headers(None, block, None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Headers is immutable")

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        items: tuple[tuple[str, str], ...] | None = self._items
        if items is None:
            items = self._split()
        return items

    def _split(self) -> tuple[tuple[str, str], ...]:
        """Split the lazy block into fields (and, natively, the look-up index at once)."""
        block = self._block or ""
        native = _native.fields
        scanned = native(block) if native is not None else None
        if scanned is None:
            items = tuple(FIELD.findall(block))
        else:
            items, index = scanned
            _set_headers_index(self, index)
        _set_headers_items(self, items)
        return items

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        index: dict[str, str] | None = self._index
        if index is None:
            index = self._make_index()
        return index.get(name.lower(), default)

    def _make_index(self) -> dict[str, str]:
        """{lower-case name: first value}; the native split of a lazy block makes it at once."""
        items = self.items
        index = self._index
        if index is None:
            index = {}
            for key, value in items:
                index.setdefault(key.lower(), value)
            _set_headers_index(self, index)
        return index

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of ``name``, in order."""
        lname = name.lower()
        return tuple(value for key, value in self.items if key.lower() == lname)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


# Headers is built per encapsulated head (see _native.maker) and filled in lazily through its slots.
make_lazy_headers = _native.maker(Headers, ("_items", "_block", "_index"))
_set_headers_items = _slot_setter(Headers, "_items")
_set_headers_index = _slot_setter(Headers, "_index")


@dataclass(frozen=True, slots=True)
class HttpRequestHead:
    """The encapsulated HTTP request head (``req-hdr``). ``raw`` ends with CRLF CRLF."""

    raw: bytes
    method: str
    target: str
    version: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class HttpResponseHead:
    """The encapsulated HTTP response head (``res-hdr``). ``raw`` ends with CRLF CRLF."""

    raw: bytes
    version: str
    status: int
    reason: str
    headers: Headers


# Positional constructors of the classes built for every request: see _native.maker.
make_http_request_head = _native.maker(
    HttpRequestHead, ("raw", "method", "target", "version", "headers")
)
make_http_response_head = _native.maker(
    HttpResponseHead, ("raw", "version", "status", "reason", "headers")
)


def edit_http_head(
    raw: bytes, add: Iterable[tuple[str, str]] = (), remove: Iterable[str] = ()
) -> bytes:
    """Return the HTTP head ``raw`` without the fields named in ``remove``, plus ``add``.

    The start line and the other fields are kept byte for byte. Names and values are checked,
    so a decision can never inject a line break into the head.
    """
    drop = {name.lower() for name in remove}
    for name in drop:
        if not is_token(name):
            raise ValueError(f"bad header name {name!r}")
    lines = raw[:-4].split(b"\r\n") if raw.endswith(b"\r\n\r\n") else raw.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].decode("latin-1").lower()
        if name not in drop:
            kept.append(line)
    for name, value in add:
        _check_field(name, value)
        kept.append(f"{name}: {value}".encode("latin-1"))
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _check_field(name: str, value: str) -> None:
    if not is_token(name):
        raise ValueError(f"bad header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name!r}: value contains a line break")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header {name!r}: value is not latin-1") from exc
