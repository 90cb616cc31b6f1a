"""Parse a ``redis://`` / ``rediss://`` state URL; the password only ever comes from a file.

``redis://[user@]host[:port][/db][?password_file=PATH&namespace=NAME]``. A password written in
the URL is refused: a command line is visible to every local user (ps, /proc) and lands in
squid.conf, so it is read from a file (``?password_file=`` or ``--state-password-file``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from patchcache.errors import ConfigError

SCHEMES = ("redis", "rediss")
DEFAULT_NAMESPACE = "patchcache:"


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None
    namespace: str
    display: str  # the URL as given, for messages (it never holds a password)


def is_redis_url(spec: str) -> bool:
    return spec.split("://", 1)[0].lower() in SCHEMES and "://" in spec


def parse_redis_url(
    url: str, *, password_file: Path | None = None, read_password: bool = True
) -> RedisTarget:
    """`url` as a `RedisTarget`; `ConfigError` naming the URL (never a password) if malformed.
    With `read_password` False the password file is not read (only the syntax is checked)."""
    parts = urllib.parse.urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.password is not None:
        raise ConfigError(
            f"state URL {shown}: a password in the URL is refused (visible to every local user); "
            "put it in a file and pass ?password_file=PATH or --state-password-file"
        )
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(f"state URL {url!r}: expected redis://host[:port][/db]")
    try:
        port = parts.port or 6379
        path = parts.path.strip("/")
        db = int(path) if path else 0
    except ValueError as exc:
        raise ConfigError(f"state URL {url!r}: port and database must be numbers") from exc
    query = urllib.parse.parse_qs(parts.query, strict_parsing=False)
    unknown = set(query) - {"password_file", "namespace"}
    if unknown:
        raise ConfigError(f"state URL {url!r}: unknown parameter {sorted(unknown)[0]!r}")
    if "password_file" in query:
        if password_file is not None:
            raise ConfigError(f"state URL {url!r}: password_file given twice")
        password_file = Path(query["password_file"][-1])
    password = None
    if password_file is not None and read_password:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"state password file: {exc}", file=str(password_file)) from exc
    namespace = query.get("namespace", [DEFAULT_NAMESPACE])[-1]
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=db,
        tls=parts.scheme == "rediss",
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=password,
        namespace=namespace,
        display=url,
    )
