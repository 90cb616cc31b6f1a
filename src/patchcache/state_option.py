"""``--state-dir`` / ``--state`` / ``--state-password-file``: where the shared state lives.

Every command that uses the state takes either ``--state-dir DIR`` (the directory form) or
``--state SPEC``, where SPEC is a directory too or a ``redis://host:port/db`` /
``rediss://…`` URL. A Redis password is only ever read from a file (``--state-password-file``
or ``?password_file=`` in the URL): a command line is visible to every local user.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from patchcache.errors import ConfigError
from patchcache.state.redis_url import is_redis_url, parse_redis_url

if TYPE_CHECKING:  # the state modules load only when a command opens the state
    from patchcache.state import StateStore


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A state directory (absolute) or a Redis URL, with the Redis password file if any."""

    spec: str
    password_file: Path | None = None

    @property
    def directory(self) -> Path | None:
        """The state directory, or None for a Redis state."""
        return None if is_redis_url(self.spec) else Path(self.spec)

    def open(self) -> StateStore:
        from patchcache.state.open import open_state

        return open_state(self.spec, password_file=self.password_file)

    def __str__(self) -> str:
        return self.spec


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


def state_options(help_text: str, *, required: bool = False) -> Callable[[Any], Any]:
    """Add the three state options to a click command, which receives them as one
    ``state: StateSpec | None`` argument (never None when `required`)."""

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

        options = [
            click.option(
                "--state-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help=help_text,
            ),
            click.option(
                "--state",
                "state_url",
                default=None,
                metavar="DIR|URL",
                help="The shared state: a directory, or redis://host:port/db (rediss:// for "
                "TLS) for several boxes sharing one state.",
            ),
            click.option(
                "--state-password-file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="File holding the Redis password (never put it on the command line).",
            ),
        ]
        decorated: Callable[..., Any] = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate
