"""The prefetch worker against a real state store, fetching through an in-memory fake or a
scripted HTTP proxy on loopback.

No Squid here (tests/integration/test_prefetch_*.py has that). Decisions (retries, refusals,
windows, digests, the size probe) use the in-memory `FakeFetcher`; what depends on the real
client and real time (the request on the wire, a dead proxy, slow and endless bodies under
stops and lost leases, progress) uses the real fetcher against a small asyncio server
answering each request with scripted bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.fake_fetcher import FakeFetcher

from patchcache.prefetch.fetch import FetchError, Proxy
from patchcache.prefetch.worker import Prefetcher, Tally, WorkerSettings
from patchcache.rules import CompiledRules, load_rules
from patchcache.squidconf.delay_pools import PREFETCH_HEADER
from patchcache.state import ObjectState, StateStore
from patchcache.testbed.squid_logs import wait_until_async

BODY = bytes(range(256)) * 40  # 10240 bytes
SHA1 = hashlib.sha1(BODY).hexdigest()
DL_URL = f"http://dl.example.com/pkg/update_{SHA1}.bin"
DL_KEY = f"http://dl.patchcache.squid.internal/sha1/{SHA1}"
FILE_URL = "http://files.example.com/files/tool.msi"
FILE_KEY = "http://files.patchcache.squid.internal/files/tool.msi"

RULES = """
packs = []
[settings]
prefetch_max_attempts = 3

[classes.dl]
hosts = ["dl.example.com"]
path = '^/pkg/.*_(?P<digest>[0-9a-f]{40})\\.bin$'
key = "/sha1/{digest}"
digest = "sha1"
max_object_size = 20000

[classes.files]
hosts = ["files.example.com"]
path = '^/files/.+$'
key = "{path}"
max_object_size = 20000

[classes.noprefetch]
hosts = ["np.example.com"]
path = '^/.+$'
prefetch = false

[classes.bulk]
hosts = ["bulk.example.com"]
path = '^/.+$'
key = "{path}"
max_object_size = "100 GiB"

[classes.night]
hosts = ["night.example.com"]
path = '^/.+$'
key = "{path}"
prefetch_windows = ["22:00-06:00"]
"""


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]


Reply = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


def whole(body: bytes = BODY, status: int = 206) -> Reply:
    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if seen.method == "PURGE":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if seen.headers.get("range") == "bytes=0-0":
            writer.write(
                b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/%d\r\n"
                b"Content-Length: 1\r\n\r\n%s" % (len(body), body[:1])
            )
            return
        extra = b"Content-Range: bytes 0-%d/%d\r\n" % (len(body) - 1, len(body))
        writer.write(
            b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n\r\n%s"
            % (status, extra if status == 206 else b"", len(body), body)
        )

    return reply


def trickle(total: int = len(BODY), piece: int = 100, pause: float = 0.05) -> Reply:
    """Headers, then the body slowly (a long fill to interrupt)."""

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 206 P\r\nContent-Range: bytes 0-%d/%d\r\nContent-Length: %d\r\n\r\n"
            % (total - 1, total, total)
        )
        for offset in range(0, total, piece):
            writer.write(BODY[offset : offset + piece])
            await writer.drain()
            await asyncio.sleep(pause)

    return reply


@dataclass
class FakeProxy:
    reply: Reply
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def proxy(self) -> Proxy:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return Proxy("127.0.0.1", port)

    async def start(self) -> FakeProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            seen = Seen(method, target, headers)
            self.seen.append(seen)
            await self.reply(seen, writer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET"]


@pytest.fixture
def rules(tmp_path: Path) -> CompiledRules:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return load_rules(path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def settings(proxy: Proxy, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "proxy": proxy,
        "owner": "unit",
        "lease_seconds": 2.0,
        "poll_interval": 0.02,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "idle_timeout": 5.0,
        "once": True,
    }
    values.update(overrides)
    return WorkerSettings(**values)


async def drain(
    store: StateStore,
    rules: CompiledRules,
    reply: Reply,
    *,
    day: float = 12 * 3600.0,
    **overrides: Any,
) -> tuple[Tally, FakeProxy]:
    fake = await FakeProxy(reply).start()
    try:
        prefetcher = Prefetcher(
            store, rules, settings(fake.proxy, **overrides), day_clock=lambda: day
        )
        tally = await asyncio.wait_for(prefetcher.run(), 30)
    finally:
        await fake.stop()
    return tally, fake


def fill_with(
    store: StateStore,
    rules: CompiledRules,
    fetcher: FakeFetcher,
    *,
    day: float = 12 * 3600.0,
    **overrides: Any,
) -> Tally:
    """Run a prefetcher (`once`) fetching through `fetcher`."""
    prefetcher = Prefetcher(
        store,
        rules,
        settings(Proxy("127.0.0.1", 9), **overrides),  # never connected to
        day_clock=lambda: day,
        fetcher=fetcher,
    )
    return asyncio.run(asyncio.wait_for(prefetcher.run(), 30))


def queue(store: StateStore, rules: CompiledRules, url: str, size: int | None = len(BODY)) -> str:
    match = rules.match(url)
    assert match is not None
    assert store.enqueue_url(match.key, url, match.cls.name, total_size=size)
    return match.key


# ----------------------------------------------------------------------------- the fill


def test_a_fill_is_one_ranged_absolute_request_and_completes_with_digest_ok(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, DL_URL)
    assert key == DL_KEY
    tally, fake = asyncio.run(drain(store, rules, whole()))
    assert tally.completed == 1
    (request,) = fake.seen
    assert request.method == "GET"
    assert request.target == DL_URL  # absolute-form, to the proxy
    assert request.headers["range"] == "bytes=0-"
    assert request.headers["host"] == "dl.example.com"
    assert request.headers["x-patchcache-prefetch"] == "dl"
    record = store.get(key)
    assert record is not None
    assert record.state is ObjectState.COMPLETE
    assert record.digest_check == "ok"
    assert record.bytes_filled == len(BODY)


def test_a_fill_asks_for_the_class_header_and_pays_the_throttle_per_piece(
    store: StateStore, rules: CompiledRules
) -> None:
    from patchcache.prefetch.throttle import Throttle

    paid: list[int] = []

    class CountingThrottle(Throttle):
        async def pay(self, class_name: str, amount: int) -> None:
            paid.append(amount)

    throttle = CountingThrottle(None, {"files": 10**9})
    queue(store, rules, FILE_URL)
    fake = FakeFetcher({FILE_URL: BODY})
    prefetcher = Prefetcher(
        store, rules, settings(Proxy("127.0.0.1", 9)), throttle=throttle, fetcher=fake
    )
    tally = asyncio.run(asyncio.wait_for(prefetcher.run(), 30))
    assert tally.completed == 1
    assert fake.headers == [((PREFETCH_HEADER, "files"),)]
    assert sum(paid) == len(BODY)
    assert all(0 < n <= throttle.piece_size("files") for n in paid)


def test_a_whole_200_is_accepted_and_classes_without_digest_are_not_checked(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, FILE_URL)
    tally, _ = asyncio.run(drain(store, rules, whole(status=200)))
    assert tally.completed == 1
    record = store.get(key)
    assert record is not None and record.digest_check is None


def test_unknown_size_is_probed_first_then_recorded(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, FILE_URL, size=None)
    fake = FakeFetcher({FILE_URL: BODY})
    tally = fill_with(store, rules, fake)
    assert tally.completed == 1
    assert fake.calls == [("probe", FILE_URL), ("fetch", FILE_URL)]
    record = store.get(key)
    assert record is not None and record.total_size == len(BODY)


def test_too_big_after_the_probe_is_marked_and_not_fetched(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, FILE_URL, size=None)
    fake = FakeFetcher({FILE_URL: b"x" * 30000})
    tally = fill_with(store, rules, fake)
    assert tally.too_big == 1
    assert fake.calls == [("probe", FILE_URL)]
    record = store.get(key)
    assert record is not None and record.state is ObjectState.TOO_BIG


# -------------------------------------------------------------------- failures and retries


def test_errors_are_retried_with_backoff_then_parked(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, FILE_URL)
    fake = FakeFetcher(fail={FILE_URL: FetchError("HTTP 503 Boom")})
    tally = fill_with(store, rules, fake)
    assert (tally.failed, tally.parked, tally.completed) == (2, 1, 0)
    assert fake.fetched() == [FILE_URL] * 3  # prefetch_max_attempts
    record = store.get(key)
    assert record is not None
    assert record.state is ObjectState.PARKED
    assert record.attempts == 3
    assert record.last_error is not None and "HTTP 503" in record.last_error
    assert store.queue_length() == 0


def test_a_short_body_is_an_error(store: StateStore, rules: CompiledRules) -> None:
    async def short(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)

    key = queue(store, rules, FILE_URL)
    asyncio.run(drain(store, rules, short))
    record = store.get(key)
    assert record is not None and record.state is ObjectState.PARKED
    assert record.last_error is not None and "50 of 100" in record.last_error


def test_a_digest_mismatch_is_purged_by_both_names_and_retried_bounded(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, DL_URL)
    bad = bytes(reversed(BODY))
    fake = FakeFetcher({DL_URL: bad})
    tally = fill_with(store, rules, fake)
    assert (tally.failed, tally.parked) == (2, 1)
    purges = [url for what, url in fake.calls if what == "purge"]
    assert purges == [DL_KEY, DL_URL] * 3
    record = store.get(key)
    assert record is not None and record.state is ObjectState.PARKED
    assert record.last_error is not None
    assert "digest mismatch" in record.last_error and SHA1 in record.last_error
    assert "purged via key URL" in record.last_error


def test_a_dead_proxy_fails_the_job_and_once_gives_up(
    store: StateStore, rules: CompiledRules
) -> None:
    async def scenario() -> Tally:
        fake = await FakeProxy(whole()).start()
        proxy = fake.proxy
        await fake.stop()  # nothing listens on that port any more
        prefetcher = Prefetcher(store, rules, settings(proxy, idle_timeout=1.0))
        return await asyncio.wait_for(prefetcher.run(), 30)

    key = queue(store, rules, FILE_URL)
    tally = asyncio.run(scenario())
    assert tally.proxy_unreachable
    record = store.get(key)
    assert record is not None and record.state is ObjectState.FAILED
    assert record.last_error is not None and "unreachable" in record.last_error


# ------------------------------------------------------------------ never an open relay


@pytest.mark.parametrize(
    ("url", "key", "class_name", "why"),
    [
        ("http://evil.example.net/x.exe", "http://evil/x", "files", "matches no class"),
        ("http://user@files.example.com/files/a", FILE_KEY, "files", "matches no class"),
        (
            "http://np.example.com/a.exe",
            "http://noprefetch.patchcache.squid.internal/a.exe",
            "noprefetch",
            "does not allow prefetching",
        ),
        (
            FILE_URL,
            "http://files.patchcache.squid.internal/files/other.msi",
            "files",
            "not the job",
        ),
        (FILE_URL, DL_KEY, "dl", "not the job"),
    ],
)
def test_jobs_the_rules_do_not_allow_are_parked_without_a_byte_fetched(
    url: str, key: str, class_name: str, why: str, store: StateStore, rules: CompiledRules
) -> None:
    assert store.enqueue_url(key, url, class_name, total_size=100)
    fake = FakeFetcher({url: BODY})
    tally = fill_with(store, rules, fake)
    assert tally.refused == 1
    assert fake.calls == []  # not a single request
    record = store.get(key)
    assert record is not None and record.state is ObjectState.PARKED
    assert record.last_error is not None and why in record.last_error


# ----------------------------------------------------------------------------- windows


def test_a_job_outside_its_window_is_deferred_not_fetched_and_not_counted(
    store: StateStore, rules: CompiledRules
) -> None:
    key = queue(store, rules, "http://night.example.com/big.iso")
    fake = FakeFetcher({"http://night.example.com/big.iso": BODY})
    tally = fill_with(store, rules, fake, day=12 * 3600.0)  # noon
    assert fake.calls == []
    assert tally.completed == 0
    record = store.get(key)
    assert record is not None
    assert record.state is ObjectState.QUEUED and record.attempts == 0
    job = store.get_job(key)
    assert job is not None
    assert job.due_at - record.updated == pytest.approx(10 * 3600, abs=5)  # opens at 22:00


def test_a_job_inside_its_window_is_filled(store: StateStore, rules: CompiledRules) -> None:
    key = queue(store, rules, "http://night.example.com/big.iso")
    fake = FakeFetcher({"http://night.example.com/big.iso": BODY})
    tally = fill_with(store, rules, fake, day=23 * 3600.0)
    assert tally.completed == 1
    record = store.get(key)
    assert record is not None and record.state is ObjectState.COMPLETE


def test_a_job_taken_just_as_its_window_closes_is_handed_back_uncounted(
    store: StateStore, rules: CompiledRules
) -> None:
    # The window check before taking sees 05:59 (open); by the time the fill starts it is 06:00.
    days = iter([5 * 3600 + 59 * 60])
    fake = FakeFetcher({"http://night.example.com/big.iso": BODY})
    prefetcher = Prefetcher(
        store,
        rules,
        settings(Proxy("127.0.0.1", 9)),
        day_clock=lambda: next(days, 6 * 3600.0),
        fetcher=fake,
    )
    key = queue(store, rules, "http://night.example.com/big.iso")
    tally = asyncio.run(asyncio.wait_for(prefetcher.run(), 30))
    assert fake.calls == []
    assert tally.completed == 0
    record = store.get(key)
    assert record is not None
    assert record.state is ObjectState.QUEUED and record.attempts == 0
    job = store.get_job(key)
    assert job is not None and not job.leased_at(time.time())
    assert job.due_at - record.updated == pytest.approx(16 * 3600, abs=5)  # 22:00


def test_a_closed_window_does_not_hold_up_other_classes(
    store: StateStore, rules: CompiledRules
) -> None:
    queue(store, rules, "http://night.example.com/big.iso")
    other = queue(store, rules, FILE_URL)
    fake = FakeFetcher({FILE_URL: BODY, "http://night.example.com/big.iso": BODY})
    tally = fill_with(store, rules, fake)
    assert tally.keys == [other]
    assert fake.fetched() == [FILE_URL]


# ------------------------------------------------------------ leases, stop, single flight


def test_progress_reaches_the_record_while_filling(store: StateStore, rules: CompiledRules) -> None:
    async def scenario() -> list[int]:
        fake = await FakeProxy(trickle(pause=0.02)).start()
        prefetcher = Prefetcher(store, rules, settings(fake.proxy, lease_seconds=0.3))
        task = asyncio.create_task(prefetcher.run())
        seen: list[int] = []

        def sample_progress() -> bool:
            record = store.get(FILE_KEY)
            if record is not None and record.state is ObjectState.FILLING:
                seen.append(record.bytes_filled)
            return task.done()

        # Samples for up to 4 s (the fill may take longer: then the task is awaited below).
        await wait_until_async(sample_progress, bool, timeout=4.0, interval=0.02)
        await asyncio.wait_for(task, 30)
        await fake.stop()
        return seen

    queue(store, rules, FILE_URL)
    progress = asyncio.run(scenario())
    assert any(0 < n < len(BODY) for n in progress), progress
    record = store.get(FILE_KEY)
    assert record is not None and record.state is ObjectState.COMPLETE


def test_stop_releases_the_lease_and_keeps_the_object_expandable(
    store: StateStore, rules: CompiledRules
) -> None:
    async def scenario() -> None:
        fake = await FakeProxy(trickle(pause=0.05)).start()
        prefetcher = Prefetcher(store, rules, settings(fake.proxy, lease_seconds=30, once=False))
        task = asyncio.create_task(prefetcher.run())
        await wait_until_async(
            fake.gets, bool, timeout=10.0, interval=0.02, awaiting="the prefetcher's GET"
        )
        await asyncio.sleep(0.1)
        prefetcher.stop()
        await asyncio.wait_for(task, 10)
        await fake.stop()

    queue(store, rules, FILE_URL)
    asyncio.run(scenario())
    job = store.get_job(FILE_KEY)
    assert job is not None
    assert not job.leased_at(time.time())  # released: due again at once
    record = store.get(FILE_KEY)
    assert record is not None and record.expandable
    assert record.state is ObjectState.QUEUED
    assert record.attempts == 0  # a stop is not a failed attempt
    # Another prefetcher takes it straight away.
    assert store.take_job("other", 10) is not None


def firehose(total: int = 50 * 2**30) -> Reply:
    """A huge body as fast as loopback goes: every read completes at once."""

    async def reply(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 206 P\r\nContent-Range: bytes 0-%d/%d\r\nContent-Length: %d\r\n\r\n"
            % (total - 1, total, total)
        )
        block = b"z" * 65536
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    return reply


def test_stop_interrupts_a_fill_whose_reads_never_wait(
    store: StateStore, rules: CompiledRules
) -> None:
    # asyncio.wait_for on Python 3.11 swallows a cancellation that lands as its inner read
    # completes; on a stream this fast that is almost every time.
    async def scenario() -> Tally:
        fake = await FakeProxy(firehose()).start()
        prefetcher = Prefetcher(store, rules, settings(fake.proxy, lease_seconds=3, once=False))
        task = asyncio.create_task(prefetcher.run())
        await wait_until_async(
            lambda: store.get("http://bulk.patchcache.squid.internal/huge.iso"),
            lambda record: record is not None and record.bytes_filled > 0,
            timeout=10.0,
            interval=0.02,
            awaiting="the fill's first progress",
        )
        prefetcher.stop()
        tally = await asyncio.wait_for(task, 20)
        await fake.stop()
        return tally

    key = queue(store, rules, "http://bulk.example.com/huge.iso", size=50 * 2**30)
    tally = asyncio.run(scenario())
    assert tally.completed == 0
    job = store.get_job(key)
    assert job is not None
    assert not job.leased_at(time.time())  # released, not left to its lease


def test_a_lost_lease_stops_the_fill_without_reporting(
    store: StateStore, rules: CompiledRules
) -> None:
    async def scenario() -> Tally:
        fake = await FakeProxy(trickle(pause=0.05)).start()
        prefetcher = Prefetcher(store, rules, settings(fake.proxy, lease_seconds=0.3))
        task = asyncio.create_task(prefetcher.run())
        await wait_until_async(
            fake.gets, bool, timeout=10.0, interval=0.02, awaiting="the prefetcher's GET"
        )
        assert store.forget(FILE_KEY)  # an admin drops the object mid-fill
        tally = await asyncio.wait_for(task, 30)
        await fake.stop()
        return tally

    queue(store, rules, FILE_URL)
    tally = asyncio.run(scenario())
    assert tally.lost == 1
    assert tally.completed == 0
    assert store.get(FILE_KEY) is None


def test_two_prefetchers_fill_one_job_once(store: StateStore, rules: CompiledRules) -> None:
    async def scenario() -> tuple[Tally, Tally, FakeProxy]:
        fake = await FakeProxy(trickle(pause=0.01, piece=1000)).start()
        first = Prefetcher(store, rules, settings(fake.proxy, owner="a"))
        second = Prefetcher(store, rules, settings(fake.proxy, owner="b"))
        a, b = await asyncio.wait_for(asyncio.gather(first.run(), second.run()), 30)
        await fake.stop()
        return a, b, fake

    queue(store, rules, FILE_URL)
    a, b, fake = asyncio.run(scenario())
    assert a.completed + b.completed == 1
    assert len(fake.gets()) == 1


def test_parallel_fills(store: StateStore, rules: CompiledRules) -> None:
    urls = [f"http://files.example.com/files/f{n}.msi" for n in range(5)]
    for url in urls:
        queue(store, rules, url)
    fake = FakeFetcher(dict.fromkeys(urls, BODY))
    tally = fill_with(store, rules, fake, parallel=3)
    assert tally.completed == 5
    assert sorted(fake.fetched()) == urls


def test_a_long_fill_logs_progress_publishes_it_and_counts_metrics(
    store: StateStore, rules: CompiledRules, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client.registry import CollectorRegistry

    from patchcache.metrics.prefetch import PrefetchMetrics
    from patchcache.prefetch.progress import ProgressBoard, read_boards

    registry = CollectorRegistry()
    metrics = PrefetchMetrics(registry, [cls.name for cls in rules.classes])
    board = ProgressBoard(store.path, "unit")

    async def scenario() -> list[dict[str, Any]]:
        fake = await FakeProxy(trickle(pause=0.02)).start()
        prefetcher = Prefetcher(
            store,
            rules,
            settings(fake.proxy, lease_seconds=0.3, progress_interval=0.1),
            observer=metrics,
            board=board,
        )
        task = asyncio.create_task(prefetcher.run())
        published: list[dict[str, Any]] = []

        def collect_boards() -> bool:
            published.extend(read_boards(store.path, time.time()))
            return task.done()

        # Collects for up to 6 s (the fill may take longer: then the task is awaited below).
        await wait_until_async(collect_boards, bool, timeout=6.0, interval=0.02)
        await asyncio.wait_for(task, 30)
        await fake.stop()
        return published

    queue(store, rules, FILE_URL)
    with caplog.at_level("INFO", logger="patchcache.prefetch"):
        published = asyncio.run(scenario())
    # The board showed the running fill with its rate, and is gone once the prefetcher stops.
    assert any(0 < fill["percent"] < 100 for fill in published), published
    assert all(fill["key"] == FILE_KEY and fill["class"] == "files" for fill in published)
    assert any(fill["rate_bytes_per_second"] > 0 and fill["eta_seconds"] for fill in published)
    assert read_boards(store.path, time.time()) == []
    progress = [
        r for r in caplog.records if getattr(r, "patchcache_event", None) == "fill_progress"
    ]
    assert progress, [r.getMessage() for r in caplog.records]
    fields = progress[0].patchcache_fields  # type: ignore[attr-defined]
    assert fields["class"] == "files" and fields["key"] == FILE_KEY
    assert 0 < fields["percent"] < 100 and fields["rate_bytes_per_second"] > 0
    assert "ETA" in progress[0].getMessage()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("patchcache_prefetch_jobs_started_total", **{"class": "files"}) == 1
    assert (
        value("patchcache_prefetch_jobs_finished_total", **{"class": "files", "outcome": "done"})
        == 1
    )
    assert value("patchcache_prefetch_filled_bytes_total", **{"class": "files"}) == len(BODY)
    assert value("patchcache_prefetch_fills_in_progress", **{"class": "files"}) == 0
