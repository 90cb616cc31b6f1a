"""The prefetcher's asyncio loop: take jobs from the shared queue and fill Squid's cache, once each.

Theory of operation (see `patchcache.state` for the queue and `patchcache.prefetch.fetch` for
why a fill is a `Range: bytes=0-` request through Squid):

1. Take: up to `parallel` jobs at a time, each under a lease (`StateStore.take_job`). The lease
   makes the fill single-flight across every prefetcher sharing the state directory. Before
   taking, due jobs whose class is outside its prefetch windows are pushed to the window's next
   opening, so the queue's order is kept and such a job is not counted as an attempt.
2. Admit: the job's URL is matched against the rules again (`policy.admit_job`); a URL the rules
   do not allow to prefetch, or whose key differs, is parked without a single byte fetched.
3. Fill: objects queued without a size get it first from a 1-byte range (Squid expands only
   objects of known size). The fill reads the whole object through Squid at the class's and the
   global rate (`throttle`), hashing it on the way; a heartbeat renews the lease and writes the
   progress into the record every few seconds.
4. Finish: a digest mismatch is purged from Squid (`purge`) and failed; other errors are failed;
   `StateStore.fail` retries with exponential backoff and parks the object after
   `prefetch_max_attempts` attempts. A good fill completes the record.

Crash safety: the queue is persistent, and Squid keeps fetching an expanded object after its
reader dies. A prefetcher killed with SIGKILL loses its lease when it expires; the job is then
due again, and the next fill through Squid is a hit or joins the fetch still in flight, so the
origin sends the object once. A graceful stop (SIGTERM) does the same without waiting for the
lease to expire: running fills give their lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from patchcache.cacheability import uncacheable_reason
from patchcache.errors import StateError
from patchcache.logging_setup import event
from patchcache.prefetch.fetch import FetchError, FetchResult, Proxy, ProxyUnreachable
from patchcache.prefetch.fetcher import Fetcher, ProxyFetcher
from patchcache.prefetch.policy import RelayRefused, admit_job, backoff_delay
from patchcache.prefetch.progress import FillStatus, ProgressBoard
from patchcache.prefetch.purge import summarize
from patchcache.prefetch.throttle import Throttle
from patchcache.prefetch.windows import Schedule, now_in_day
from patchcache.rules import CompiledRules, Match
from patchcache.squidconf.delay_pools import PREFETCH_HEADER
from patchcache.state import Job, LeaseLostError, ObjectState, StateStore
from patchcache.state.records import DigestCheck

_log = logging.getLogger("patchcache.prefetch")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How one prefetcher process behaves. Times in seconds."""

    proxy: Proxy
    owner: str
    lease_seconds: float = 60.0
    parallel: int = 2
    poll_interval: float = 2.0
    backoff_base: float = 60.0
    backoff_max: float = 6 * 3600.0
    idle_timeout: float = 60.0
    progress_interval: float = 30.0
    """A running fill logs its progress (percent, rate, ETA) this often (seconds)."""
    once: bool = False
    """Drain the queue, then return: stop when nothing runs here and no job is due, waits for
    its retry, or is leased elsewhere (a dead prefetcher's lease expires and is taken over).
    Jobs deferred by a closed window or queued for later are left queued."""

    @property
    def heartbeat_interval(self) -> float:
        # Three heartbeats per lease: one lost write never loses the lease.
        return max(0.05, min(self.lease_seconds / 3, 5.0))


class FillObserver(Protocol):
    """What the prefetcher reports as it works (`patchcache.metrics.prefetch` counts it)."""

    def started(self, class_name: str) -> None: ...

    def finished(self, class_name: str, outcome: str) -> None:
        """Outcomes: done, failed, parked, refused, too_big, lost, deferred (a closed window),
        released (stopped), error (state trouble or a bug)."""

    def completed(self, class_name: str, size: int, seconds: float) -> None: ...

    def running(self, class_name: str, delta: int) -> None: ...

    def digest_mismatch(self, class_name: str, purged: tuple[bool, ...]) -> None: ...


class NullObserver:
    def started(self, class_name: str) -> None:
        pass

    def finished(self, class_name: str, outcome: str) -> None:
        pass

    def completed(self, class_name: str, size: int, seconds: float) -> None:
        pass

    def running(self, class_name: str, delta: int) -> None:
        pass

    def digest_mismatch(self, class_name: str, purged: tuple[bool, ...]) -> None:
        pass


@dataclass(slots=True)
class FillProgress:
    """Bytes read so far by one fill, shared between the reader and its heartbeat."""

    received: int = 0
    total: int | None = None

    def update(self, received: int, total: int | None) -> None:
        self.received = received
        if total is not None:
            self.total = total


@dataclass(slots=True)
class Tally:
    """What a run did (returned by `Prefetcher.run`, printed by `--once`)."""

    completed: int = 0
    failed: int = 0
    parked: int = 0
    refused: int = 0
    too_big: int = 0
    lost: int = 0
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    proxy_unreachable: bool = False
    """`once` gave up because the proxy stayed unreachable."""


class Prefetcher:
    """One prefetcher: `await run()` until `stop()` (or until drained, with `once`)."""

    def __init__(
        self,
        store: StateStore,
        rules: CompiledRules,
        settings: WorkerSettings,
        *,
        throttle: Throttle | None = None,
        wall_clock: Callable[[], float] = time.time,
        day_clock: Callable[[], float] = now_in_day,
        observer: FillObserver | None = None,
        board: ProgressBoard | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        if settings.parallel < 1:
            raise ValueError("parallel must be at least 1")
        self._store = store
        self._rules = rules
        self._settings = settings
        self._throttle = throttle or Throttle(
            rules.settings.prefetch_rate,
            {cls.name: cls.rule.prefetch_rate for cls in rules.classes},
        )
        self._wall = wall_clock
        self._day = day_clock
        self._schedules = {
            cls.name: Schedule.parse(cls.rule.prefetch_windows) for cls in rules.classes
        }
        self._max_attempts = rules.settings.prefetch_max_attempts
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._proxy_down = False
        self._releasing: set[asyncio.Task[Any]] = set()
        self.tally = Tally()
        self._observer: FillObserver = observer or NullObserver()
        self._board = board
        # Everything on the network goes through this (an in-memory fake in unit tests).
        self._fetcher: Fetcher = fetcher or ProxyFetcher(settings.proxy)

    def stop(self) -> None:
        """Graceful stop: take no more jobs, give the running fills' leases back, return."""
        self._stopping.set()
        self._wake.set()

    # ----------------------------------------------------------------------------- the loop

    async def run(self) -> Tally:
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                if self._proxy_down:
                    await self._wait_for_proxy()
                    continue
                while len(running) < self._settings.parallel and not self._proxy_down:
                    job = await self._take()
                    if job is None:
                        break
                    task = asyncio.create_task(self._fill(job), name=f"fill {job.key}")
                    running.add(task)
                    task.add_done_callback(lambda _t: self._wake.set())
                running = {t for t in running if not t.done()}
                wait = self._settings.poll_interval
                if not running and self._settings.once:
                    pending = await self._our_next_due()
                    if pending is None:
                        break
                    wait = min(wait, max(0.0, pending - self._wall()))
                await self._sleep_until_woken(wait)
        finally:
            await self._cancel_fills(running)
            if self._board is not None:
                self._board.remove()
        return self.tally

    async def _cancel_fills(self, running: set[asyncio.Task[None]]) -> None:
        """Cancel the running fills and wait (bounded) while they release their leases. A task
        can absorb a cancellation (asyncio.Task.cancel's own comment says so), so a fill that
        has not started releasing is cancelled again; one that is releasing is left to finish."""
        deadline = time.monotonic() + 10.0
        pending = {task for task in running if not task.done()}
        while pending and time.monotonic() < deadline:
            for task in pending - self._releasing:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.5)

    async def _sleep_until_woken(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()

    async def _call(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """A StateStore call off the event loop (SQLite may wait up to its lock timeout)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _take(self) -> Job | None:
        try:
            await self._defer_closed_windows()
            return await self._call(
                self._store.take_job,
                self._settings.owner,
                self._settings.lease_seconds,
                max_attempts=self._max_attempts,
            )
        except StateError as exc:
            _log.error("cannot take a job: %s", exc)
            return None

    async def _defer_closed_windows(self) -> None:
        """Push due jobs of classes outside their windows to the next opening."""
        second = self._day()
        closed = {
            name: sched.seconds_until_open(second)
            for name, sched in self._schedules.items()
            if not sched.is_open(second)
        }
        if not closed:
            return
        now = self._wall()
        for job in await self._call(self._store.jobs):
            if job.due_at > now:
                break  # jobs() is in due order
            wait = closed.get(job.class_name)
            if wait is None:
                continue
            # defer() keeps the record's state and attempts and leaves a live lease alone.
            if await self._call(self._store.defer, job.key, now + wait):
                _log.info("%s: outside its prefetch window, deferred %.0f s", job.key, wait)

    async def _our_next_due(self) -> float | None:
        """For `once`: when the queue next needs this run (a job due, a retry, or a lease that
        may expire: a lease held by a prefetcher that died is taken over), or None when only
        jobs scheduled for later (closed windows, delayed pre-positioning) are left."""
        try:
            jobs = await self._call(self._store.jobs)
            now = self._wall()
            earliest: float | None = None
            for job in jobs:
                if job.due_at <= now and not job.leased_at(now):
                    sched = self._schedules.get(job.class_name, Schedule())
                    if not sched.is_open(self._day()):
                        continue  # deferred to its window by the next take
                elif not job.leased_at(now):
                    record = await self._call(self._store.get, job.key)
                    if record is None or record.state is not ObjectState.FAILED:
                        continue  # queued for later on purpose
                earliest = job.due_at if earliest is None else min(earliest, job.due_at)
            return earliest
        except StateError as exc:
            _log.error("cannot read the queue: %s", exc)
            return None

    async def _wait_for_proxy(self) -> None:
        """After a refused connection: probe the proxy with backoff before taking more jobs.
        With `once`, give up (and stop) after `idle_timeout` seconds."""
        delay = 0.5
        proxy = self._settings.proxy
        began = time.monotonic()
        while not self._stopping.is_set():
            if self._settings.once and time.monotonic() - began > self._settings.idle_timeout:
                _log.error("proxy %s:%d still unreachable, giving up", proxy.host, proxy.port)
                self.tally.proxy_unreachable = True
                self.stop()
                return
            if not await self._fetcher.reachable():
                await self._sleep_until_woken(delay)
                delay = min(delay * 2, 30.0)
                continue
            _log.info("proxy %s:%d reachable again", proxy.host, proxy.port)
            self._proxy_down = False
            return

    # ---------------------------------------------------------------------------- one fill

    async def _fill(self, job: Job) -> None:
        self._observer.started(job.class_name)
        try:
            await self._fill_job(job)
        except LeaseLostError as exc:
            self.tally.lost += 1
            self._observer.finished(job.class_name, "lost")
            _log.warning("%s: lease lost, another prefetcher has the job: %s", job.key, exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                self._releasing.add(task)
            self._observer.finished(job.class_name, "released")
            await self._release(job)
            raise
        except StateError as exc:
            self._observer.finished(job.class_name, "error")
            # The lease will expire and the job be taken again: at-least-once, nothing lost.
            _log.error("%s: state dir trouble, leaving the job to its lease: %s", job.key, exc)
        except Exception:  # a bug must not stop the prefetcher; the job is failed instead
            _log.exception("%s: unexpected error", job.key)
            with contextlib.suppress(Exception):
                await self._fail(job, "internal error (see the prefetcher log)")

    async def _release(self, job: Job) -> None:
        """Give the lease back (graceful stop): the job is due again at once, queued (still
        expandable), and this attempt is not counted."""
        with contextlib.suppress(StateError):
            await asyncio.shield(self._call(self._store.release, job))
            _log.info("%s: stopped, lease released", job.key)

    async def _fill_job(self, job: Job) -> None:
        schedule = self._schedules.get(job.class_name)
        if schedule is not None and not schedule.is_open(self._day()):
            # The job became due after the window check: hand it back, uncounted.
            wait = schedule.seconds_until_open(self._day())
            await self._call(self._store.release, job, due_at=self._wall() + wait)
            self._observer.finished(job.class_name, "deferred")
            _log.info(
                "%s: outside its prefetch window, deferred %.0f s",
                job.key,
                wait,
                extra=event("fill_deferred", cls=job.class_name, key=job.key, wait_seconds=wait),
            )
            return
        try:
            match = admit_job(self._rules, job.url, job.key)
        except RelayRefused as exc:
            self.tally.refused += 1
            self._observer.finished(job.class_name, "refused")
            _log.warning(
                "%s: refused, parking: %s",
                job.key,
                exc,
                extra=event("fill_refused", cls=job.class_name, key=job.key),
            )
            # max_attempts=1: the attempt just counted is the last one, so fail() parks.
            await self._call(
                self._store.fail,
                job,
                f"refused: {exc}",
                retry_at=self._wall(),
                max_attempts=1,
            )
            return
        limit = match.cls.max_object_size
        size = job.total_size
        _log.info(
            "%s: fill %s (attempt %d)",
            job.key,
            job.url,
            job.attempt,
            extra=event(
                "fill_start",
                cls=job.class_name,
                key=job.key,
                attempt=job.attempt,
                total_bytes=size,
            ),
        )
        try:
            if size is None:
                size = await self._fetcher.probe_size(
                    job.url, idle_timeout=self._settings.idle_timeout
                )
                if size is None:
                    raise FetchError("the size is unknown (no Content-Range/Content-Length)")
                if size <= limit:
                    # The helper expands only objects of known size: record it before the fill.
                    job = await self._call(
                        self._store.renew,
                        job,
                        lease_seconds=self._settings.lease_seconds,
                        total_size=size,
                    )
            if size > limit:
                await self._too_big(job, size, limit)
                return
            started = time.monotonic()
            result = await self._fetch_with_heartbeat(job, match, size)
        except ProxyUnreachable as exc:
            self._proxy_down = True
            await self._fail(job, str(exc))
            return
        except FetchError as exc:
            await self._fail(job, str(exc))
            return
        elapsed = max(time.monotonic() - started, 1e-9)
        if result.total > limit:
            await self._too_big(job, result.total, limit)
            return
        pinned = match.cls.rule.freshness == "pin"
        unstored = uncacheable_reason(result.status, result.headers, pinned=pinned)
        if unstored is not None:
            # Squid did not keep it: a complete (expandable) record would make every client
            # range fetch the object again from byte 0. Parked: not expanded, not retried.
            self.tally.parked += 1
            _log.warning("%s: Squid does not store it (%s), parking", job.key, unstored)
            await self._call(
                self._store.fail,
                job,
                f"not stored by Squid: {unstored}",
                retry_at=self._wall(),
                max_attempts=1,
            )
            return
        expected = match.digest if match.cls.rule.digest else None
        if expected is not None and result.digest != expected:
            outcomes = await self._fetcher.purge_object(job.url, job.key)
            self._observer.digest_mismatch(job.class_name, tuple(o.purged for o in outcomes))
            message = (
                f"digest mismatch: {match.cls.rule.digest} of the body is {result.digest}, "
                f"the URL names {expected}; {summarize(outcomes)}"
            )
            _log.warning(
                "%s: %s",
                job.key,
                message,
                extra=event("digest_mismatch", cls=job.class_name, key=job.key),
            )
            await self._fail(job, message, digest_check="mismatch")
            return
        await self._call(
            self._store.complete,
            job,
            digest_check="ok" if expected is not None else None,
            total_size=result.total,
        )
        self.tally.completed += 1
        self.tally.bytes += result.total
        self.tally.keys.append(job.key)
        self._observer.completed(job.class_name, result.total, elapsed)
        self._observer.finished(job.class_name, "done")
        _log.info(
            "%s: complete, %d bytes in %.1f s (%.0f B/s), HTTP %d%s",
            job.key,
            result.total,
            elapsed,
            result.total / elapsed,
            result.status,
            ", digest ok" if expected is not None else "",
            extra=event(
                "fill_complete",
                cls=job.class_name,
                key=job.key,
                bytes=result.total,
                seconds=round(elapsed, 3),
                rate_bytes_per_second=round(result.total / elapsed, 1),
                http_status=result.status,
            ),
        )

    async def _fetch_with_heartbeat(self, job: Job, match: Match, size: int | None) -> FetchResult:
        progress = FillProgress(total=size)
        class_name = match.cls.name
        throttle = self._throttle

        async def pay(amount: int) -> None:
            await throttle.pay(class_name, amount)

        fetch = asyncio.create_task(
            self._fetcher.fetch_whole(
                job.url,
                digest=match.cls.rule.digest if match.digest else None,
                pay=pay if throttle.limited(class_name) else None,
                piece_size=throttle.piece_size(class_name),
                progress=progress.update,
                idle_timeout=self._settings.idle_timeout,
                # Squid's delay pools recognise prefetches by this header (squidconf.delay_pools).
                headers=((PREFETCH_HEADER, class_name),),
            )
        )
        lost: list[LeaseLostError] = []
        board = self._board
        if board is not None:
            status = board.begin(job.key, class_name, job.url, size)
        else:
            status = FillStatus(job.key, class_name, job.url, started=time.time(), total=size)
        beat = asyncio.create_task(self._heartbeat(job, progress, fetch, lost, status))
        self._observer.running(class_name, 1)
        try:
            return await fetch
        except asyncio.CancelledError:
            if lost and not self._stopping.is_set():
                raise lost[0] from None
            raise
        finally:
            self._observer.running(class_name, -1)
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            if board is not None:
                board.end(job.key)

    async def _heartbeat(
        self,
        job: Job,
        progress: FillProgress,
        fetch: asyncio.Task[FetchResult],
        lost: list[LeaseLostError],
        status: FillStatus,
    ) -> None:
        """Renew the lease and record progress until the fetch ends; cancel it if the lease is
        lost (another prefetcher owns the job now). Log the progress every progress_interval
        and publish it on the progress board (for `patchcache status`)."""
        logged_at = time.monotonic()
        while not fetch.done():
            await asyncio.sleep(self._settings.heartbeat_interval)
            status.received = progress.received
            status.total = progress.total
            if time.monotonic() - logged_at >= self._settings.progress_interval:
                logged_at = time.monotonic()
                self._log_progress(status)
            if self._board is not None:
                with contextlib.suppress(Exception):
                    await self._call(self._board.write)
            try:
                await self._call(
                    self._store.renew,
                    job,
                    lease_seconds=self._settings.lease_seconds,
                    bytes_filled=progress.received,
                    total_size=progress.total,
                )
            except LeaseLostError as exc:
                lost.append(exc)
                fetch.cancel()
                return
            except StateError as exc:
                _log.warning("%s: could not renew the lease (will retry): %s", job.key, exc)

    def _log_progress(self, status: FillStatus) -> None:
        # Real time, as the progress board's: a rate needs no test clock.
        doc = status.to_dict(time.time())
        percent, rate, eta = doc["percent"], doc["rate_bytes_per_second"], doc["eta_seconds"]
        _log.info(
            "%s: %s of %s bytes (%s), %.0f B/s, ETA %s",
            status.key,
            status.received,
            "?" if status.total is None else status.total,
            "?%" if percent is None else f"{percent:.1f}%",
            rate,
            "?" if eta is None else f"{eta:.0f} s",
            extra=event(
                "fill_progress",
                cls=status.class_name,
                key=status.key,
                received_bytes=status.received,
                total_bytes=status.total,
                percent=percent,
                rate_bytes_per_second=rate,
                eta_seconds=eta,
            ),
        )

    async def _fail(self, job: Job, error: str, *, digest_check: DigestCheck | None = None) -> None:
        delay = backoff_delay(job.attempt, self._settings.backoff_base, self._settings.backoff_max)
        retried = await self._call(
            self._store.fail,
            job,
            error,
            retry_at=self._wall() + delay,
            max_attempts=self._max_attempts,
            digest_check=digest_check,
        )
        if retried:
            self.tally.failed += 1
            self._observer.finished(job.class_name, "failed")
            _log.warning(
                "%s: attempt %d failed, retry in %.0f s: %s",
                job.key,
                job.attempt,
                delay,
                error,
                extra=event("fill_failed", cls=job.class_name, key=job.key, retry_seconds=delay),
            )
        else:
            self.tally.parked += 1
            self._observer.finished(job.class_name, "parked")
            _log.error(
                "%s: parked after %d attempts: %s",
                job.key,
                job.attempt,
                error,
                extra=event("fill_parked", cls=job.class_name, key=job.key),
            )

    async def _too_big(self, job: Job, size: int, limit: int) -> None:
        self.tally.too_big += 1
        self._observer.finished(job.class_name, "too_big")
        _log.warning(
            "%s: %d bytes is over the class limit of %d, not filled",
            job.key,
            size,
            limit,
            extra=event("fill_too_big", cls=job.class_name, key=job.key, total_bytes=size),
        )
        await self._call(self._store.mark_too_big, job, size)
