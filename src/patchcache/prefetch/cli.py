"""Commands of the prefetcher sidecar: `prefetch`, `status` and `channel add`.

Registered in `patchcache.cli` with `main.add_command(prefetch_cmd)`, `main.add_command(status_cmd)`
and `main.add_command(channel_group)`. Configuration is read here, at the edge, and handed inward.
The worker, asyncio and the state store are imported inside the commands: `patchcache.cli`
imports this module, and the store-ID helper that Squid starts should not pay for them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from patchcache.cli_options import (
    LOG_FORMAT_OPTION,
    METRICS_LISTEN_OPTION,
    RULES_OPTION,
    load_rules_or_exit,
    metrics_bind_failed,
    state_options,
)
from patchcache.errors import ConfigError, StateError
from patchcache.state.redis_url import is_redis_url
from patchcache.state_spec import StateSpec

if TYPE_CHECKING:
    from patchcache.metrics import Listen
    from patchcache.prefetch.worker import FillObserver, Tally, WorkerSettings
    from patchcache.rules import CompiledRules, Match
    from patchcache.state import Job, ObjectRecord, StateStore

_STATE_DIR = state_options(
    "Shared state directory (the same one the store-ID helper and ICAP service use).",
    required=True,
)


def _store_or_exit(state: StateSpec, *, must_exist: bool = False) -> StateStore:
    directory = state.directory
    if must_exist and directory is not None and not directory.is_dir():
        click.echo(f"error: state dir {directory} does not exist", err=True)
        raise SystemExit(2)
    try:
        return state.open()
    except (StateError, ConfigError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


def _directory_of(store: StateStore) -> Path | None:
    """The state directory, or None for a Redis state."""
    return None if is_redis_url(store.location) else Path(store.location)


def _guard_or_exit(store: StateStore, rules: CompiledRules, warn: Callable[[str], None]) -> None:
    """The key-scheme guard; exits when it cannot run: no job may be fetched or queued on
    records the rules have made stale."""
    from patchcache.state_guard import guard_key_schemes

    try:
        guard_key_schemes(store, rules, warn)
    except StateError as exc:
        store.close()
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


# ---------------------------------------------------------------------------------- prefetch


@click.command("prefetch")
@click.option(
    "--proxy",
    "proxy_url",
    required=True,
    help="Squid's HTTP port, e.g. http://127.0.0.1:3128 (fills go through it).",
)
@_STATE_DIR
@RULES_OPTION
@click.option("--owner", default=None, help="Name in leases and logs (default: HOST:PID).")
@click.option(
    "--once",
    is_flag=True,
    help="Drain the queue (retries and leases held elsewhere included), then exit.",
)
@click.option(
    "--parallel", default=2, show_default=True, type=click.IntRange(1, 64), help="Fills at a time."
)
@click.option(
    "--lease",
    "lease_seconds",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.5, 3600),
    help="Lease of a job (s); renewed while filling.",
)
@click.option(
    "--backoff",
    "backoff_base",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    help="First retry delay (s), doubled each time.",
)
@click.option(
    "--max-backoff",
    "backoff_max",
    default=6 * 3600.0,
    show_default=True,
    type=click.FloatRange(0, 7 * 86400),
    help="Longest retry delay (s).",
)
@click.option(
    "--poll",
    "poll_interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.05, 600),
    help="Queue poll interval when idle (s).",
)
@click.option(
    "--idle-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Give a fill up after this long without data.",
)
@click.option(
    "--progress-interval",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 86400),
    help="A running fill logs percent, rate and ETA this often (s).",
)
@METRICS_LISTEN_OPTION
@LOG_FORMAT_OPTION
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
def prefetch_cmd(
    proxy_url: str,
    state: StateSpec,
    rules_path: Path | None,
    owner: str | None,
    once: bool,
    parallel: int,
    lease_seconds: float,
    backoff_base: float,
    backoff_max: float,
    poll_interval: float,
    idle_timeout: float,
    progress_interval: float,
    metrics_listen: Listen | None,
    log_format: str,
    verbose: bool,
) -> None:
    """Fill Squid's cache with queued objects, each once, through the proxy."""
    import asyncio
    import socket

    from patchcache.logging_setup import configure_logging
    from patchcache.prefetch.fetch import Proxy
    from patchcache.prefetch.worker import WorkerSettings

    configure_logging(
        log_format,
        service="prefetch",
        level=logging.DEBUG if verbose else logging.INFO,
        text_format="%(asctime)s patchcache prefetch: %(message)s",
    )
    try:
        proxy = Proxy.parse(proxy_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--proxy") from None
    rules = load_rules_or_exit(rules_path)
    store = _store_or_exit(state)
    _guard_or_exit(store, rules, logging.getLogger("patchcache.prefetch").warning)
    settings = WorkerSettings(
        proxy=proxy,
        owner=owner or f"{socket.gethostname()}:{os.getpid()}",
        lease_seconds=lease_seconds,
        parallel=parallel,
        poll_interval=poll_interval,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        idle_timeout=idle_timeout,
        progress_interval=progress_interval,
        once=once,
    )
    observer = _serve_metrics_or_exit(metrics_listen, state, rules)
    with store:
        tally = asyncio.run(_run_prefetcher(store, rules, settings, observer))
    if once:
        click.echo(
            f"completed {tally.completed}, failed {tally.failed}, parked {tally.parked}, "
            f"refused {tally.refused}, too big {tally.too_big}, lost {tally.lost}, "
            f"{tally.bytes} bytes"
        )
    if tally.proxy_unreachable:
        click.echo(f"error: proxy {proxy_url} unreachable", err=True)
        raise SystemExit(1)


def _serve_metrics_or_exit(
    listen: Listen | None, state: StateSpec, rules: CompiledRules
) -> FillObserver | None:
    """Start `/metrics` (prefetcher counters and the state's gauges); its FillObserver."""
    if listen is None:
        return None
    from prometheus_client.registry import CollectorRegistry

    from patchcache.metrics import serve_metrics
    from patchcache.metrics.prefetch import PrefetchMetrics
    from patchcache.metrics.state import StateCollector

    names = [cls.name for cls in rules.classes]
    registry = CollectorRegistry(auto_describe=False)
    metrics = PrefetchMetrics(registry, names)
    # Its own StateStore: the collector runs on the HTTP server's thread.
    registry.register(StateCollector(state.open, names))
    try:
        server = serve_metrics(listen, registry)
    except OSError as exc:
        metrics_bind_failed(listen, exc)
    # The port the server took: 0 in `listen` picks a free one.
    bound = dataclasses.replace(listen, port=server.port)
    logging.getLogger("patchcache.prefetch").info("metrics on http://%s/metrics", bound)
    return metrics


async def _run_prefetcher(
    store: StateStore,
    rules: CompiledRules,
    settings: WorkerSettings,
    observer: FillObserver | None = None,
) -> Tally:
    import asyncio
    import signal

    from patchcache.prefetch.progress import ProgressBoard
    from patchcache.prefetch.worker import Prefetcher

    # Progress boards are files beside a state directory; a Redis state has none (yet).
    directory = _directory_of(store)
    board = None if directory is None else ProgressBoard(directory, settings.owner)
    prefetcher = Prefetcher(store, rules, settings, observer=observer, board=board)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, prefetcher.stop)
    logging.getLogger("patchcache.prefetch").info(
        "owner %s, proxy %s:%d, state %s",
        settings.owner,
        settings.proxy.host,
        settings.proxy.port,
        store.location,
    )
    return await prefetcher.run()


# ------------------------------------------------------------------------------------ status


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _percent(record: ObjectRecord) -> float | None:
    if not record.total_size:
        return None
    return round(100.0 * record.bytes_filled / record.total_size, 1)


def status_document(store: StateStore, now: float) -> dict[str, Any]:
    """What `patchcache status --json` prints."""
    from patchcache.prefetch.progress import read_boards
    from patchcache.state import ObjectState

    directory = _directory_of(store)
    records = store.records()
    jobs = store.jobs()
    counts = {state.value: 0 for state in ObjectState}
    for record in records:
        counts[record.state.value] += 1

    def with_percent(record: ObjectRecord) -> dict[str, Any]:
        return {**record.to_dict(), "percent": _percent(record)}

    def job_entry(job: Job) -> dict[str, Any]:
        return {**job.to_dict(), "leased": job.leased_at(now)}

    by_state: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_state.setdefault(record.state.value, []).append(with_percent(record))
    return {
        "state_dir": store.location,
        "now": now,
        "counts": counts,
        "queue": [job_entry(job) for job in jobs],
        "filling": by_state.get(ObjectState.FILLING.value, []),
        "failed": by_state.get(ObjectState.FAILED.value, []),
        "parked": by_state.get(ObjectState.PARKED.value, []),
        "too_big": by_state.get(ObjectState.TOO_BIG.value, []),
        "fills_in_progress": [] if directory is None else read_boards(directory, now),
        "classes": _class_summary(records, jobs),
        "key_schemes": _key_schemes_document(store),
    }


def _class_summary(records: list[ObjectRecord], jobs: list[Job]) -> dict[str, dict[str, int]]:
    """Per class: objects, expandable ones, complete bytes, queued jobs, and each state."""
    from patchcache.state import ObjectState

    summary: dict[str, dict[str, int]] = {}

    def entry(name: str) -> dict[str, int]:
        if name not in summary:
            summary[name] = {
                "objects": 0,
                "expandable": 0,
                "complete_bytes": 0,
                "queued_jobs": 0,
                **{state.value: 0 for state in ObjectState},
            }
        return summary[name]

    for record in records:
        row = entry(record.class_name)
        row["objects"] += 1
        row[record.state.value] += 1
        row["expandable"] += record.expandable
        if record.state is ObjectState.COMPLETE and record.total_size is not None:
            row["complete_bytes"] += record.total_size
    for job in jobs:
        entry(job.class_name)["queued_jobs"] += 1
    return dict(sorted(summary.items()))


def _key_schemes_document(store: StateStore) -> dict[str, Any]:
    """The key-scheme guard's part of the status: recorded fingerprints, retirements."""
    schemes = store.key_schemes()
    return {
        "recorded": schemes is not None,
        "classes": {name: scheme.fingerprint for name, scheme in sorted((schemes or {}).items())},
        "retired": [event.to_dict() for event in store.retirements()],
    }


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _echo_key_schemes(doc: dict[str, Any], now: float) -> None:
    if not doc["recorded"]:
        click.echo("key schemes: not recorded yet (no service has started on this state dir)")
        return
    events = doc["retired"]
    click.echo(
        f"key schemes: recorded for {len(doc['classes'])} class(es); "
        f"{len(events)} retirement(s) on record"
    )
    for event in events:
        when = f"{_utc(event['at'])} ({_ago(now - event['at'])} ago)"
        unfinished = "" if event["done"] else " (unfinished: the next service start ends it)"
        if event["kind"] == "key_scheme":
            click.echo(
                f"  {event['class']}  retired {when}: key scheme changed "
                f"({', '.join(event['changed'])}); {event['records']} record(s), "
                f"{event['jobs']} job(s) dropped{unfinished}"
            )
        else:
            click.echo(
                f"  {event['class']}  re-judged {when}: max_object_size {event['detail']}; "
                f"{event['records']} record(s) re-judged, {event['jobs']} job(s) "
                f"dropped{unfinished}"
            )


@click.command("status")
@_STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(state: StateSpec, as_json: bool) -> None:
    """Show the prefetch queue, fills in progress, failures and parked objects."""
    store = _store_or_exit(state, must_exist=True)
    now = time.time()
    with store:
        try:
            doc = status_document(store, now)
        except StateError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    counts = ", ".join(f"{name} {n}" for name, n in doc["counts"].items())
    label = "state" if is_redis_url(doc["state_dir"]) else "state dir"
    click.echo(f"{label} {doc['state_dir']}: {counts}")
    click.echo(f"queue: {len(doc['queue'])} job(s)")
    for job in doc["queue"]:
        if job["leased"]:
            when = f"leased by {job['owner']}, lease ends in {_ago(job['lease_expires'] - now)}"
        elif job["due_at"] <= now:
            when = "due now"
        else:
            when = f"due in {_ago(job['due_at'] - now)}"
        click.echo(f"  {job['key']}  [{when}; attempt {job['attempt']}]  {job['url']}")
    if doc["fills_in_progress"]:
        click.echo("fills in progress:")
        for fill in doc["fills_in_progress"]:
            pct = "?%" if fill.get("percent") is None else f"{fill['percent']:.1f}%"
            eta = fill.get("eta_seconds")
            click.echo(
                f"  {fill.get('key')}  [{fill.get('class')}]  {pct} "
                f"({_size(fill.get('received'))} of {_size(fill.get('total'))}), "
                f"{_size(int(fill.get('rate_bytes_per_second') or 0))}/s, "
                f"ETA {'?' if eta is None else _ago(float(eta))}, by {fill.get('owner')}"
            )
    if doc["filling"]:
        click.echo("filling:")
        for rec in doc["filling"]:
            pct = "?" if rec["percent"] is None else f"{rec['percent']:.1f}%"
            click.echo(
                f"  {rec['key']}  {pct} ({_size(rec['bytes_filled'])} of "
                f"{_size(rec['total_size'])}), attempt {rec['attempts']}, "
                f"updated {_ago(now - rec['updated'])} ago"
            )
    for title, name in (("failed, retry waiting", "failed"), ("parked", "parked")):
        if doc[name]:
            click.echo(f"{title}:")
            for rec in doc[name]:
                retry = ""
                if rec["next_attempt_at"] is not None:
                    retry = f", retry in {_ago(rec['next_attempt_at'] - now)}"
                click.echo(
                    f"  {rec['key']}  after {rec['attempts']} attempt(s){retry}: "
                    f"{rec['last_error']}"
                )
    if doc["too_big"]:
        click.echo("too big for their class:")
        for rec in doc["too_big"]:
            click.echo(f"  {rec['key']}  {_size(rec['total_size'])}  {rec['url']}")
    if doc["classes"]:
        click.echo("per class:")
        click.echo(
            f"  {'class':<28} {'objects':>8} {'complete':>9} {'queued':>7} {'failed':>7} "
            f"{'parked':>7} {'too big':>8} {'expandable':>11} {'bytes complete':>15}"
        )
        for name, row in doc["classes"].items():
            click.echo(
                f"  {name:<28} {row['objects']:>8} {row['complete']:>9} {row['queued_jobs']:>7} "
                f"{row['failed']:>7} {row['parked']:>7} {row['too_big']:>8} "
                f"{row['expandable']:>11} {_size(row['complete_bytes']):>15}"
            )
    _echo_key_schemes(doc["key_schemes"], now)


# ----------------------------------------------------------------------------------- channel


@click.group("channel")
def channel_group() -> None:
    """Pre-positioning: queue objects before any client asks for them."""


@channel_group.command("add")
@_STATE_DIR
@RULES_OPTION
@click.option("--refill", is_flag=True, help="Queue a fresh fill of objects already known.")
@click.option(
    "--delay",
    default=0.0,
    type=click.FloatRange(0, 365 * 86400),
    help="Seconds from now when the fills become due.",
)
@click.argument("urls", nargs=-1, required=True)
def channel_add_cmd(
    state: StateSpec,
    rules_path: Path | None,
    refill: bool,
    delay: float,
    urls: tuple[str, ...],
) -> None:
    """Queue URLS for prefetching. Nothing is queued if any URL is refused: every URL must
    match a class that allows prefetching."""
    from patchcache.prefetch.policy import RelayRefused, admit_url

    rules = load_rules_or_exit(rules_path)
    admitted: list[tuple[str, Match]] = []
    refused = 0
    for url in urls:
        try:
            admitted.append((url, admit_url(rules, url)))
        except RelayRefused as exc:
            refused += 1
            click.echo(f"refused: {exc}", err=True)
    if refused:
        click.echo(f"{refused} URL(s) refused; nothing queued", err=True)
        raise SystemExit(2)
    store = _store_or_exit(state)
    _guard_or_exit(store, rules, lambda line: click.echo(f"warning: {line}", err=True))
    now = time.time()
    seen: set[str] = set()
    with store:
        try:
            for url, match in admitted:
                if match.key in seen:
                    click.echo(f"same object as an earlier URL: {url} ({match.key})")
                    continue
                seen.add(match.key)
                if store.enqueue_url(match.key, url, match.cls.name, due_at=now + delay):
                    click.echo(f"queued {match.key}  ({match.cls.name})  {url}")
                    continue
                record = store.get(match.key)
                was = record.state.value if record else "unknown"
                if refill and store.requeue(match.key, due_at=now + delay):
                    click.echo(f"requeued {match.key} (was {was})")
                elif refill:
                    click.echo(f"not requeued {match.key}: a fill is running")
                else:
                    click.echo(f"already known {match.key} ({was}); --refill to fill again")
        except StateError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None
