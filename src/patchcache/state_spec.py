"""Where the shared state lives: a directory, or a Redis URL with the file holding its password.

The commands name it with ``--state-dir DIR`` or ``--state DIR|URL`` (and
``--state-password-file``, see `patchcache.cli_options`). A Redis password is only ever read
from a file (``--state-password-file`` or ``?password_file=`` in the URL): a command line is
visible to every local user. Light on purpose: the state modules load only when a command
opens the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from patchcache.state.redis_url import is_redis_url

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
