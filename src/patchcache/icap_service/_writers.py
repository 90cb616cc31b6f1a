"""ICAP responses as bytes: pure functions, one per kind of response (RFC 3507 section 4.3.3).

`IcapConnection` wraps them with the state checks (which response is allowed now); servers and
tests may also call them directly. ``istag`` arguments are already quoted (`format_istag`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from patchcache.icap_service._abnf import REASONS
from patchcache.icap_service._encapsulated import BodyKind


def format_istag(tag: str) -> str:
    """Quote an ISTag (section 4.7: a quoted string of at most 32 characters)."""
    inner = tag[1:-1] if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"' else tag
    if (
        not inner
        or len(inner) > 32
        or any(ch in inner for ch in '"\\\r\n')
        or not inner.isprintable()
    ):
        raise ValueError(f"bad ISTag {tag!r}: 1-32 printable characters, no quotes")
    return f'"{inner}"'


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"ICAP/1.0 {status} {REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def serialize_continue() -> bytes:
    return b"ICAP/1.0 100 Continue\r\n\r\n"


def serialize_no_content(istag: str, *, close: bool = False) -> bytes:
    """``204 No Content``: use the message unmodified. ``istag`` is already quoted."""
    tail = b"Connection: close\r\n\r\n" if close else b"\r\n"
    return (
        b"ICAP/1.0 204 No Content\r\nISTag: "
        + istag.encode("latin-1")
        + b"\r\nEncapsulated: null-body=0\r\n"
        + tail
    )


def serialize_response_head(
    status: int,
    istag: str,
    *,
    req_hdr: bytes | None = None,
    res_hdr: bytes | None = None,
    body: BodyKind = BodyKind.NULL_BODY,
    close: bool = False,
) -> bytes:
    """An ICAP response head followed by the encapsulated HTTP heads (not the body)."""
    entries: list[str] = []
    offset = 0
    if req_hdr is not None:
        entries.append("req-hdr=0")
        offset = len(req_hdr)
    if res_hdr is not None:
        entries.append(f"res-hdr={offset}")
        offset += len(res_hdr)
    entries.append(f"{body.value}={offset}")
    headers = [("ISTag", istag), ("Encapsulated", ", ".join(entries))]
    if close:
        headers.append(("Connection", "close"))
    return _head(status, headers) + (req_hdr or b"") + (res_hdr or b"")


def serialize_partial_content(
    istag: str, *, req_hdr: bytes | None = None, res_hdr: bytes | None = None, close: bool = False
) -> bytes:
    """``206 Partial Content`` with new HTTP head(s) and ``0; use-original-body=0``.

    The client keeps the body it already has: not a byte of it crosses this connection.
    """
    body = BodyKind.RES_BODY if res_hdr is not None else BodyKind.REQ_BODY
    head = serialize_response_head(
        206, istag, req_hdr=req_hdr, res_hdr=res_hdr, body=body, close=close
    )
    return head + b"0; use-original-body=0\r\n\r\n"


def serialize_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def serialize_last_chunk() -> bytes:
    return b"0\r\n\r\n"


def serialize_error(status: int, *, istag: str | None = None, close: bool = True) -> bytes:
    headers = [("ISTag", istag)] if istag else []
    headers.append(("Encapsulated", "null-body=0"))
    if close:
        headers.append(("Connection", "close"))
    return _head(status, headers)


@dataclass(frozen=True, slots=True)
class OptionsReply:
    """What an OPTIONS response advertises for one service path (section 4.10.2)."""

    methods: tuple[str, ...]
    istag: str  # quoted
    service: str = "patchcache"
    service_id: str | None = None
    options_ttl: int = 3600
    max_connections: int | None = None
    # We implement 204 and 206, so we advertise both; Preview: 0 with Transfer-Preview: * makes
    # Squid send only the heads, then keep the body while we decide.
    allow: tuple[str, ...] = ("204", "206")
    preview: int | None = 0
    transfer_preview: str | None = "*"
    date: str | None = None


def serialize_options(reply: OptionsReply, *, close: bool = False) -> bytes:
    headers = [("Methods", ", ".join(reply.methods)), ("Service", reply.service)]
    headers.append(("ISTag", reply.istag))
    if reply.date:
        headers.append(("Date", reply.date))
    headers.append(("Options-TTL", str(reply.options_ttl)))
    if reply.max_connections is not None:
        headers.append(("Max-Connections", str(reply.max_connections)))
    if reply.service_id:
        headers.append(("Service-ID", reply.service_id))
    if reply.allow:
        headers.append(("Allow", ", ".join(reply.allow)))
    if reply.preview is not None:
        headers.append(("Preview", str(reply.preview)))
    if reply.transfer_preview:
        headers.append(("Transfer-Preview", reply.transfer_preview))
    headers.append(("Encapsulated", "null-body=0"))
    if close:
        headers.append(("Connection", "close"))
    return _head(200, headers)
