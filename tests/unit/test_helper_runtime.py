"""Helper runtime: a real helper process (python -c ... run_helper) fed through real pipes and
sockets, plus the pure batch answering and serve_lines over asyncio streams.

Every wait is bounded: subprocess timeouts and select() deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.reply_sink import MemorySink

from patchcache.helpers.protocol import (
    EMPTY_LINE,
    BrokenHelper,
    Err,
    HelperEvent,
    HelperRequest,
    LineDecoder,
    MalformedLine,
    Ok,
    PreparedReply,
    Reply,
)
from patchcache.helpers.runtime import (
    Answer,
    UrlAnswer,
    answer_batch,
    answer_by_url,
    serve_lines,
)
from patchcache.testbed.squid_logs import wait_until, wait_until_async

TIMEOUT = 30.0

# The helper under test. Its answer function knows a few magic URLs that misbehave.
HELPER = """
import sys
import time
from patchcache.helpers.protocol import Err, Ok
from patchcache.helpers.runtime import run_helper

def answer(request):
    if request.url == "http://raise/":
        raise RuntimeError("boom")
    if request.url == "http://err/":
        return Err()
    if request.url.startswith("http://slow/"):
        time.sleep(0.0002)
        return Err()
    if request.url == "http://print/":
        print("stray output from answer")
    if request.url == "http://not-a-reply/":
        return "OK"
    if request.url == "http://bad-key/":
        return Ok((("bad key", "v"),))
    return Ok((("store-id", "key:" + request.url), ("extras", " ".join(request.extras))))

sys.exit(run_helper(answer, max_line=int(sys.argv[1])))
"""


def helper_command(max_line: int = 256) -> list[str]:
    return [sys.executable, "-c", HELPER, str(max_line)]


def run_once(data: bytes, max_line: int = 256) -> subprocess.CompletedProcess[bytes]:
    """Pipe ``data`` in, close stdin, collect everything."""
    return subprocess.run(
        helper_command(max_line), input=data, capture_output=True, timeout=TIMEOUT, check=False
    )


def ok(url: str, extras: str = "", channel: str | None = None) -> bytes:
    prefix = f"{channel} " if channel is not None else ""
    value = f'"{extras}"' if " " in extras or not extras else extras
    return f"{prefix}OK store-id=key:{url} extras={value}\n".encode()


class LineReader:
    """Reads reply lines from a file descriptor with a deadline (no blocking forever)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def line(self, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"no reply line within {timeout} s (have {self.buffer!r})"
            readable, _, _ = select.select([self.fd], [], [], left)
            if readable:
                chunk = os.read(self.fd, 65536)
                assert chunk, f"helper closed its output (have {self.buffer!r})"
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"


@contextmanager
def interactive_helper(max_line: int = 256) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        helper_command(max_line),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(BrokenPipeError):  # input left for a dead helper
                    stream.close()


def send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()


# --- a real helper process --------------------------------------------------------------------


def test_without_concurrency_answers_in_order_and_exits_0_on_eof() -> None:
    done = run_once(b"http://a/ 127.0.0.1/127.0.0.1 - GET\nhttp://b/\nhttp://err/ x\n")
    assert done.returncode == 0
    assert done.stdout == ok("http://a/", "127.0.0.1/127.0.0.1 - GET") + ok("http://b/") + b"ERR\n"
    assert done.stderr == b""


def test_with_concurrency_echoes_channel_ids() -> None:
    done = run_once(b"0 http://a/ -\n1 http://b/\n17 http://err/\n0 http://c/\r\n")
    assert done.returncode == 0
    assert done.stdout == (
        ok("http://a/", "-", "0")
        + ok("http://b/", "", "1")
        + b"17 ERR\n"
        + ok("http://c/", "", "0")
    )


def test_bad_lines_are_answered_and_do_not_stop_the_helper() -> None:
    """An unreadable URL (not UTF-8, over-long) is ERR: BH would make Squid retry it twice
    and log three errors per request. Lines that break the protocol itself get BH."""
    done = run_once(
        b"\n"
        b"1 http://a/ \xff\n"
        b"2\n"
        b"3 http://long/" + b"x" * 300 + b"\n"
        b"http://long/" + b"y" * 300 + b"\n"
        b"4 http://after/\n",
        max_line=64,
    )
    assert done.returncode == 0
    assert done.stdout.splitlines(keepends=True) == [
        b'BH message="empty request line"\n',
        b"1 ERR\n",
        b'2 BH message="channel ID without URL"\n',
        b"3 ERR\n",
        b"ERR\n",
        ok("http://after/", "", "4"),
    ]


def test_answer_that_raises_gets_bh_for_that_line_only() -> None:
    done = run_once(b"1 http://raise/\n2 http://ok/\nhttp://raise/\nhttp://ok2/\n")
    assert done.returncode == 0
    assert done.stdout == (
        b'1 BH message="internal error: RuntimeError: boom"\n'
        + ok("http://ok/", "", "2")
        + b'BH message="internal error: RuntimeError: boom"\n'
        + ok("http://ok2/")
    )
    log = done.stderr.decode().splitlines()
    assert len(log) == 2  # one line per failure, no traceback
    assert all("http://raise/" in line and "RuntimeError: boom" in line for line in log)


@pytest.mark.parametrize(
    ("url", "error"), [("http://not-a-reply/", "TypeError"), ("http://bad-key/", "ValueError")]
)
def test_unformattable_reply_gets_bh(url: str, error: str) -> None:
    done = run_once(f"5 {url}\n6 http://ok/\n".encode())
    assert done.returncode == 0
    first, second = done.stdout.splitlines(keepends=True)
    assert first.startswith(f'5 BH message="internal error: {error}: '.encode())
    assert second == ok("http://ok/", "", "6")


def test_stray_print_goes_to_stderr_not_to_squid() -> None:
    done = run_once(b"1 http://print/\n")
    assert done.stdout == ok("http://print/", "", "1")
    assert b"stray output from answer" in done.stderr


def test_partial_last_line_is_answered_at_eof() -> None:
    done = run_once(b"1 http://a/\n2 http://b/")
    assert done.stdout == ok("http://a/", "", "1") + ok("http://b/", "", "2")
    assert done.returncode == 0


def test_empty_input_exits_0() -> None:
    done = run_once(b"")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_one_line_is_answered_without_waiting_for_more() -> None:
    """Squid sends one line per channel and waits: no buffering until a chunk fills up."""
    with interactive_helper() as proc:
        assert proc.stdout is not None
        replies = LineReader(proc.stdout.fileno())
        send(proc, b"0 http://a/\n")
        assert replies.line() == ok("http://a/", "", "0")
        send(proc, b"1 http://b")  # even a line in two writes
        time.sleep(0.05)
        send(proc, b"/ x\n")
        assert replies.line() == ok("http://b/", "x", "1")
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT) == 0


def test_many_lines_at_once_all_answered_in_order(tmp_path: Path) -> None:
    lines = [f"{i % 100} http://host{i}.example/file{i}.cab - GET\n" for i in range(20_000)]
    done = run_once("".join(lines).encode(), max_line=65536)
    assert done.returncode == 0
    replies = done.stdout.splitlines(keepends=True)
    assert replies == [
        ok(f"http://host{i}.example/file{i}.cab", "- GET", str(i % 100)) for i in range(20_000)
    ]


def test_socketpair_as_stdin_and_stdout_like_squid() -> None:
    """Squid on Linux hands a helper one socketpair as stdin and stdout (src/ipc.cc)."""
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(
            helper_command(), stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE
        )
        theirs.close()
        try:
            replies = LineReader(ours.fileno())
            for i in range(5):  # request, reply, request, ...: replies must keep flowing
                ours.sendall(f"{i} http://a/{i}\n".encode())
                assert replies.line() == ok(f"http://a/{i}", "", str(i))
            ours.sendall(b"".join(f"{i} http://b/{i}\n".encode() for i in range(3000)))
            for i in range(3000):
                assert replies.line() == ok(f"http://b/{i}", "", str(i))
            ours.shutdown(socket.SHUT_WR)
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate(timeout=TIMEOUT)
    assert stderr == b""


def test_regular_files_as_stdin_and_stdout(tmp_path: Path) -> None:
    requests, replies = tmp_path / "requests", tmp_path / "replies"
    requests.write_bytes(b"http://a/\n3 http://b/ x\n")
    with requests.open("rb") as stdin, replies.open("wb") as stdout:
        done = subprocess.run(
            helper_command(),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert replies.read_bytes() == ok("http://a/") + ok("http://b/", "x", "3")


def test_closed_stdout_ends_the_helper_cleanly() -> None:
    """Squid gone: the reply write fails; the helper exits 0 without a traceback."""
    with interactive_helper() as proc:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.close()
        send(proc, b"1 http://a/\n")  # stdin stays open: EOF is not why it exits
        assert proc.wait(timeout=TIMEOUT) == 0
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    assert b"Traceback" not in stderr
    assert stderr == b""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_exit_cleanly(signum: signal.Signals) -> None:
    with interactive_helper() as proc:
        assert proc.stdout is not None
        send(proc, b"0 http://a/\n")  # once answered, the signal handlers are in place
        assert LineReader(proc.stdout.fileno()).line() == ok("http://a/", "", "0")
        proc.send_signal(signum)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == b""


def test_sigterm_while_input_keeps_coming() -> None:
    """Under constant load the event loop still gets a turn per chunk to see the signal.

    Slow answers keep the helper behind, so every read finds input waiting and never has to
    wait in the event loop, where signal handlers run.
    """
    with interactive_helper() as proc:
        assert proc.stdout is not None and proc.stdin is not None
        stdin_fd, stdout_fd = proc.stdin.fileno(), proc.stdout.fileno()
        replies = LineReader(stdout_fd)
        send(proc, b"0 http://a/\n")
        assert replies.line() == ok("http://a/", "", "0")
        os.set_blocking(stdin_fd, False)
        chunk = (b"1 http://slow/" + b"p" * 90 + b"\n") * 200
        for _ in range(10):  # fill the pipe
            with contextlib.suppress(BlockingIOError):
                os.write(stdin_fd, chunk)
        proc.send_signal(signal.SIGTERM)

        def keep_loading() -> int | None:
            """One round of more input and draining output (select waits up to 50 ms)."""
            if proc.poll() is not None:
                return proc.returncode
            readable, writable, _ = select.select([stdout_fd], [stdin_fd], [], 0.05)
            if writable:
                with contextlib.suppress(BlockingIOError, BrokenPipeError):
                    os.write(stdin_fd, chunk)
            if readable:
                os.read(stdout_fd, 1 << 20)
            return proc.poll()

        wait_until(
            keep_loading,
            lambda code: code is not None,
            timeout=TIMEOUT,
            interval=0,
            awaiting="the helper to exit on SIGTERM under load",
        )
        assert proc.wait(timeout=TIMEOUT) == 0


# --- pure parts -------------------------------------------------------------------------------


def echo(request: HelperRequest) -> Reply:
    if request.url == "http://raise/":
        raise KeyError("nope")
    if request.url == "http://surrogate/":
        return Ok((("store-id", "\udc80"),))
    return Ok((("store-id", request.url),))


def test_answer_batch_answers_each_event_once() -> None:
    events: list[HelperEvent] = [
        HelperRequest("1", "http://a/", ()),
        MalformedLine("2", EMPTY_LINE),
        HelperRequest(None, "http://raise/", ()),
        HelperRequest("3", "http://surrogate/", ()),
        MalformedLine(None, "x"),
        HelperRequest("4", "http://b/", ("e",)),
    ]
    replies = answer_batch(echo, events).splitlines(keepends=True)
    assert replies[:3] == [
        b"1 OK store-id=http://a/\n",
        b'2 BH message="empty request line"\n',
        b"BH message=\"internal error: KeyError: 'nope'\"\n",
    ]
    # A lone surrogate cannot be sent: that line alone becomes BH.
    assert replies[3].startswith(b'3 BH message="internal error: UnicodeEncodeError: ')
    assert replies[4:] == [b"BH message=x\n", b"4 OK store-id=http://b/\n"]
    assert answer_batch(echo, []) == b""


class EchoByUrl:
    """A URL-only answer (as the store-ID helper's), with the same failures as ``echo``."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: HelperRequest) -> Reply:
        return PreparedReply(self.for_url(request.url))

    def for_url(self, url: str) -> str:
        self.calls += 1
        reply = echo(HelperRequest(None, url, ()))
        assert isinstance(reply, Ok)
        return "OK store-id=" + reply.pairs[0][1]


def test_answer_by_url_isolates_a_failing_line() -> None:
    decoder = LineDecoder()
    items = decoder.feed_lines(b"1 http://a/\n2\n http://raise/\n3 http://surrogate/\n")
    assert all(isinstance(item, str) for item in items)  # the fast path is taken
    items += decoder.feed_lines(b"\xff\n4 http://b/ e\n")  # not ASCII: events
    replies = answer_by_url(EchoByUrl().for_url, items).splitlines(keepends=True)
    assert replies[:3] == [
        b"1 OK store-id=http://a/\n",
        b'2 BH message="channel ID without URL"\n',
        b"BH message=\"internal error: KeyError: 'nope'\"\n",
    ]
    assert replies[3].startswith(b'3 BH message="internal error: UnicodeEncodeError: ')
    assert replies[4:] == [
        b"ERR\n",
        b"4 OK store-id=http://b/\n",
    ]


def test_internal_error_message_is_one_short_line() -> None:
    def explode(request: HelperRequest) -> Reply:
        raise ValueError("line one\nline two\x00" + "z" * 1000)

    reply = answer_batch(explode, [HelperRequest("9", "http://a/", ())])
    assert reply.count(b"\n") == 1 and b"\x00" not in reply
    assert reply.startswith(b'9 BH message="internal error: ValueError: line one line two ')
    assert len(reply) < 400


@pytest.mark.parametrize("by_url", [False, True], ids=["events", "by-url"])
def test_serve_lines_over_asyncio_streams_writes_once_per_chunk(by_url: bool) -> None:
    # Both ways of answering: an event per line, and a URL-only answer (the store-ID helper's).
    answer: Answer = EchoByUrl() if by_url else echo
    assert isinstance(answer, UrlAnswer) == by_url

    async def scenario() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(b"1 http://a/\n2 http://b/\n3 http://c")
        reader.feed_eof()
        sink = MemorySink()
        await asyncio.wait_for(serve_lines(answer, reader, sink, max_line=100), TIMEOUT)
        return sink.writes

    writes = asyncio.run(scenario())
    assert writes == [
        b"1 OK store-id=http://a/\n2 OK store-id=http://b/\n",
        b"3 OK store-id=http://c\n",
    ]
    if isinstance(answer, EchoByUrl):
        assert answer.calls == 3


def test_serve_lines_answers_each_chunk_before_reading_on() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        sink = MemorySink()
        server = asyncio.create_task(serve_lines(echo, reader, sink))
        reader.feed_data(b"7 http://a/\n")
        await wait_until_async(
            lambda: sink.writes, bool, timeout=1.0, interval=0.01, awaiting="the answer"
        )
        assert sink.writes == [b"7 OK store-id=http://a/\n"]
        reader.feed_eof()
        await asyncio.wait_for(server, TIMEOUT)

    asyncio.run(scenario())


def test_error_replies_are_plain_types() -> None:
    # The runtime answers with the same reply types an answer function uses.
    assert answer_batch(lambda request: Err(), [HelperRequest(None, "u", ())]) == b"ERR\n"
    assert (
        answer_batch(lambda request: BrokenHelper("m"), [HelperRequest(None, "u", ())])
        == b"BH message=m\n"
    )
