"""The small error hierarchy shared by every part of patchcache.

Each error carries a status hint: the ICAP or HTTP status code an adapter should answer with
when the error reaches it. Protocol cores raise these; adapters turn them into replies and keep
serving.
"""

from __future__ import annotations


class PatchcacheError(Exception):
    """Base of every error patchcache raises on purpose."""

    status_hint: int = 500


class ConfigError(PatchcacheError):
    """A rules file or option is wrong. Names the file and the field so an admin can fix it."""

    status_hint = 500

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.field = field
        where = ": ".join(part for part in (file, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ProtocolError(PatchcacheError):
    """Bytes from a peer that do not follow the protocol (helper line, ICAP or HTTP message)."""

    status_hint = 400

    def __init__(self, message: str, *, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class StateError(PatchcacheError):
    """The shared state directory cannot be read or written."""

    status_hint = 500
