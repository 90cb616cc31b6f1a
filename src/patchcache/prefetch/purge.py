"""Remove a bad object from Squid's cache with the PURGE method.

Squid answers `PURGE URL` with 200 when it released a stored entry and 404 when it had none
(Squid's `purge` support is enabled by any `acl ... method PURGE` line; the generated squid.conf
allows it from localhost only). Two names reach the entry; both verified on Squid 5.7 by
tests/integration/test_prefetch_purge.py, each one alone releases it:

- the key URL itself (`http://<class>.patchcache.squid.internal/...`): that pseudo-host is in no
  class, so `store_id_access` skips the helper and the URL *is* the store key. Tried first: it
  works even when the store-ID helper is down or bypassed;
- the original URL: Squid runs the store-ID helper for a PURGE as for a GET and looks up the
  helper's key. Tried second, and answers 404 when the first one already released the entry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from patchcache.errors import ProtocolError
from patchcache.prefetch.fetch import (
    FetchError,
    Proxy,
    close_quietly,
    open_proxy_connection,
    proxy_exchange,
    read_some,
)
from patchcache.prefetch.h11client import ResponseHead


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    url: str
    status: int | None
    """200: released; 404: was not cached; None: the request failed (see `error`)."""
    error: str | None = None

    @property
    def purged(self) -> bool:
        return self.status == 200


async def purge_url(proxy: Proxy, url: str, *, timeout: float = 10.0) -> PurgeOutcome:
    """Send one `PURGE url` to the proxy; never raises for network or protocol trouble."""
    try:
        reader, writer = await open_proxy_connection(proxy, timeout)
    except FetchError as exc:
        return PurgeOutcome(url, None, str(exc))
    try:
        exchange = proxy_exchange("PURGE", url, [])
        writer.write(exchange.request)
        async with asyncio.timeout(timeout):
            await writer.drain()
        while True:
            data = await read_some(reader, 16 * 1024, timeout)
            events = exchange.feed(data) if data else exchange.feed_eof()
            for event in events:
                if isinstance(event, ResponseHead):
                    return PurgeOutcome(url, event.status)
    except (FetchError, ProtocolError, OSError, TimeoutError, ValueError) as exc:
        return PurgeOutcome(url, None, str(exc) or type(exc).__name__)
    finally:
        await close_quietly(writer)


async def purge_object(proxy: Proxy, url: str, key: str) -> tuple[PurgeOutcome, ...]:
    """PURGE the key URL, then the original URL; returns both outcomes in that order."""
    outcomes = [await purge_url(proxy, key)]
    if url != key:
        outcomes.append(await purge_url(proxy, url))
    return tuple(outcomes)


def summarize(outcomes: tuple[PurgeOutcome, ...]) -> str:
    """One line for the record's last_error, e.g. `purged via key URL`."""
    names = ("key URL", "original URL")
    purged = [names[i] for i, o in enumerate(outcomes) if o.purged]
    if purged:
        return "purged via " + " and ".join(purged)
    failures = [f"{names[i]}: {o.error or f'HTTP {o.status}'}" for i, o in enumerate(outcomes)]
    return "nothing purged (" + "; ".join(failures) + ")"
