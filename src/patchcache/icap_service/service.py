"""The pluggable ICAP service interface: what decides, per request, how a message is adapted.

The server (`patchcache.icap_service.server`) owns sockets and the ICAP protocol; a service only
answers questions about one parsed request, synchronously, on the event loop thread (so it must
not block: no network calls, no long disk I/O).

A service has four members (`IcapService`):

``istag``
    A short string (1-32 printable characters, no quotes) naming the current version of the
    service's rules. Squid caches adapted responses per ISTag: change it whenever the decisions
    would change (for instance when rules are reloaded).
``service_paths``
    Mapping from ICAP URI path to the one method served there, e.g.
    ``{"/reqmod": "REQMOD", "/respmod": "RESPMOD"}``. Another path gets ``404``, the wrong
    method ``405``. OPTIONS is answered by the server for every path listed here.
``reqmod(request)`` / ``respmod(request)``
    Called once per request, as soon as its heads have arrived (before any body byte: the server
    advertises ``Preview: 0``). ``request`` is the parsed `RequestHead`: ``request.http_request``
    (method, target, headers) and, for RESPMOD, ``request.http_response`` (status, headers).
    Return a decision; the server turns it into the cheapest correct ICAP reply:

    * `NoModification` -> ``204`` (after the preview, or at once when there is no body).
    * `AddResponseHeaders` (RESPMOD) / `AddRequestHeaders` (REQMOD) -> the HTTP head with those
      fields removed/added, sent as ``206`` with ``use-original-body=0`` so the body stays in
      Squid; without ``Allow: 206`` the server falls back to ``100 Continue`` and echoes the body.
    * `ModifiedHead` -> the same, with a whole new HTTP head given as bytes.

    An exception raised here is logged and answered with ``500`` (the connection stays usable;
    Squid then applies its ``bypass`` setting).

`NullService` answers every request with `NoModification`: for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from patchcache.icap_service.protocol import RequestHead, edit_http_head

__all__ = [
    "AddRequestHeaders",
    "AddResponseHeaders",
    "Decision",
    "IcapMethod",
    "IcapRequest",
    "IcapService",
    "ModifiedHead",
    "NoModification",
    "NullService",
    "ReqmodDecision",
    "RespmodDecision",
    "apply_decision",
]

IcapMethod = Literal["REQMOD", "RESPMOD"]
IcapRequest = RequestHead  # what a service is asked about; see protocol.RequestHead


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


class IcapService(Protocol):
    """What the ICAP server asks of a service. See the module docstring."""

    @property
    def istag(self) -> str: ...

    @property
    def service_paths(self) -> Mapping[str, IcapMethod]: ...

    def reqmod(self, request: IcapRequest) -> ReqmodDecision: ...

    def respmod(self, request: IcapRequest) -> RespmodDecision: ...


def apply_decision(request: IcapRequest, decision: Decision) -> bytes | None:
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


class NullService:
    """Answers ``204`` to everything, on ``/reqmod`` and ``/respmod``."""

    def __init__(self, istag: str = "patchcache-null") -> None:
        self._istag = istag
        self._paths: Mapping[str, IcapMethod] = {"/reqmod": "REQMOD", "/respmod": "RESPMOD"}

    @property
    def istag(self) -> str:
        return self._istag

    @property
    def service_paths(self) -> Mapping[str, IcapMethod]:
        return self._paths

    def reqmod(self, request: IcapRequest) -> ReqmodDecision:
        return NoModification()

    def respmod(self, request: IcapRequest) -> RespmodDecision:
        return NoModification()
