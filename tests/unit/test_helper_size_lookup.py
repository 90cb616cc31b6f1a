"""The store-ID helper's size look-up: deferred lines in the runtime, the HEAD over a real
socket (a local fake proxy), and the answerer's decisions against a real state directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.reply_sink import MemorySink

from patchcache.helpers.head_probe import HeadFacts, head_facts, judge, parse_head
from patchcache.helpers.protocol import DEFER
from patchcache.helpers.runtime import DeferringUrlAnswer, serve_lines
from patchcache.helpers.store_id import HeadLookup, StoreIdAnswerer
from patchcache.rules import load_rules
from patchcache.state import ObjectState, StateStore
from patchcache.testbed.squid_logs import wait_until_async

TIMEOUT = 30.0
GUID = "11111111-2222-3333-4444-555555555555"
DO_URL = f"http://dl.delivery.mp.microsoft.com/filestreamingservice/files/{GUID}?P1=1"
RULES = """\
[classes.delivery-optimization]
max_object_size = "64 MiB"
"""


class SlowForOne:
    """Defers `http://slow/` until released; answers the rest at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def __call__(self, request: object) -> object:
        raise AssertionError("the runtime must use for_url")

    def for_url(self, url: str) -> str:
        return DEFER if url == "http://slow/" else f"OK store-id={url}"

    def now(self, url: str) -> str:
        return "ERR"

    async def later(self, url: str, extras: str) -> str:
        await self.release.wait()
        return f"OK store-id={url} extras={extras.replace(' ', '_')}"


def test_deferred_line_does_not_hold_back_the_others() -> None:
    answer = SlowForOne()
    assert isinstance(answer, DeferringUrlAnswer)

    async def scenario() -> list[bytes]:
        reader = asyncio.StreamReader()
        sink = MemorySink()
        server = asyncio.create_task(serve_lines(answer, reader, sink))
        reader.feed_data(b"1 http://slow/ 127.0.0.1 GET\n2 http://a/\nhttp://slow/\n")
        await wait_until_async(
            lambda: sink.writes, bool, timeout=2.0, interval=0.01, awaiting="the first answers"
        )
        # Channel 2 answered while channel 1 waits; the line without channel cannot wait.
        assert sink.writes == [b"2 OK store-id=http://a/\nERR\n"]
        reader.feed_data(b"3 http://b/\n")
        await wait_until_async(
            lambda: sink.writes,
            lambda writes: len(writes) > 1,
            timeout=2.0,
            interval=0.01,
            awaiting="channel 3's answer",
        )
        assert sink.writes[1] == b"3 OK store-id=http://b/\n"
        answer.release.set()
        reader.feed_eof()
        await asyncio.wait_for(server, TIMEOUT)  # waits for the late reply before returning
        return sink.writes

    writes = asyncio.run(scenario())
    assert writes[-1] == b"1 OK store-id=http://slow/ extras=127.0.0.1_GET\n"


async def _fake_proxy(reply: bytes | None, seen: list[bytes]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            if reply is None:
                await reader.read()  # never answers; returns once the client gives up
            else:
                writer.write(reply)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "size", "why"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: "e"\r\n\r\n', 1234, ""),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", None, "status 403"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None, "no Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nCache-Control: private\r\n\r\n",
            None,
            "Cache-Control private",
        ),
        (None, None, "no answer within 0.3 s"),
    ],
    ids=["ok", "403", "no-length", "private", "timeout"],
)
def test_head_through_a_proxy(reply: bytes | None, size: int | None, why: str) -> None:
    seen: list[bytes] = []

    async def scenario() -> HeadFacts:
        server, port = await _fake_proxy(reply, seen)
        async with server:
            return await head_facts(("127.0.0.1", port), DO_URL, 0.3)

    facts = asyncio.run(scenario())
    assert facts.size == size and facts.why == why
    assert seen[0].startswith(f"HEAD {DO_URL} HTTP/1.1\r\n".encode())
    assert b"\r\nX-PatchCache-Probe: 1\r\n" in seen[0]


def test_head_to_a_closed_port_is_unknown() -> None:
    async def scenario() -> HeadFacts:
        server, port = await _fake_proxy(b"", [])
        server.close()
        await server.wait_closed()
        return await head_facts(("127.0.0.1", port), DO_URL, 1.0)

    assert asyncio.run(scenario()).size is None


def test_judge_refuses_vary_star_and_parse_head_lowercases() -> None:
    status, headers = parse_head(b"HTTP/1.1 200 OK\r\nVary: *\r\nContent-Length: 5")
    assert status == 200 and headers == {"vary": "*", "content-length": "5"}
    assert judge(status, headers).size is None


class Heads:
    def __init__(self, facts: HeadFacts) -> None:
        self.facts = facts
        self.calls = 0

    async def __call__(self, url: str) -> HeadFacts:
        self.calls += 1
        await asyncio.sleep(0.05)  # lines of the same object arrive meanwhile
        return self.facts


def _answerer(tmp_path: Path, heads: Heads) -> tuple[StoreIdAnswerer, StateStore]:
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES)
    state = StateStore(tmp_path / "state")
    return StoreIdAnswerer(load_rules(rules_path), state, lookup=HeadLookup(heads)), state


def test_first_sight_looks_up_once_records_and_expands(tmp_path: Path) -> None:
    heads = Heads(HeadFacts(4096, '"e"', None))
    answerer, state = _answerer(tmp_path, heads)
    with state:
        assert answerer.for_url(DO_URL) is DEFER

        async def scenario() -> list[str]:
            return list(await asyncio.gather(*(answerer.later(DO_URL, "") for _ in range(5))))

        answers = asyncio.run(scenario())
        assert heads.calls == 1  # five lines of one object, one HEAD
        assert all(a.endswith(" expand=1") for a in answers)
        record = next(iter(state.records()))
        assert record.total_size == 4096 and record.state is ObjectState.QUEUED
        # Known now: answered at once, no HEAD.
        assert answerer.for_url(DO_URL).endswith(" expand=1")


@pytest.mark.parametrize("size", [None, 65 * 1024 * 1024], ids=["unknown", "over-limit"])
def test_no_size_or_over_limit_answers_plain(tmp_path: Path, size: int | None) -> None:
    heads = Heads(HeadFacts(size))
    answerer, state = _answerer(tmp_path, heads)
    with state:
        answer = asyncio.run(answerer.later(DO_URL, ""))
        assert answer.startswith("OK store-id=") and "expand" not in answer
        # Not looked up again for each range.
        assert answerer.for_url(DO_URL) is not DEFER
        states = [r.state for r in state.records()]
        assert states == ([] if size is None else [ObjectState.TOO_BIG])


def test_a_head_request_is_not_looked_up(tmp_path: Path) -> None:
    heads = Heads(HeadFacts(4096))
    answerer, state = _answerer(tmp_path, heads)
    with state:
        answer = asyncio.run(answerer.later(DO_URL, "127.0.0.1/- - HEAD myip=x"))
        assert heads.calls == 0 and "expand" not in answer


def test_state_expansion_is_tristate_and_a_first_sight_fills_a_delayed_record(
    tmp_path: Path,
) -> None:
    with StateStore(tmp_path / "state") as state:
        assert state.expansion("k") is None
        assert state.enqueue_url("k", "http://x/", "c", due_at=1e12)
        assert state.expansion("k") is None  # waiting without a size: still unknown
        assert not state.record_first_sight("k", "http://x/", "c", 10, '"e"', None)
        assert state.expansion("k") is True
        record = state.get("k")
        assert record is not None and record.total_size == 10 and record.state is ObjectState.QUEUED
        assert state.get_job("k") is not None  # the delayed job is kept
        assert state.enqueue_url("big", "http://y/", "c", due_at=1e12)
        assert not state.record_too_big("big", "http://y/", "c", 99, None, None)
        assert state.expansion("big") is False and state.get_job("big") is None


def test_a_request_without_range_is_not_looked_up(tmp_path: Path) -> None:
    """squid-conf's store_id_extras end with `range=%>h{Range}`: `-` when there is none."""
    heads = Heads(HeadFacts(4096))
    answerer, state = _answerer(tmp_path, heads)
    with state:
        plain = asyncio.run(answerer.later(DO_URL, "127.0.0.1/- - GET myip=x range=-"))
        ranged = asyncio.run(answerer.later(DO_URL, "127.0.0.1/- - GET range=bytes=0-9"))
        assert heads.calls == 1 and "expand" not in plain and ranged.endswith(" expand=1")
