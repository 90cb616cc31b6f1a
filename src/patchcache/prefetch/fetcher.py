"""What the worker fetches through: the `Fetcher` interface and the real one, `ProxyFetcher`.

The worker (`worker.Prefetcher`) needs four things from the network, all through Squid: the size
probe, the fill, the PURGE of a bad object, and whether the proxy accepts connections again after
it refused one. Behind this interface its unit tests use an in-memory fake
(tests/support/fake_fetcher.py); `ProxyFetcher` is the real thing (h11 over asyncio streams, see
`fetch` and `purge`), tested on loopback and through a real Squid.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from patchcache.prefetch.fetch import (
    FetchResult,
    PayCallback,
    ProgressCallback,
    Proxy,
    fetch_whole,
    probe_size,
)
from patchcache.prefetch.purge import PurgeOutcome, purge_object


class Fetcher(Protocol):
    """Fills through the proxy. Errors are `fetch.FetchError` (`ProxyUnreachable` when the
    proxy did not accept the connection)."""

    async def probe_size(self, url: str, *, idle_timeout: float) -> int | None:
        """The object's total size (a 1-byte range), or None when the answer does not say."""

    async def fetch_whole(
        self,
        url: str,
        *,
        digest: str | None,
        pay: PayCallback | None,
        piece_size: int,
        progress: ProgressCallback | None,
        idle_timeout: float,
        headers: tuple[tuple[str, str], ...],
    ) -> FetchResult:
        """Read the whole object (`Range: bytes=0-`), awaiting `pay(n)` after each piece and
        calling `progress(bytes, total)`; see `fetch.fetch_whole`."""

    async def purge_object(self, url: str, key: str) -> tuple[PurgeOutcome, ...]:
        """PURGE the key URL, then the original URL; never raises for network trouble."""

    async def reachable(self) -> bool:
        """Whether the proxy accepts a connection now."""


class ProxyFetcher:
    """The real `Fetcher`: HTTP/1.1 through the proxy at `proxy`, one connection per request."""

    def __init__(self, proxy: Proxy, *, connect_timeout: float = 10.0) -> None:
        self.proxy = proxy
        self._connect_timeout = connect_timeout

    async def probe_size(self, url: str, *, idle_timeout: float) -> int | None:
        return await probe_size(
            self.proxy, url, connect_timeout=self._connect_timeout, idle_timeout=idle_timeout
        )

    async def fetch_whole(
        self,
        url: str,
        *,
        digest: str | None,
        pay: PayCallback | None,
        piece_size: int,
        progress: ProgressCallback | None,
        idle_timeout: float,
        headers: tuple[tuple[str, str], ...],
    ) -> FetchResult:
        return await fetch_whole(
            self.proxy,
            url,
            digest=digest,
            pay=pay,
            piece_size=piece_size,
            progress=progress,
            connect_timeout=self._connect_timeout,
            idle_timeout=idle_timeout,
            headers=headers,
        )

    async def purge_object(self, url: str, key: str) -> tuple[PurgeOutcome, ...]:
        return await purge_object(self.proxy, url, key)

    async def reachable(self) -> bool:
        try:
            async with asyncio.timeout(5.0):
                _reader, writer = await asyncio.open_connection(self.proxy.host, self.proxy.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
