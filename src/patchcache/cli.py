"""The `patchcache` command: one click group, one subcommand per job.

Configuration is read here, at the edge, once: rules are loaded and compiled, then handed inward.
The options every command shares (--rules, the state, --log-format) and the way a command loads
the rules or exits are declared once in patchcache.cli_options. The helper subcommands never
exit on a bad argument, file or environment: Squid 5.7 kills itself when helpers die at start,
so they log one line to stderr (Squid's cache.log) and answer ERR to everything
(patchcache.helpers.startup).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from patchcache import __version__
from patchcache.cli_options import (
    HELPER_RULES_OPTION,
    LOG_FORMAT_OPTION,
    METRICS_LISTEN_OPTION,
    RULES_OPTION,
    helper_state_options,
    load_rules_or_exit,
    metrics_bind_failed,
    state_options,
)
from patchcache.installation import InstallationError, console_script
from patchcache.state_spec import StateSpec

if TYPE_CHECKING:
    from patchcache.metrics import Listen
    from patchcache.metrics.icap import IcapMetricsEndpoint
    from patchcache.rules import CompiledRules

# The rules (pydantic, RE2) are imported where they are used: a helper whose rules library
# fails to load must still start and answer ERR, not die before its first line of code.

_SIDECAR_COMMANDS = ("channel", "prefetch", "status")
_REPORT_COMMANDS = ("report",)


class _MainGroup(click.Group):
    """The prefetcher's commands live with the prefetcher and are imported when asked for: a
    helper process imports only what it needs, so a library the others use that fails to load
    cannot stop a helper before it can answer."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_SIDECAR_COMMANDS, *_REPORT_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _SIDECAR_COMMANDS and cmd_name not in self.commands:
            from patchcache.prefetch.cli import channel_group, prefetch_cmd, status_cmd

            for command in (channel_group, prefetch_cmd, status_cmd):
                self.add_command(command)
        if cmd_name in _REPORT_COMMANDS and cmd_name not in self.commands:
            from patchcache.report.cli import report_cmd

            self.add_command(report_cmd)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_MainGroup)
@click.version_option(__version__, prog_name="patchcache")
def main() -> None:
    """Make software updates cross the WAN once: helpers and services for Squid."""


def _quiet_gc() -> None:
    """Helpers allocate small, acyclic objects (memoised answers) at a high rate; the cyclic
    collector scanning that memo cost a third of the time per line (measured with
    bench/storeid_vs_perl.py). Freeze what start-up built and collect young objects rarely;
    reference counting still frees everything."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


class HelperCommand(click.Command):
    """A helper subcommand: no argument, file or environment problem makes it exit.

    Squid 5.7 stops itself ("helpers are crashing too rapidly") when its helpers exit at start,
    and click's own checks exit with status 2 on a bad option. So options are parsed here,
    with nothing validated by click (the helper checks its files itself), and a parse error is
    logged in one line and answered like missing rules: ERR to everything."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            from patchcache.helpers.startup import serve_refusals

            serve_refusals(self.name or "helper", f"bad arguments ({exc.format_message()})")


@main.command("store-id", cls=HelperCommand)
@HELPER_RULES_OPTION
@helper_state_options("Shared state directory; enables expand=1 answers for known objects.")
@click.option(
    "--head-via",
    type=str,
    default=None,
    help="Proxy (http://127.0.0.1:3128) through which to HEAD an object first seen without a "
    "known size, so that its first range is already expanded.",
)
@click.option(
    "--head-timeout",
    type=str,  # checked by the helper: a bad value must not make it exit
    default="2",
    help="Seconds a size look-up may take; past it the answer has no expand=1.",
)
def store_id_cmd(
    rules_path: str | None,
    state_dir: str | None,
    state_url: str | None,
    state_password_file: str | None,
    head_via: str | None,
    head_timeout: str,
) -> None:
    """Squid store_id_program: one cache key for every URL variant of the same content."""
    from patchcache.helpers.startup import log_line, run_store_id

    if state_dir is not None and state_url is not None:
        # Never exit (Squid would stop): say so once and use the directory.
        log_line("store-id", "both --state-dir and --state given: using --state-dir")
    try:
        timeout = float(head_timeout)
    except ValueError:
        timeout = 0.0  # the helper falls back to its default
    raise SystemExit(
        run_store_id(
            rules_path,
            state_dir if state_dir is not None else state_url,
            after_start=_quiet_gc,
            password_file=state_password_file,
            head_via=head_via,
            head_timeout=timeout,
        )
    )


@main.command("url-rewrite", cls=HelperCommand)
@HELPER_RULES_OPTION
def url_rewrite_cmd(rules_path: str | None) -> None:
    """Squid url_rewrite_program: 302 to the nearest cache, or rewrite to a preferred mirror."""
    from patchcache.helpers.startup import run_url_rewrite

    raise SystemExit(run_url_rewrite(rules_path, after_start=_quiet_gc))


@main.command("check-config")
@RULES_OPTION
def check_config_cmd(rules_path: Path | None) -> None:
    """Validate the rules; print every problem with file, class and field."""
    rules = load_rules_or_exit(rules_path, exit_status=1, count_problems=True)
    click.echo(f"ok: {len(rules.classes)} classes from {', '.join(rules.sources)}")
    click.echo(f"fingerprint {rules.fingerprint}")


@main.command("explain")
@RULES_OPTION
@click.argument("urls", nargs=-1, required=True)
def explain_cmd(rules_path: Path | None, urls: tuple[str, ...]) -> None:
    """Show the matching class, the key and why, for each URL."""
    rules = load_rules_or_exit(rules_path)
    for url in urls:
        result = rules.explain(url)
        click.echo(url)
        if result.match is None:
            click.echo("  no class: cached under its own URL")
        else:
            rule = result.match.cls.rule
            click.echo(f"  class:  {result.match.cls.name}")
            click.echo(f"  key:    {result.match.key}")
            if result.match.digest:
                click.echo(f"  digest: {rule.digest}:{result.match.digest}")
            click.echo(
                f"  limits: max_object_size={rule.max_object_size} cache={rule.cache} "
                f"prefetch={rule.prefetch} expand_ranges={rule.expand_ranges} "
                f"freshness={rule.freshness}"
            )
        for reason in result.reasons:
            click.echo(f"  why:    {reason}")


@main.command("packs")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def packs_cmd(as_json: bool) -> None:
    """List the built-in rule packs and their classes."""
    from patchcache.rules import load_pack, pack_names

    out: dict[str, Any] = {}
    for name in pack_names():
        pack = load_pack(name)
        out[name] = {"description": pack.description, "classes": list(pack.classes)}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for name, info in out.items():
        click.echo(f"{name}: {info['description']}")
        click.echo(f"  classes: {', '.join(info['classes'])}")


@main.command("squid-conf")
@RULES_OPTION
@state_options("Shared state directory (enables expansion and PURGE lines).")
@click.option(
    "--icap", "icap_url", default=None, help="ICAP service URL, e.g. icap://127.0.0.1:1344/respmod"
)
@click.option("--icap-bypass/--no-icap-bypass", default=True, show_default=True)
@click.option("--url-rewrite", is_flag=True, help="Also attach the URL-rewrite helper.")
@click.option(
    "--head-via",
    default=None,
    help="This Squid's own address (e.g. http://127.0.0.1:3128): the store-ID helper HEADs an "
    "object first seen without a known size through it, so its first range is already "
    "expanded. Needs --state-dir.",
)
@click.option("--children", default=8, show_default=True, help="Helper processes.")
@click.option("--concurrency", default=50, show_default=True, help="Requests per helper.")
@click.option(
    "--bin",
    "patchcache_bin",
    default=None,
    help="Path of the patchcache program Squid runs (default: this one).",
)
@click.option(
    "--report-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/var/log/squid/patchcache.log"),
    show_default=True,
    help="Where Squid writes patchcache's own access log (exact upstream bytes for the report).",
)
@click.option("--no-report-log", is_flag=True, help="Do not add patchcache's access log.")
@click.option(
    "--keep-access-log/--no-keep-access-log",
    default=True,
    show_default=True,
    help="Declare Squid's default access.log again beside the report log (Squid drops its "
    "default once any access_log line exists); turn off if squid.conf declares its own.",
)
@click.option(
    "--parent",
    "parent_url",
    default=None,
    help="A branch cache: send class downloads through this parent, e.g. http://hq:3128.",
)
@click.option(
    "--carp-back",
    "carp_backs",
    multiple=True,
    help="The front of a CARP farm: a back end (repeat for each); prints the front's block only.",
)
def squid_conf_cmd(
    rules_path: Path | None,
    state: StateSpec | None,
    icap_url: str | None,
    icap_bypass: bool,
    url_rewrite: bool,
    head_via: str | None,
    children: int,
    concurrency: int,
    patchcache_bin: str | None,
    report_log: Path,
    no_report_log: bool,
    keep_access_log: bool,
    parent_url: str | None,
    carp_backs: tuple[str, ...],
) -> None:
    """Print squid.conf lines that attach patchcache (check them with `squid -k parse`)."""
    from patchcache.errors import ConfigError
    from patchcache.squidconf import ConfOptions, render_farm_front, render_squid_conf

    rules = load_rules_or_exit(rules_path)
    if carp_backs:
        if state or icap_url or url_rewrite or parent_url:
            raise click.UsageError(
                "--carp-back prints a farm front's block: the front runs no helper, state, "
                "ICAP or parent (give those to the back ends)"
            )
        try:
            click.echo(render_farm_front(rules, carp_backs), nl=False)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        return
    opts = ConfOptions(
        patchcache_bin=patchcache_bin or _own_binary(),
        rules_path=rules_path.resolve() if rules_path else None,
        state_dir=state.directory.resolve() if state and state.directory else None,
        state_url=state.spec if state and state.directory is None else None,
        state_password_file=state.password_file if state else None,
        icap_url=icap_url,
        icap_bypass=icap_bypass,
        url_rewrite=url_rewrite,
        head_via=head_via,
        store_id_children=children,
        concurrency=concurrency,
        report_log=None if no_report_log else report_log.absolute(),
        keep_access_log=keep_access_log,
        parent=parent_url,
    )
    try:
        click.echo(render_squid_conf(rules, opts), nl=False)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


@main.command("icap")
@RULES_OPTION
@click.option(
    "--listen",
    default="127.0.0.1:1344",
    show_default=True,
    help="Address to listen on (loopback by default).",
)
@state_options("Shared state directory: record first sights and queue prefetch jobs.")
@click.option("--workers", default=1, show_default=True, help="Processes sharing the port.")
@click.option("--max-connections", default=512, show_default=True, help="Per worker.")
@click.option(
    "--reserve",
    type=click.IntRange(min=0),
    default=None,
    help="Slots that connections without a complete request head cannot take, so a new "
    "well-behaved client still gets in during a flood of stalled ones "
    "[default: max-connections / 8].",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds without progress (nothing received, no output taken) before a connection "
    "is closed; aborted if output is pending.",
)
@click.option(
    "--head-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds for a complete request head, from connecting or from its first byte.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds from a complete request head to the end of the request.",
)
@METRICS_LISTEN_OPTION
@LOG_FORMAT_OPTION
def icap_cmd(
    rules_path: Path | None,
    listen: str,
    state: StateSpec | None,
    workers: int,
    max_connections: int,
    reserve: int | None,
    idle_timeout: float,
    head_timeout: float,
    request_timeout: float,
    metrics_listen: Listen | None,
    log_format: str,
) -> None:
    """ICAP (RFC 3507) service: per-class maximum object sizes, first sight of ranged downloads."""
    import logging

    from patchcache.icap_service.patchcache_service import PatchcacheService
    from patchcache.icap_service.server import ServerLimits, run_server
    from patchcache.icap_service.state_writer import QueuedStateWriter
    from patchcache.logging_setup import configure_logging
    from patchcache.state_access import LazyState

    configure_logging(log_format, service="icap")
    rules = load_rules_or_exit(rules_path)
    metrics = _icap_metrics_or_exit(metrics_listen, rules, workers)
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise click.BadParameter("use HOST:PORT, e.g. 127.0.0.1:1344", param_hint="--listen")
    if state is not None:
        _guard_icap_state(state, rules)
    # State writes go to a writer thread: a locked store must not stall the event loop.
    writer = QueuedStateWriter(LazyState(state)) if state is not None else None
    service = PatchcacheService(rules, writer, counters=metrics.counters if metrics else None)
    try:
        limits = ServerLimits(
            max_connections=max_connections,
            reserve=reserve,
            idle_timeout=idle_timeout,
            head_timeout=head_timeout,
            request_timeout=request_timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    def on_stop() -> None:
        if writer is not None and not writer.flush(5.0):
            logging.getLogger("patchcache.icap").warning("state writes left unfinished at exit")

    def ready(port: int) -> None:
        if metrics is not None:
            # Started once the workers are forked: a forked child must not inherit a thread.
            # The port was checked at start; lost since, the service runs on without metrics.
            try:
                where = metrics.start()
            except OSError as exc:
                logging.getLogger("patchcache.icap").error("no metrics endpoint: %s", exc)
            else:
                click.echo(f"patchcache icap: metrics on http://{where}/metrics", err=True)
        click.echo(f"patchcache icap: listening on {host}:{port} ({workers} worker(s))", err=True)

    run_server(
        service,
        host.strip("[]"),
        int(port_text),
        workers=workers,
        limits=limits,
        ready=ready,
        on_stop=on_stop,
        on_error=metrics.counters.error if metrics else None,
        worker_init=metrics.counters.bind if metrics else None,
    )


def _icap_metrics_or_exit(
    listen: Listen | None, rules: CompiledRules, workers: int
) -> IcapMetricsEndpoint | None:
    if listen is None:
        return None
    from patchcache.metrics import check_bindable
    from patchcache.metrics.icap import IcapMetricsEndpoint

    try:
        check_bindable(listen)
    except OSError as exc:
        metrics_bind_failed(listen, exc)
    return IcapMetricsEndpoint(listen, [cls.name for cls in rules.classes], max(1, workers))


def _guard_icap_state(state: StateSpec, rules: CompiledRules) -> None:
    """The key-scheme guard, before workers fork (a SQLite connection must not cross a fork).
    A failure is logged and the service runs on: it only writes first sights, under the current
    keys; the next guard that succeeds retires what the rules changed."""
    import logging

    from patchcache.errors import ConfigError, StateError
    from patchcache.state_guard import guard_key_schemes

    log = logging.getLogger("patchcache.icap")
    try:
        with state.open() as store:
            guard_key_schemes(store, rules, log.warning)
    except (StateError, ConfigError) as exc:
        log.warning("key-scheme guard not applied: %s", exc)


@main.command("demo")
@click.option("--clients", default=4, show_default=True, help="BITS-like clients per file.")
@click.option("--size-mib", default=48, show_default=True, help="Size of each update file.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep Squid's logs and state here (default: a temporary directory).",
)
def demo_cmd(clients: int, size_mib: int, workdir: Path | None) -> None:
    """Throwaway Squid on loopback, local origin, ranged clients: upstream bytes compared."""
    from patchcache.testbed import MiB
    from patchcache.testbed.scenarios import FileSpec, format_table, run_all

    specs = [
        FileSpec("Windows Update .msu (digest name)", size_mib * MiB, "wu", clients, variants=3),
        FileSpec("Delivery Optimization (P1..P4)", size_mib * MiB, "do", clients, variants=clients),
        FileSpec(
            "ordinary video, 4 MiB read each",
            64 * MiB,
            "plain",
            min(clients, 3),
            read_bytes=4 * MiB,
        ),
    ]
    click.echo(
        f"patchcache demo: {clients} clients per file, sequential 1 MiB ranges, "
        "through a throwaway Squid on loopback; Squid default vs best hand-tuned vs patchcache",
        err=True,
    )
    results = run_all(specs, workdir=workdir, progress=lambda m: click.echo(f"  {m}", err=True))
    click.echo(format_table(results))


@main.command("selftest")
@click.option(
    "--squid",
    "squid_binary",
    default=None,
    help="The squid program to test with (default: squid on PATH or in /usr/sbin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write JUnit XML to this file, for CI systems.",
)
@click.option("--keep", is_flag=True, help="Keep the throwaway Squid's directory (logs, config).")
def selftest_cmd(squid_binary: str | None, as_json: bool, junit: Path | None, keep: bool) -> None:
    """Check this installation with a throwaway Squid on loopback; exit 0 only if all pass.

    Starts Squid with the suite attached as `patchcache squid-conf` generates it, serves
    update-like files from a local origin and checks: shared keys and no key for look-alike
    hosts, one upstream copy of a ranged download and hits after it, per-class and default
    size limits, a helper fed garbage, a digest mismatch purged and parked, the ICAP service
    killed with clients still served, and that Squid accepts the generated configuration.
    Nothing leaves 127.0.0.1.
    """
    from patchcache.selftest import run_selftest, text_lines, to_json, to_junit

    def progress(result: object) -> None:
        if not as_json:
            from patchcache.selftest import CheckResult

            assert isinstance(result, CheckResult)
            mark = "PASS" if result.passed else "FAIL"
            click.echo(f"{mark} {result.name} ({result.seconds:.1f}s): {result.detail}")

    report = run_selftest(squid_binary, keep=keep, progress=progress)
    if as_json:
        click.echo(to_json(report))
    else:
        click.echo(text_lines(report)[-1])
        if report.workdir:
            click.echo(f"work directory kept: {report.workdir}")
    if junit is not None:
        junit.write_text(to_junit(report))
    sys.exit(0 if report.passed else 1)


def _own_binary() -> str:
    # The program beside this interpreter (what runs now), not whatever PATH finds first.
    try:
        return str(console_script())
    except InstallationError:
        return str(Path(sys.argv[0]).absolute())


if __name__ == "__main__":
    main()
