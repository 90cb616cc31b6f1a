"""A `ReplySink` for `serve_lines` that keeps each write: the helper's replies as written."""

from __future__ import annotations


class MemorySink:
    """Stands in for Squid's end of the helper pipe (an ``asyncio.StreamWriter``)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        return None
