"""What an ICAP service decides for one request, and the HTTP head each decision makes.

A service (service_interface.py) returns one of these per request; the server turns it into the
cheapest correct ICAP reply (`NoModification` -> ``204``; the others -> ``206`` with a new HTTP
head and ``use-original-body=0``). `apply_decision` builds that new head.
"""

from __future__ import annotations

from dataclasses import dataclass

from patchcache.icap_service.protocol import RequestHead, edit_http_head

__all__ = [
    "AddRequestHeaders",
    "AddResponseHeaders",
    "Decision",
    "ModifiedHead",
    "NoModification",
    "ReqmodDecision",
    "RespmodDecision",
    "apply_decision",
]


@dataclass(frozen=True, slots=True)
class NoModification:
    """Leave the message alone (ICAP ``204``)."""


def _check_fields(headers: tuple[tuple[str, str], ...], remove: tuple[str, ...]) -> None:
    # Validate once, at construction, so a bad decision fails in the service's code path
    # (500 for that request) rather than producing a corrupt HTTP head.
    edit_http_head(b"X 200 OK\r\n\r\n", headers, remove)


@dataclass(frozen=True, slots=True)
class AddResponseHeaders:
    """RESPMOD: drop the response header fields named in ``remove``, then append ``headers``.

    The body is not touched (ICAP ``206`` with ``use-original-body=0``).
    """

    headers: tuple[tuple[str, str], ...]
    remove: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_fields(self.headers, self.remove)


@dataclass(frozen=True, slots=True)
class AddRequestHeaders:
    """REQMOD: drop the request header fields named in ``remove``, then append ``headers``."""

    headers: tuple[tuple[str, str], ...]
    remove: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_fields(self.headers, self.remove)


@dataclass(frozen=True, slots=True)
class ModifiedHead:
    """Replace the HTTP head being adapted (the request head in REQMOD, the response head in
    RESPMOD) by ``head``: start line and fields, ending with an empty line. Body untouched."""

    head: bytes

    def __post_init__(self) -> None:
        if not self.head.endswith(b"\r\n\r\n") or b"\r\n\r\n" in self.head[:-4]:
            raise ValueError("ModifiedHead.head must be one HTTP head ending with CRLF CRLF")


ReqmodDecision = NoModification | AddRequestHeaders | ModifiedHead
RespmodDecision = NoModification | AddResponseHeaders | ModifiedHead
Decision = NoModification | AddRequestHeaders | AddResponseHeaders | ModifiedHead


def apply_decision(request: RequestHead, decision: Decision) -> bytes | None:
    """The new HTTP head a decision asks for, or None for `NoModification`.

    Raises ValueError when the decision does not fit the request (``AddResponseHeaders`` in
    REQMOD, a missing encapsulated head).
    """
    if isinstance(decision, NoModification):
        return None
    adapted = request.http_request if request.method == "REQMOD" else request.http_response
    if isinstance(decision, ModifiedHead):
        return decision.head
    if adapted is None:
        raise ValueError(f"{request.method} request has no HTTP head to modify")
    if isinstance(decision, AddResponseHeaders) and request.method != "RESPMOD":
        raise ValueError("AddResponseHeaders is a RESPMOD decision")
    if isinstance(decision, AddRequestHeaders) and request.method != "REQMOD":
        raise ValueError("AddRequestHeaders is a REQMOD decision")
    return edit_http_head(adapted.raw, decision.headers, decision.remove)
