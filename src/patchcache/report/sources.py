"""Read access logs as lines, in bounded memory, whatever they hold.

Plain files, rotated copies (`access.log.1`) and compressed ones (`.gz`, also `.bz2` and `.xz`)
are told apart by their first bytes, not their names (logrotate's `delaycompress` leaves
`access.log.2.gz` beside a plain `access.log.1`). Reading is in 1 MiB blocks decoded as
Latin-1, which maps every byte to a character: binary junk becomes a bad line, never an
exception. A "line" that outgrows `MAX_LINE` across blocks (Squid writes a few KiB at most) is
junk: it is dropped while it is read, so a file without newlines cannot fill the memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Iterator
from pathlib import Path

BLOCK = 1 << 20
MAX_LINE = 64 * 1024


def open_log(path: Path) -> io.BufferedIOBase:
    """The file's bytes, decompressed if it is gzip, bzip2 or xz."""
    with path.open("rb") as probe:
        magic = probe.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    return path.open("rb")


class LineReader:
    """Iterates over blocks of whole lines (lists of str without their newlines). Memory is
    bounded by the block size plus `max_line` for the line that straddles two blocks;
    `overlong` counts the lines dropped because they outgrew `max_line`."""

    def __init__(
        self, stream: io.BufferedIOBase, block: int = BLOCK, max_line: int = MAX_LINE
    ) -> None:
        self._stream = stream
        self._block = block
        self._max_line = max_line
        self.overlong = 0

    def __iter__(self) -> Iterator[list[str]]:
        carry = ""
        skipping = False  # inside an overlong line: drop everything up to its newline
        while True:
            data = self._stream.read(self._block)
            if not data:
                break
            lines = data.decode("latin-1").split("\n")
            tail = lines.pop()
            if lines:
                if skipping:
                    lines.pop(0)
                    skipping = False
                else:
                    lines[0] = carry + lines[0]
                carry = ""
                if lines:
                    yield lines
            if not skipping:
                carry += tail
                if len(carry) > self._max_line:
                    carry = ""
                    skipping = True
                    self.overlong += 1
        if carry:
            yield [carry]  # a last line without its newline (a log cut mid-write)
