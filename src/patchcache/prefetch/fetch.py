"""The fill: fetch one whole object through Squid, hashing it on the way.

Why `Range: bytes=0-` and not a plain GET (measured on Squid 5.7; docs/squid-behaviour.md,
"Ranges and shared keys"): the store-ID helper answers `expand=1` for an object whose record is
queued, filling or complete, and `range_offset_limit none pc_expand` then turns the ranged request
into a whole-object fetch that Squid finishes and stores even if the prefetcher disconnects or is
killed. A plain GET that disconnects is aborted and nothing is stored. With
`collapsed_forwarding on`, a fill that starts while another request fetches the same key joins
that fetch instead of starting a second one, and a fill of a stored object is a hit.

So the answer is either `206` with `Content-Range: bytes 0-(N-1)/N` or a `200` with the whole
body (Squid serves the full object when the range covers all of it, and an origin may ignore
ranges); anything else (a partial 206, 4xx/5xx, a redirect) is an error.

`probe_size` is for jobs queued without a size (pre-positioning): the helper only expands
objects of known size, so the size is learnt first with a 1-byte range (passed through to the
origin, nothing stored) and recorded before the fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from patchcache import __version__
from patchcache.errors import PatchcacheError, ProtocolError
from patchcache.prefetch.h11client import (
    BodyData,
    EndOfMessage,
    Exchange,
    ResponseHead,
    content_length,
    parse_content_range,
)
from patchcache.rules.urls import UrlRefused, split_url

USER_AGENT = f"patchcache-prefetch/{__version__}"
_READ_SIZE = 64 * 1024
# The stream's buffer limit. An unthrottled fill reads up to this much at a time: each read is
# one pass through h11's state machine (tens of microseconds), so fewer, larger reads keep the
# client's CPU per MiB at the old hand-written parser's (bench/prefetch_fill_speed.py, `wire`).
_STREAM_LIMIT = _READ_SIZE * 4


class FetchError(PatchcacheError):
    """The fill did not produce the whole object (network error, bad status, short body)."""

    status_hint = 502


class ProxyUnreachable(FetchError):
    """The proxy refused or did not accept the connection: no object is to blame."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """Where Squid listens (plain HTTP proxy port)."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """`http://127.0.0.1:3128` (a bare `host:port` works too)."""
        text = url if "://" in url else f"http://{url}"
        try:
            split = split_url(text)
        except UrlRefused as exc:
            raise ValueError(f"proxy {url!r}: {exc}") from None
        if split.scheme != "http" or split.path not in ("", "/") or split.query is not None:
            raise ValueError(f"proxy {url!r} must look like http://HOST:PORT")
        return cls(split.host, split.port or 3128)


@dataclass(frozen=True, slots=True)
class FetchResult:
    status: int
    total: int
    digest: str | None
    """Lower-case hex digest of the body, when an algorithm was asked for."""
    etag: str | None
    last_modified: str | None
    headers: tuple[tuple[str, str], ...] = ()
    """The response head's fields, as Squid sent them."""


ProgressCallback = Callable[[int, int | None], None]
PayCallback = Callable[[int], Awaitable[None]]


def expected_total(head: ResponseHead) -> int | None:
    """The whole object's size from a reply to `Range: bytes=0-`, or FetchError if the reply
    is not the whole object. None: a 200 without Content-Length (read until the end)."""
    if head.status == 206:
        value = head.get("Content-Range")
        if value is None:
            ctype = head.get("Content-Type") or ""
            raise FetchError(f"206 without Content-Range (Content-Type {ctype[:60]!r})")
        try:
            found = parse_content_range(value)
        except ProtocolError as exc:
            raise FetchError(str(exc)) from None
        if found.total is None or found.first != 0 or found.last != found.total - 1:
            raise FetchError(f"206 for part of the object only: Content-Range {value!r}")
        return found.total
    if head.status == 200:
        try:
            return content_length(head)
        except ProtocolError as exc:
            raise FetchError(str(exc)) from None
    reason = f" {head.reason}" if head.reason else ""
    cache = head.get("X-Cache") or head.get("X-Squid-Error") or ""
    extra = f" ({cache})" if cache else ""
    raise FetchError(f"HTTP {head.status}{reason}{extra}")


def proxy_exchange(method: str, url: str, extra: list[tuple[str, str]]) -> Exchange:
    """A proxy request (absolute-form target, RFC 9112 3.2.2) for `url`, ready to send."""
    split = split_url(url)
    host = split.host if split.port is None else f"{split.host}:{split.port}"
    if ":" in split.host:
        host = f"[{split.host}]" + (f":{split.port}" if split.port else "")
    headers = [
        ("Host", host),
        ("User-Agent", USER_AGENT),
        ("Accept-Encoding", "identity"),
        ("Connection", "close"),
        *extra,
    ]
    return Exchange(method, url, headers)


# Timeouts use `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11, wait_for swallows a
# cancellation that arrives as its inner read completes, and a fill on a fast stream then
# ignores a graceful stop (seen in tests/integration/test_prefetch_crash.py).


async def open_proxy_connection(
    proxy: Proxy, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(proxy.host, proxy.port, limit=_STREAM_LIMIT)
    except (OSError, TimeoutError) as exc:
        raise ProxyUnreachable(
            f"proxy {proxy.host}:{proxy.port} unreachable: {exc or type(exc).__name__}"
        ) from None


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(2.0):
            await writer.wait_closed()


async def read_some(reader: asyncio.StreamReader, size: int, idle_timeout: float) -> bytes:
    try:
        async with asyncio.timeout(idle_timeout):
            return await reader.read(size)
    except TimeoutError:
        raise FetchError(f"no data from the proxy for {idle_timeout:g} s") from None
    except OSError as exc:
        raise FetchError(f"connection to the proxy failed: {exc}") from None


async def fetch_whole(
    proxy: Proxy,
    url: str,
    *,
    digest: str | None = None,
    pay: PayCallback | None = None,
    piece_size: int = _READ_SIZE,
    progress: ProgressCallback | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    headers: tuple[tuple[str, str], ...] = (),
) -> FetchResult:
    """GET `url` through `proxy` with `Range: bytes=0-`, read to the end, hash on the fly.

    `pay(n)` is awaited after every piece read (the throttle; without it, reads are up to
    256 KiB whatever `piece_size`); `progress(bytes, total)` is called after every piece;
    `headers` are added to the request. Raises FetchError (ProxyUnreachable if the connection
    failed).
    """
    hasher = hashlib.new(digest) if digest else None
    # A throttled fill reads in the throttle's pieces, so the rate is smooth (see throttle).
    read_size = piece_size if pay is not None else max(piece_size, _STREAM_LIMIT)
    reader, writer = await open_proxy_connection(proxy, connect_timeout)
    try:
        try:
            exchange = proxy_exchange("GET", url, [("Range", "bytes=0-"), *headers])
            writer.write(exchange.request)
            async with asyncio.timeout(idle_timeout):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            raise FetchError(f"cannot send the request to the proxy: {exc}") from None
        head: ResponseHead | None = None
        total: int | None = None
        received = 0
        while True:
            data = await read_some(reader, read_size, idle_timeout)
            try:
                events = exchange.feed(data) if data else exchange.feed_eof()
            except ProtocolError as exc:
                if not data and head is not None:
                    of = f" of {total}" if total is not None else ""
                    raise FetchError(f"connection closed after {received}{of} bytes") from None
                raise FetchError(f"bad response from the proxy: {exc}") from None
            for event in events:
                if isinstance(event, ResponseHead):
                    head = event
                    total = expected_total(event)
                elif isinstance(event, BodyData):
                    received += len(event.data)
                    if total is not None and received > total:
                        raise FetchError(f"body longer than the announced {total} bytes")
                    if hasher is not None:
                        hasher.update(event.data)
                elif isinstance(event, EndOfMessage):
                    assert head is not None  # a head always comes first
                    if total is not None and received != total:
                        raise FetchError(f"body ended after {received} of {total} bytes")
                    if progress is not None:
                        progress(received, received)
                    return FetchResult(
                        status=head.status,
                        total=received,
                        digest=hasher.hexdigest() if hasher is not None else None,
                        etag=head.get("ETag"),
                        last_modified=head.get("Last-Modified"),
                        headers=head.headers,
                    )
            if progress is not None and head is not None:
                progress(received, total)
            if pay is not None and data:
                await pay(len(data))
    finally:
        await close_quietly(writer)


async def probe_size(
    proxy: Proxy,
    url: str,
    *,
    connect_timeout: float = 10.0,
    idle_timeout: float = 60.0,
) -> int | None:
    """The object's total size from a 1-byte range through the proxy; None if not told."""
    reader, writer = await open_proxy_connection(proxy, connect_timeout)
    try:
        try:
            exchange = proxy_exchange("GET", url, [("Range", "bytes=0-0")])
            writer.write(exchange.request)
            async with asyncio.timeout(idle_timeout):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            raise FetchError(f"cannot send the request to the proxy: {exc}") from None
        while True:
            data = await read_some(reader, _READ_SIZE, idle_timeout)
            try:
                events = exchange.feed(data) if data else exchange.feed_eof()
            except ProtocolError as exc:
                raise FetchError(f"bad response from the proxy: {exc}") from None
            for event in events:
                if not isinstance(event, ResponseHead):
                    continue
                if event.status == 206:
                    value = event.get("Content-Range") or ""
                    try:
                        return parse_content_range(value).total
                    except ProtocolError as exc:
                        raise FetchError(str(exc)) from None
                if event.status == 200:
                    # The origin ignored the range; drop the connection after the head.
                    try:
                        return content_length(event)
                    except ProtocolError as exc:
                        raise FetchError(str(exc)) from None
                raise FetchError(f"size probe: HTTP {event.status} {event.reason}".rstrip())
    finally:
        await close_quietly(writer)
