"""Run a helper answer function as a Squid helper process, over stdin/stdout.

The adapter reads whatever input is available (up to 64 KiB), decodes all complete lines with
:class:`~patchcache.helpers.protocol.LineDecoder`, calls ``answer`` for each request and sends
all replies of the chunk with one write. Batching is what makes it fast: there is no per-line
await, syscall or encode. A lone line (Squid sends one and waits, per channel) is answered at
once, because a read returns as soon as any bytes are there. An answer that depends on the URL
alone (:class:`UrlAnswer`, the store-ID helper's) is asked per URL for every well-formed line,
with no event or reply object built per line: that halves the per-line cost on a stream of
repeated URLs (bench/storeid_vs_perl.py).

stdin and stdout are driven as raw non-blocking file descriptors with ``add_reader`` /
``add_writer``, not with asyncio's pipe transports: on Linux Squid gives a helper one
socketpair as both stdin and stdout (``IPC_STREAM`` is ``IPC_UNIX_STREAM``, src/ipc.cc), and
asyncio's write-pipe transport takes "readable" on its fd as "peer closed" and would shut
itself down on the next request. Regular files (``helper < urls.txt``) work too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from patchcache.helpers.protocol import (
    DEFAULT_MAX_LINE,
    DEFER,
    BrokenHelper,
    Deferrals,
    HelperEvent,
    HelperRequest,
    LineDecoder,
    PreparedReply,
    Reply,
    malformed_reply,
    parse_text,
    replies_by_url,
    reply_text,
)

__all__ = [
    "CHUNK_SIZE",
    "Answer",
    "ChunkSource",
    "DeferringUrlAnswer",
    "FdChunkSource",
    "FdReplySink",
    "ReplySink",
    "UrlAnswer",
    "answer_batch",
    "answer_by_url",
    "run_helper",
    "serve_lines",
]

CHUNK_SIZE = 65536
_MAX_MESSAGE = 300  # keep BH messages (and the cache.log lines they become) short

Answer = Callable[[HelperRequest], Reply]


@runtime_checkable
class UrlAnswer(Protocol):
    """An answer that depends on the request's URL alone, e.g. the store-ID helper's.

    The runtime then answers clean lines with ``for_url`` directly, building no event."""

    def __call__(self, request: HelperRequest) -> Reply: ...

    def for_url(self, url: str) -> str:
        """The reply's text for ``url``, without channel and newline (``PreparedReply.text``)."""
        ...


@runtime_checkable
class DeferringUrlAnswer(UrlAnswer, Protocol):
    """A :class:`UrlAnswer` whose ``for_url`` may return :data:`~patchcache.helpers.protocol.DEFER`
    for a line it cannot answer without waiting (the store-ID helper's HEAD, see
    head_probe.py). The runtime answers the other lines of the chunk at once, and that line when
    ``later`` returns, on its own channel: Squid matches replies by channel, in any order."""

    async def later(self, url: str, extras: str) -> str:
        """The reply's text for a deferred line; must not raise."""
        ...

    def now(self, url: str) -> str:
        """The reply's text without waiting (for a line that has no channel)."""
        ...


_log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """What :func:`serve_lines` reads from; ``asyncio.StreamReader`` fits."""

    async def read(self, n: int = -1) -> bytes: ...


class ReplySink(Protocol):
    """What :func:`serve_lines` writes to; ``asyncio.StreamWriter`` fits."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


def _one_line(text: str) -> str:
    text = " ".join(text.split())  # no newlines, tabs or NUL runs in a log line / BH message
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _internal_error(event: HelperEvent, exc: BaseException) -> str:
    url = event.url if isinstance(event, HelperRequest) else "-"
    message = _one_line(f"internal error: {type(exc).__name__}: {exc}".replace("\x00", " "))
    _log.error("helper answer failed for %s: %s", _one_line(url), message)
    return reply_text(event.channel, BrokenHelper(message))


def answer_batch(answer: Answer, events: list[HelperEvent]) -> bytes:
    """The reply lines for ``events`` (from a LineDecoder), in order, as one buffer. Never raises.

    Malformed lines get :func:`~patchcache.helpers.protocol.malformed_reply`; an exception
    from ``answer`` (or a reply that cannot be formatted) answers that one line
    ``BH message="internal error: ..."`` and is logged.
    """
    texts: list[str] = []
    append = texts.append
    for event in events:
        if isinstance(event, HelperRequest):
            try:
                append(reply_text(event.channel, answer(event)))
            except Exception as exc:
                append(_internal_error(event, exc))
        else:
            append(reply_text(event.channel, malformed_reply(event)))
    try:
        return "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        pass
    # Rare: some reply holds a lone surrogate. Find it and answer that line BH instead.
    out = bytearray()
    for event, text in zip(events, texts, strict=True):
        try:
            out += text.encode("utf-8")
        except UnicodeEncodeError as exc:
            out += _internal_error(event, exc).encode("utf-8")
    return bytes(out)


def answer_by_url(
    reply_for_url: Callable[[str], str],
    items: list[str | HelperEvent],
    deferrals: Deferrals | None = None,
) -> bytes:
    """:func:`answer_batch` for items from ``LineDecoder.feed_lines``. Never raises."""
    try:
        return replies_by_url(items, reply_for_url, deferrals).encode("utf-8")
    except Exception:
        # Some line failed: answer line by line, so that it alone gets BH (and is logged).
        # (Lines deferred before the failure are answered twice: Squid ignores the second.)
        events = [parse_text(item) if isinstance(item, str) else item for item in items]

        def one(request: HelperRequest) -> PreparedReply:
            text = reply_for_url(request.url)
            if text is DEFER:
                text = deferrals.now(request.url) if deferrals is not None else text
            return PreparedReply(text)

        return answer_batch(one, events)


class _LaterReplies:
    """The runtime's :class:`Deferrals`: one task per deferred line, its reply written alone."""

    def __init__(self, answer: DeferringUrlAnswer, writer: ReplySink, lock: asyncio.Lock) -> None:
        self._answer = answer
        self._writer = writer
        self._lock = lock
        self.pending: set[asyncio.Task[None]] = set()

    def now(self, url: str) -> str:
        return self._answer.now(url)

    def add(self, channel: str, url: str, extras: str) -> None:
        task = asyncio.ensure_future(self._reply(channel, url, extras))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _reply(self, channel: str, url: str, extras: str) -> None:
        request = HelperRequest(channel, url, tuple(extras.split()))
        try:
            text = await self._answer.later(url, extras)
            data = f"{channel} {text}\n".encode()
        except Exception as exc:
            data = _internal_error(request, exc).encode("utf-8", "replace")
        try:
            async with self._lock:
                self._writer.write(data)
                await self._writer.drain()
        except OSError as exc:  # Squid gone: the main loop sees the end of input too
            _log.debug("late reply not written: %s", exc)


async def serve_lines(
    answer: Answer,
    reader: ChunkSource,
    writer: ReplySink,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Answer request lines from ``reader`` on ``writer`` until end of input.

    One read, one write and one drain per chunk. Returns at EOF after the last reply is
    written; write errors (Squid gone) propagate as OSError.
    """
    decoder = LineDecoder(max_line)
    by_url = answer.for_url if isinstance(answer, UrlAnswer) else None
    # Late replies and the chunk's replies share the writer: one drain at a time.
    lock = asyncio.Lock()
    later = _LaterReplies(answer, writer, lock) if isinstance(answer, DeferringUrlAnswer) else None
    while True:
        data = await reader.read(chunk_size)
        if by_url is not None:
            lines = decoder.feed_lines(data) if data else list[str | HelperEvent](decoder.close())
            replies = answer_by_url(by_url, lines, later) if lines else b""
        else:
            events = decoder.feed(data) if data else decoder.close()
            replies = answer_batch(answer, events) if events else b""
        if replies:
            async with lock:
                writer.write(replies)
                await writer.drain()
        if not data:
            if later is not None and later.pending:
                await asyncio.gather(*later.pending, return_exceptions=True)
            return


class FdChunkSource:
    """Reads a non-blocking file descriptor; waits in the event loop only when it is empty."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self, n: int = -1) -> bytes:
        size = n if n > 0 else CHUNK_SIZE
        # One pass of the event loop per chunk, even when input never runs dry: that is when
        # the SIGTERM/SIGINT handlers get to run.
        await asyncio.sleep(0)
        while True:
            try:
                return os.read(self._fd, size)
            except BlockingIOError:
                await _fd_ready(self._fd, writable=False)
            except ConnectionResetError:
                return b""  # a socket peer that vanished is an end of input too


class FdReplySink:
    """Buffers replies and writes them to a non-blocking file descriptor in ``drain``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data

    async def drain(self) -> None:
        while self._buffer:
            try:
                written = os.write(self._fd, self._buffer)
            except BlockingIOError:
                await _fd_ready(self._fd, writable=True)
            else:
                del self._buffer[:written]


async def _fd_ready(fd: int, *, writable: bool) -> None:
    """Wait until ``fd`` is readable (or writable). Regular files never get here."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writable:
        loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            loop.remove_writer(fd)
    else:
        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def _serve_fds(answer: Answer, stdin_fd: int, stdout_fd: int, max_line: int) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop_signals: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # Only possible in the main thread; elsewhere the caller owns signals.
            loop.add_signal_handler(signum, task.cancel)
            stop_signals.append(signum)
    try:
        await serve_lines(
            answer, FdChunkSource(stdin_fd), FdReplySink(stdout_fd), max_line=max_line
        )
    finally:
        for signum in stop_signals:
            loop.remove_signal_handler(signum)


def run_helper(
    answer: Answer,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    max_line: int = DEFAULT_MAX_LINE,
) -> int:
    """Serve Squid on ``stdin_fd``/``stdout_fd`` until EOF or SIGTERM/SIGINT; the exit status.

    Returns 0 on EOF, on a signal, and when stdout is closed (Squid is gone). While it runs,
    ``sys.stdout`` points at stderr, so a stray ``print`` lands in cache.log instead of
    corrupting the reply stream.
    """
    blocking: dict[int, bool] = {}
    try:
        for fd in (stdin_fd, stdout_fd):
            blocking[fd] = os.get_blocking(fd)
            os.set_blocking(fd, False)
        with contextlib.redirect_stdout(sys.stderr):
            asyncio.run(_serve_fds(answer, stdin_fd, stdout_fd, max_line))
    except asyncio.CancelledError:
        pass  # SIGTERM / SIGINT: a requested, clean stop
    except (BrokenPipeError, ConnectionResetError):
        pass  # Squid closed our stdout: nobody is left to answer
    except OSError as exc:
        _log.error("helper I/O failed: %s", _one_line(str(exc)))
        return 1
    finally:
        for fd, was_blocking in blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was_blocking)
    return 0
