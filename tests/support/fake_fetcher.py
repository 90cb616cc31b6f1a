"""An in-memory `Fetcher` for the worker's unit tests: no sockets, every call recorded.

``FakeFetcher({url: body})`` serves each body whole, in pieces of the worker's piece size,
paying the throttle and reporting progress as the real fetcher does; ``fail={url: FetchError}``
makes a URL's fill (and size probe) raise; ``purge_status`` is what both PURGEs answer.
``calls`` lists ``(what, url)`` for ``probe``, ``fetch`` and ``purge`` (key URL, then the
original URL, as the real one sends them). The real fetcher is tested on loopback
(tests/unit/test_prefetch_worker.py) and through Squid (tests/integration/test_prefetch_*.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from patchcache.prefetch.fetch import FetchError, FetchResult, PayCallback, ProgressCallback
from patchcache.prefetch.purge import PurgeOutcome


@dataclass
class FakeFetcher:
    bodies: dict[str, bytes] = field(default_factory=dict)
    fail: dict[str, FetchError] = field(default_factory=dict)
    purge_status: int = 200
    status: int = 206
    up: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[tuple[str, str], ...]] = field(default_factory=list)
    """The extra request headers of each fill."""

    def _body(self, url: str) -> bytes:
        error = self.fail.get(url)
        if error is not None:
            raise error
        body = self.bodies.get(url)
        if body is None:
            raise FetchError("HTTP 404 Not Found")
        return body

    async def probe_size(self, url: str, *, idle_timeout: float) -> int | None:
        self.calls.append(("probe", url))
        return len(self._body(url))

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
        self.calls.append(("fetch", url))
        self.headers.append(headers)
        body = self._body(url)
        hasher = hashlib.new(digest) if digest else None
        for offset in range(0, len(body), piece_size):
            piece = body[offset : offset + piece_size]
            if hasher is not None:
                hasher.update(piece)
            if progress is not None:
                progress(offset + len(piece), len(body))
            if pay is not None:
                await pay(len(piece))
            await asyncio.sleep(0)  # a real read lets other tasks run
        return FetchResult(
            status=self.status,
            total=len(body),
            digest=hasher.hexdigest() if hasher is not None else None,
            etag=None,
            last_modified=None,
        )

    async def purge_object(self, url: str, key: str) -> tuple[PurgeOutcome, ...]:
        self.calls += [("purge", key), ("purge", url)]
        return (PurgeOutcome(key, self.purge_status), PurgeOutcome(url, 404))

    async def reachable(self) -> bool:
        return self.up

    def fetched(self) -> list[str]:
        return [url for what, url in self.calls if what == "fetch"]
