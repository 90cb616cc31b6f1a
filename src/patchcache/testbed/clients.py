"""BITS-like ranged download clients that talk through a proxy and check every byte.

Windows' Background Intelligent Transfer Service and Delivery Optimization fetch a file as a
sequence of ``Range: bytes=a-b`` requests (about 1 MiB each) on a kept-alive connection, and fail
when a proxy answers one with the whole object (``200`` instead of ``206``,
``DO_E_HTTP_BLOCKSIZE_MISMATCH``). :func:`bits_download` does the same through a proxy using
absolute-URI requests (RFC 9112 section 3.2.2), and checks each answer: status 206, the exact
``Content-Range`` (RFC 9110 section 14.4), the length, and the bytes themselves against the
expected content. :func:`run_clients` runs several at once in threads.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import urlsplit

from patchcache.errors import PatchcacheError
from patchcache.testbed.content import ContentSource, as_source, first_difference

MiB: Final = 1 << 20
BITS_USER_AGENT: Final = "Microsoft BITS/7.8"
DO_USER_AGENT: Final = "Microsoft-Delivery-Optimization/10.0"
_READ_PIECE = 256 * 1024

# What a client checks received bytes against: the expected content (or its bytes), or a
# predicate called with (offset, bytes) that returns False for wrong bytes.
Verifier: TypeAlias = ContentSource | bytes | Callable[[int, bytes], bool] | None


class DownloadError(PatchcacheError):
    """A ranged download got a wrong answer (status, Content-Range, length or bytes)."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        offset: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url
        self.offset = offset
        self.status = status


@dataclass(frozen=True, slots=True)
class DownloadStats:
    """How one client's download went."""

    url: str
    size: int
    bytes_received: int
    requests: int
    statuses: tuple[int, ...]
    elapsed: float
    connections: int


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A whole HTTP response as one client saw it."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def verify_bytes(verify: Verifier, offset: int, data: bytes, *, url: str = "") -> None:
    """Raise :class:`DownloadError` naming the first wrong byte if ``data`` is not what
    belongs at ``offset``; do nothing when ``verify`` is None."""
    if verify is None:
        return
    if callable(verify) and not isinstance(verify, ContentSource):
        if not verify(offset, data):
            raise DownloadError(
                f"verifier rejected {len(data)} bytes at offset {offset}", url=url, offset=offset
            )
        return
    source = as_source(verify)
    expected = source.read(offset, len(data))
    where = first_difference(expected, data)
    if where is None:
        return
    bad = offset + where
    if where >= min(len(expected), len(data)):
        raise DownloadError(
            f"length mismatch at offset {bad}: expected {len(expected)} bytes from offset "
            f"{offset}, got {len(data)}",
            url=url,
            offset=bad,
        )
    raise DownloadError(
        f"wrong byte at offset {bad}: expected 0x{expected[where]:02x}, got 0x{data[where]:02x}",
        url=url,
        offset=bad,
    )


class _Connection:
    """One kept-alive connection to the proxy (or, without a proxy, to the URL's server)."""

    def __init__(
        self, proxy_url: str | None, url: str, timeout: float, source: str | None = None
    ) -> None:
        target = urlsplit(proxy_url if proxy_url is not None else url)
        self._source = None if source is None else (source, 0)
        if target.scheme != "http" or target.hostname is None:
            raise ValueError(f"only http:// proxies and URLs are supported: {target.geturl()}")
        self._via_proxy = proxy_url is not None
        self._host = target.hostname
        self._port = target.port or 80
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.opened = 0

    def _open(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                self._host, self._port, timeout=self._timeout, source_address=self._source
            )
            self.opened += 1
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, url: str, headers: Mapping[str, str], timeout: float
    ) -> http.client.HTTPResponse:
        """Send a request and return the response head; retry once on a stale keep-alive."""
        parts = urlsplit(url)
        target = (
            url
            if self._via_proxy
            else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        )
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._open()
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, target, headers=dict(headers))
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server closed meanwhile: reconnect once.
                self.close()
                if not reused or attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError("timed out", url=url)
    return left


def http_request(
    proxy_url: str | None,
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    max_body: int = 64 * MiB,
) -> HttpReply:
    """One request through ``proxy_url`` (None: straight to the URL's server), whole reply."""
    conn = _Connection(proxy_url, url, timeout)
    try:
        response = conn.request(method, url, headers or {}, timeout)
        body = response.read(max_body + 1)
        if len(body) > max_body:
            raise DownloadError(f"body larger than max_body={max_body}", url=url)
        return HttpReply(response.status, response.reason, tuple(response.getheaders()), body)
    finally:
        conn.close()


def probe_size(
    proxy_url: str | None,
    url: str,
    *,
    timeout: float = 30.0,
    user_agent: str = BITS_USER_AGENT,
) -> int:
    """The object's size from a HEAD request, as BITS learns it before its ranges."""
    reply = http_request(
        proxy_url, url, method="HEAD", headers={"User-Agent": user_agent}, timeout=timeout
    )
    length = reply.header("Content-Length")
    if reply.status != 200 or length is None or not length.isdigit():
        raise DownloadError(
            f"HEAD answered {reply.status} with Content-Length {length!r}",
            url=url,
            status=reply.status,
        )
    return int(length)


def bits_download(
    proxy_url: str | None,
    url: str,
    *,
    size: int | None = None,
    chunk: int = MiB,
    verify: Verifier = None,
    timeout: float = 60.0,
    start: int = 0,
    stop_after: int | None = None,
    user_agent: str = BITS_USER_AGENT,
    headers: Mapping[str, str] | None = None,
) -> DownloadStats:
    """Download ``url`` as sequential ``bytes=a-b`` ranges of ``chunk`` bytes via the proxy.

    ``size`` None: learn it with a HEAD first. ``start``/``stop_after`` fetch only part of the
    object (a client that gives up). Every answer must be a 206 with exactly the asked
    Content-Range and the right bytes (per ``verify``), else :class:`DownloadError`.
    ``timeout`` bounds the whole download.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    began = time.monotonic()
    deadline = began + timeout
    if size is None:
        size = probe_size(proxy_url, url, timeout=_remaining(deadline, url), user_agent=user_agent)
    end = size if stop_after is None else min(size, start + stop_after)
    ranges = ((offset, min(offset + chunk, end) - 1) for offset in range(start, end, chunk))
    conn = _Connection(proxy_url, url, _remaining(deadline, url))
    base_headers = {"User-Agent": user_agent, **(headers or {})}
    return _read_ranges(conn, url, ranges, size, verify, base_headers, began, deadline)


def _read_ranges(
    conn: _Connection,
    url: str,
    ranges: Iterable[tuple[int, int]],
    size: int,
    verify: Verifier,
    headers: Mapping[str, str],
    began: float,
    deadline: float,
) -> DownloadStats:
    """Ask for each ``(first, last)`` range in turn on ``conn`` (closed at the end), check
    each answer, and tally them."""
    statuses: list[int] = []
    received = 0
    try:
        for first, last in ranges:
            asked = f"bytes={first}-{last}"
            response = conn.request(
                "GET", url, {**headers, "Range": asked}, _remaining(deadline, url)
            )
            statuses.append(response.status)
            received += _check_range_answer(
                response, url, first, last, size, verify, deadline, asked
            )
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"connection failed after {received} bytes: {exc!r}", url=url) from exc
    finally:
        conn.close()
    return DownloadStats(
        url=url,
        size=size,
        bytes_received=received,
        requests=len(statuses),
        statuses=tuple(statuses),
        elapsed=time.monotonic() - began,
        connections=conn.opened,
    )


def _check_range_answer(
    response: http.client.HTTPResponse,
    url: str,
    first: int,
    last: int,
    size: int,
    verify: Verifier,
    deadline: float,
    asked: str,
) -> int:
    """Read and check one ranged answer; return the body bytes read."""
    if response.status != 206:
        length = response.getheader("Content-Length")
        response.close()
        what = "whole object" if response.status == 200 else response.reason
        raise DownloadError(
            f"asked {asked}, got {response.status} instead of 206 ({what}, "
            f"Content-Length {length})",
            url=url,
            offset=first,
            status=response.status,
        )
    content_range = (response.getheader("Content-Range") or "").strip()
    wanted = f"bytes {first}-{last}/{size}"
    if content_range != wanted:
        response.close()
        raise DownloadError(
            f"asked {asked}, got Content-Range {content_range!r} instead of {wanted!r}",
            url=url,
            offset=first,
            status=206,
        )
    want = last - first + 1
    got = 0
    while got < want:
        _remaining(deadline, url)
        piece = response.read(min(_READ_PIECE, want - got))
        if not piece:
            raise DownloadError(
                f"asked {asked}, body ended after {got} of {want} bytes",
                url=url,
                offset=first + got,
            )
        verify_bytes(verify, first + got, piece, url=url)
        got += len(piece)
    if response.read(1):
        raise DownloadError(f"asked {asked}, body longer than {want} bytes", url=url, offset=last)
    return got


def sparse_download(
    proxy_url: str | None,
    url: str,
    *,
    size: int,
    read_bytes: int,
    chunk: int = 256 * 1024,
    seed: int = 0,
    verify: Verifier = None,
    timeout: float = 60.0,
    source: str | None = None,
) -> DownloadStats:
    """Read ``read_bytes`` of ``url`` as ``chunk``-byte ranges at distinct random offsets (an
    express update reading the parts it needs), each answer checked like :func:`bits_download`.
    ``source``: the client's own address (a 127.0.0.x, so that Squid sees distinct clients)."""
    rng = random.Random(seed)
    chunks = max(1, size // chunk)
    picks = rng.sample(range(chunks), min(chunks, max(1, read_bytes // chunk)))
    began = time.monotonic()
    deadline = began + timeout
    ranges = ((index * chunk, min(index * chunk + chunk, size) - 1) for index in picks)
    conn = _Connection(proxy_url, url, _remaining(deadline, url), source)
    headers = {"User-Agent": BITS_USER_AGENT}
    return _read_ranges(conn, url, ranges, size, verify, headers, began, deadline)


def run_sparse_clients(
    proxy_url: str | None,
    url: str,
    clients: int,
    *,
    size: int,
    read_bytes: int,
    verify: Verifier = None,
    timeout: float = 120.0,
    stagger: float = 0.0,
) -> list[DownloadStats]:
    """:func:`sparse_download` by ``clients`` clients at once, each from its own loopback
    address 127.0.0.(10 + i) and with its own offsets; raises one DownloadError on failures."""

    def one(index: int) -> DownloadStats:
        time.sleep(index * stagger)
        return sparse_download(
            proxy_url,
            url,
            size=size,
            read_bytes=read_bytes,
            seed=index,
            verify=verify,
            timeout=timeout,
            source=f"127.0.0.{10 + index}",
        )

    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="sparse-client") as pool:
        futures = [pool.submit(one, i) for i in range(clients)]
        errors = [f.exception(timeout=timeout + 30.0) for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        raise DownloadError(
            f"{len(failed)} of {clients} clients failed: {failed[0]}", url=url
        ) from failed[0]
    return [f.result() for f in futures]


def run_clients(
    proxy_url: str | None,
    urls: Sequence[str],
    *,
    size: int | None = None,
    chunk: int = MiB,
    verify: Verifier = None,
    timeout: float = 120.0,
    stagger: float = 0.0,
    stop_after: int | None = None,
    user_agent: str = BITS_USER_AGENT,
) -> list[DownloadStats]:
    """Run one :func:`bits_download` per URL concurrently (client ``i`` starts ``i * stagger``
    seconds after the first); return their stats in ``urls`` order or raise one
    :class:`DownloadError` listing every failed client."""
    if not urls:
        return []
    ready = threading.Barrier(len(urls))
    deadline = time.monotonic() + timeout

    def one(index: int, url: str) -> DownloadStats:
        ready.wait(timeout)
        if stagger:
            time.sleep(index * stagger)
        return bits_download(
            proxy_url,
            url,
            size=size,
            chunk=chunk,
            verify=verify,
            timeout=max(0.001, deadline - time.monotonic()),
            stop_after=stop_after,
            user_agent=user_agent,
        )

    with ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="bits-client") as pool:
        futures = [pool.submit(one, i, url) for i, url in enumerate(urls)]
        results: list[DownloadStats] = []
        failures: list[BaseException] = []
        for future in futures:
            # Each download is bounded by its own timeout; the slack covers thread start-up.
            error = future.exception(timeout=max(0.0, deadline - time.monotonic()) + 30.0)
            if error is None:
                results.append(future.result())
            else:
                failures.append(error)
    if failures:
        summary = "; ".join(str(err) for err in failures)
        raise DownloadError(
            f"{len(failures)} of {len(urls)} clients failed: {summary}", url=urls[0]
        ) from failures[0]
    return results
