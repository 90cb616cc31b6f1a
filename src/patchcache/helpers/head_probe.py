"""One HEAD through Squid: an object's size, validators and cacheability before its first range.

The store-ID helper asks this on the first sight of an object whose class may expand, when the
shared state knows nothing of its size (Delivery Optimization sends no HEAD of its own). The
request carries `PROBE_HEADER`: the configuration `patchcache squid-conf` writes keeps such
requests away from the store-ID helper (no recursion, no key, never expanded) and from the ICAP
service. Going through Squid, not straight to the origin, keeps Squid's routing (peers,
`never_direct`, ACLs) in force.

Bounded: one connection, one request, the whole exchange within `timeout` seconds; anything
else (a refusal, a timeout, a reply without a usable Content-Length) is "unknown", and the
helper then answers without `expand=1`, as it always did for unknown objects.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

PROBE_HEADER = "X-PatchCache-Probe"
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class HeadFacts:
    """What a HEAD's response says about the object; `size` None: unknown or not cacheable."""

    size: int | None
    etag: str | None = None
    last_modified: str | None = None
    why: str = ""


def proxy_address(via: str) -> tuple[str, int]:
    """`http://host:port` (or `host:port`) of the proxy; raises ValueError."""
    parts = urlsplit(via if "://" in via else f"http://{via}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--head-via {via!r} must look like http://127.0.0.1:3128")
    return parts.hostname, parts.port or 3128


def judge(status: int, headers: dict[str, str]) -> HeadFacts:
    """The facts of a HEAD's response; `size` only for a cacheable 200 with a Content-Length."""
    if status != 200:
        return HeadFacts(None, why=f"status {status}")
    cache_control = headers.get("cache-control", "").lower()
    for word in ("no-store", "private"):
        if word in cache_control:
            return HeadFacts(None, why=f"Cache-Control {word}")
    if headers.get("vary", "").strip() == "*":
        return HeadFacts(None, why="Vary: *")
    length = headers.get("content-length", "").strip()
    if not (length.isascii() and length.isdigit()):
        return HeadFacts(None, why="no Content-Length")
    return HeadFacts(int(length), headers.get("etag"), headers.get("last-modified"))


def parse_head(block: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of a response head (up to the blank line)."""
    lines = block.decode("latin-1").split("\r\n")
    status_line = lines[0].split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers


async def head_facts(via: tuple[str, int], url: str, timeout: float) -> HeadFacts:
    """HEAD `url` through the proxy at `via`; never raises (errors are an unknown size)."""
    try:
        return await asyncio.wait_for(_head(via, url), timeout)
    except TimeoutError:
        return HeadFacts(None, why=f"no answer within {timeout:g} s")
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return HeadFacts(None, why=f"{type(exc).__name__}: {exc}")


async def _head(via: tuple[str, int], url: str) -> HeadFacts:
    if any(c in url for c in "\r\n\x00 "):
        raise ValueError("URL holds characters a request line cannot carry")
    host = urlsplit(url).netloc
    reader, writer = await asyncio.open_connection(via[0], via[1], limit=_MAX_HEAD)
    try:
        writer.write(
            f"HEAD {url} HTTP/1.1\r\nHost: {host}\r\n{PROBE_HEADER}: 1\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        block = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return judge(*parse_head(block[:-4]))
