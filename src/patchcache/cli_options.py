"""What the `patchcache` commands share, declared once: options, loading the rules, log format.

- ``--rules FILE`` (`RULES_OPTION`) and `load_rules_or_exit`: every command that reads the rules
  names the file the same way and, when the rules do not load, prints one line per problem
  (file, class and field) and exits with status 2.
- ``--state-dir`` / ``--state`` / ``--state-password-file`` (`state_options`): the shared state
  as one `StateSpec`, contradictions refused as usage errors.
- ``--log-format text|json`` (`LOG_FORMAT_OPTION`) for the services, which then call
  `patchcache.logging_setup.configure_logging`, the one place logging is set up.
- ``--metrics-listen HOST:PORT`` (`METRICS_LISTEN_OPTION`) for the services with a Prometheus
  endpoint (icap, prefetch): handed to the command as a checked `patchcache.metrics.Listen`;
  `metrics_bind_failed` is the one way a port that cannot be bound ends the start-up.

The helper commands (store-id, url-rewrite) take the same option names and help through
`HELPER_RULES_OPTION` and `helper_state_options`, typed as plain strings: click checks nothing
there, because a helper must never exit at start (Squid 5.7 stops when its helpers do); the
helper checks its files itself and answers ERR if they are unusable (patchcache.helpers.startup).
The rules library is imported only when rules are loaded, for the same reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from patchcache.errors import ConfigError
from patchcache.logging_setup import LOG_FORMATS
from patchcache.state.redis_url import is_redis_url, parse_redis_url
from patchcache.state_spec import StateSpec

if TYPE_CHECKING:
    from patchcache.metrics import Listen
    from patchcache.rules import CompiledRules

__all__ = [
    "HELPER_RULES_OPTION",
    "LOG_FORMAT_OPTION",
    "METRICS_LISTEN_OPTION",
    "RULES_OPTION",
    "helper_state_options",
    "load_rules_or_exit",
    "metrics_bind_failed",
    "resolve_state",
    "state_options",
]

Decorator = Callable[[Any], Any]

RULES_HELP = "Admin rules file (TOML). Without it, the built-in packs with their defaults."
STATE_HELP = (
    "The shared state: a directory, or redis://host:port/db (rediss:// for TLS) for several "
    "boxes sharing one state."
)
STATE_PASSWORD_FILE_HELP = "File holding the Redis password (never put it on the command line)."
METRICS_LISTEN_HELP = (
    "Serve this service's Prometheus metrics on http://HOST:PORT/metrics ([v6]:PORT for IPv6). "
    "No authentication: keep it on loopback or behind a firewall."
)

RULES_OPTION = click.option(
    "--rules",
    "rules_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=RULES_HELP,
)
HELPER_RULES_OPTION = click.option(
    "--rules",
    "rules_path",
    type=str,  # checked by the helper, never by click (whose checks exit)
    default=None,
    help=RULES_HELP,
)
LOG_FORMAT_OPTION = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one object per line (event, class, key); URL queries are never logged.",
)


def _parse_metrics_listen(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> Listen | None:
    if value is None:
        return None
    from patchcache.metrics import parse_listen  # prometheus_client: only when asked for

    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


METRICS_LISTEN_OPTION = click.option(
    "--metrics-listen",
    "metrics_listen",
    default=None,
    metavar="HOST:PORT",
    callback=_parse_metrics_listen,
    help=METRICS_LISTEN_HELP,
)


def metrics_bind_failed(listen: Listen, exc: OSError) -> NoReturn:
    """The metrics port cannot be bound (in use, no such address): one line, exit status 2."""
    click.echo(f"error: --metrics-listen {listen}: {exc}", err=True)
    raise SystemExit(2) from None


def load_rules_or_exit(
    rules_path: Path | None, *, exit_status: int = 2, count_problems: bool = False
) -> CompiledRules:
    """The compiled rules; else every problem on its own line on stderr (``error: FILE: class
    NAME: field FIELD: what``), then their number if `count_problems`, and exit with
    `exit_status`."""
    from patchcache.rules import RulesError, load_rules

    try:
        return load_rules(rules_path)
    except RulesError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        if count_problems:
            click.echo(f"{len(exc.problems)} problem(s)", err=True)
        raise SystemExit(exit_status) from None


def resolve_state(
    state_dir: str | Path | None, state: str | None, password_file: str | Path | None
) -> StateSpec | None:
    """The one state the options name, or None; `click.UsageError` if they contradict."""
    if state_dir is not None and state is not None:
        raise click.UsageError("give --state-dir or --state, not both")
    spec = str(state_dir) if state_dir is not None else state
    if spec is None:
        if password_file is not None:
            raise click.UsageError("--state-password-file needs --state redis://…")
        return None
    if is_redis_url(spec):
        found = StateSpec(spec, Path(password_file) if password_file is not None else None)
        try:
            parse_redis_url(spec, password_file=found.password_file, read_password=False)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--state") from None
        return found
    if password_file is not None:
        raise click.UsageError("--state-password-file is only for a Redis state (redis://…)")
    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{spec} is not a directory", param_hint="--state")
    return StateSpec(str(path.absolute()))


def _state_option_list(state_dir_help: str, *, checked: bool) -> list[Decorator]:
    """The three state options; `checked`: click checks the paths' kinds (never for helpers)."""
    return [
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path) if checked else str,
            default=None,
            help=state_dir_help,
        ),
        click.option("--state", "state_url", default=None, metavar="DIR|URL", help=STATE_HELP),
        click.option(
            "--state-password-file",
            type=click.Path(dir_okay=False, path_type=Path) if checked else str,
            default=None,
            help=STATE_PASSWORD_FILE_HELP,
        ),
    ]


def _with_options(command: Callable[..., Any], options: list[Decorator]) -> Callable[..., Any]:
    for option in reversed(options):
        command = option(command)
    return command


def state_options(help_text: str, *, required: bool = False) -> Decorator:
    """Add the three state options to a click command, which receives them as one
    ``state: StateSpec | None`` argument (never None when `required`). `help_text` is the
    help of ``--state-dir``: what the command does with the state."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(
            *args: Any,
            state_dir: Path | None,
            state_url: str | None,
            state_password_file: Path | None,
            **kwargs: Any,
        ) -> Any:
            state = resolve_state(state_dir, state_url, state_password_file)
            if required and state is None:
                raise click.UsageError("give the shared state: --state-dir DIR or --state URL")
            return command(*args, state=state, **kwargs)

        return _with_options(wrapper, _state_option_list(help_text, checked=True))

    return decorate


def helper_state_options(help_text: str) -> Decorator:
    """The same three options for a helper command, passed on unchecked as strings
    (``state_dir``, ``state_url``, ``state_password_file``): the helper judges them itself."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        return _with_options(command, _state_option_list(help_text, checked=False))

    return decorate
