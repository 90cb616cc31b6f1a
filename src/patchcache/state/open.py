"""`open_state(spec)`: the state store a ``--state`` / ``--state-dir`` value names.

A ``redis://`` or ``rediss://`` URL opens `RedisStateStore`; anything else is a directory path
and opens the diskcache `StateStore`. Both are `StateStore`s (the Redis one runs the same
transitions over another key-value map), so callers need not know which they hold.
"""

from __future__ import annotations

from pathlib import Path

from patchcache.state.redis_url import is_redis_url, parse_redis_url
from patchcache.state.store import StateStore


def open_state(
    spec: str | Path, *, password_file: Path | None = None, timeout: float = 10.0
) -> StateStore:
    """Open the state at `spec` (a directory or a Redis URL). Raises `StateError` if it cannot
    be opened, `ConfigError` if the URL is malformed or the password file unreadable."""
    text = str(spec)
    if is_redis_url(text):
        from patchcache.state.redis_store import RedisStateStore  # redis only when used

        return RedisStateStore(parse_redis_url(text, password_file=password_file), timeout=timeout)
    return StateStore(Path(text), timeout=timeout)


def is_directory_state(spec: str | Path) -> bool:
    """True if `spec` names a state directory rather than a Redis database."""
    return not is_redis_url(str(spec))
