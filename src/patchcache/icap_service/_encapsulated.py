"""The ``Encapsulated`` header (RFC 3507 section 4.4.1): where each encapsulated part starts.

``Encapsulated: req-hdr=0, res-hdr=412, res-body=803`` gives the byte offsets, counted from the
end of the ICAP head, of the HTTP request head, the HTTP response head and the body; the last
entry names the body (``null-body`` when there is none). `parse_encapsulated` uses the native
scanner when it is built; `parse_encapsulated_python` is its Python twin and the one that
names what is wrong with a bad value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from patchcache.errors import ProtocolError
from patchcache.icap_service import _native


class BodyKind(enum.Enum):
    """The last entry of an ``Encapsulated`` header: which body follows, if any."""

    REQ_BODY = "req-body"
    RES_BODY = "res-body"
    OPT_BODY = "opt-body"
    NULL_BODY = "null-body"


NULL_BODY: Final = BodyKind.NULL_BODY  # read per request: a global, not an Enum attribute
BODY_KINDS = {kind.value: kind for kind in BodyKind}
# Which Encapsulated entries each request method may carry (section 4.4.1).
ALLOWED_ENTRIES = {
    "REQMOD": frozenset({"req-hdr", "req-body", "null-body"}),
    "RESPMOD": frozenset({"req-hdr", "res-hdr", "res-body", "null-body"}),
    "OPTIONS": frozenset({"opt-body", "null-body"}),
}


@dataclass(frozen=True, slots=True)
class Encapsulated:
    """Parsed ``Encapsulated`` offsets, relative to the end of the ICAP head."""

    req_hdr: int | None
    res_hdr: int | None
    body: BodyKind
    body_offset: int

    @property
    def has_body(self) -> bool:
        return self.body is not NULL_BODY


NO_ENCAPSULATION = Encapsulated(None, None, BodyKind.NULL_BODY, 0)
# Built for every request: a positional constructor (see _native.maker).
make_encapsulated = _native.maker(Encapsulated, ("req_hdr", "res_hdr", "body", "body_offset"))


def parse_encapsulated(value: str, method: str) -> Encapsulated:
    """Parse and validate an ``Encapsulated`` value for a request ``method``.

    Entries: optional ``req-hdr``, then optional ``res-hdr``, then exactly one body entry;
    offsets start at 0 and increase; each method allows only some names.
    """
    native = _native.encapsulated
    scanned = native(value, method) if native is not None else None
    if scanned is not None:
        return make_encapsulated(scanned[0], scanned[1], BODY_KINDS[scanned[2]], scanned[3])
    return parse_encapsulated_python(value, method)


def parse_encapsulated_python(value: str, method: str) -> Encapsulated:
    """`parse_encapsulated` in Python: the twin of the native scanner's ``encapsulated``, and
    what reports every error."""
    allowed = ALLOWED_ENTRIES[method]
    req_hdr: int | None = None
    res_hdr: int | None = None
    body: BodyKind | None = None
    last = -1
    offset = 0
    for part in value.split(","):
        name, sep, number = part.partition("=")
        name = name.strip().lower()
        number = number.strip()
        if not sep or not (number.isascii() and number.isdigit()) or len(number) > 9:
            raise ProtocolError(f"malformed Encapsulated entry {part.strip()[:40]!r}")
        if name not in allowed:
            raise ProtocolError(f"Encapsulated entry {name!r} not allowed in {method}")
        if body is not None:
            raise ProtocolError("Encapsulated: the body entry must come last")
        offset = int(number)
        out_of_order = offset != 0 if last < 0 else offset <= last
        if out_of_order:
            raise ProtocolError("Encapsulated: offsets must start at 0 and increase")
        last = offset
        if name == "req-hdr":
            if req_hdr is not None or res_hdr is not None:
                raise ProtocolError("Encapsulated: req-hdr repeated or after res-hdr")
            req_hdr = offset
        elif name == "res-hdr":
            if res_hdr is not None:
                raise ProtocolError("Encapsulated: res-hdr repeated")
            res_hdr = offset
        else:
            body = BODY_KINDS[name]
    if body is None:
        raise ProtocolError("Encapsulated: no body entry (req-body, res-body, null-body...)")
    return make_encapsulated(req_hdr, res_hdr, body, offset)
