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
    Return a decision (decision.py); the server turns it into the cheapest correct ICAP reply:

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
from typing import Literal, Protocol

from patchcache.icap_service.decision import NoModification, ReqmodDecision, RespmodDecision
from patchcache.icap_service.protocol import RequestHead

__all__ = ["IcapMethod", "IcapRequest", "IcapService", "NullService"]

IcapMethod = Literal["REQMOD", "RESPMOD"]
IcapRequest = RequestHead  # what a service is asked about; see protocol.RequestHead


class IcapService(Protocol):
    """What the ICAP server asks of a service. See the module docstring."""

    @property
    def istag(self) -> str: ...

    @property
    def service_paths(self) -> Mapping[str, IcapMethod]: ...

    def reqmod(self, request: IcapRequest) -> ReqmodDecision: ...

    def respmod(self, request: IcapRequest) -> RespmodDecision: ...


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
