"""Deterministic object contents for the testbed, cheap for hundreds of MiB.

A :class:`PatternContent` never holds its object in memory: byte ``p`` is computed from the seed
and ``p``. Each 64 KiB block is one pseudo-random block (from the seed) XORed with a mask built
from the block index, so any misplaced range is detectable: a shift inside a block lands on
unrelated random bytes, and a shift by whole blocks lands on another block's mask. The origin
serves these bytes and a client checks what it receives against the same source.

Windows Update names files after their SHA-1 (``NAME_<40 hex>.cab``); :func:`digest_name` builds
such names so tests can exercise digest-keyed caching and verification.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

BLOCK = 64 * 1024
_WORDS_PER_BLOCK = BLOCK // 8
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


@runtime_checkable
class ContentSource(Protocol):
    """Random access to an object's bytes."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)``, cut short at the end of the object."""
        ...


def _check_span(offset: int, length: int, size: int) -> int:
    """Validate a read and return its exclusive end, clipped to ``size``."""
    if offset < 0 or length < 0:
        raise ValueError(f"bad read: offset={offset} length={length}")
    return min(offset + length, size)


def _seed_bytes(seed: int | str | bytes) -> bytes:
    if isinstance(seed, bytes):
        raw = b"b:" + seed
    elif isinstance(seed, int):
        raw = b"i:" + str(seed).encode()
    else:
        raw = b"s:" + seed.encode()
    return hashlib.sha256(raw).digest()


@dataclass(frozen=True, slots=True)
class PatternContent:
    """``size`` bytes generated from ``seed``; see the module docstring."""

    size: int
    seed: int | str | bytes = 0
    _pattern: int = field(init=False, repr=False, compare=False)
    _salt: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"negative size {self.size}")
        key = _seed_bytes(self.seed)
        block = random.Random(key).randbytes(BLOCK)
        object.__setattr__(self, "_pattern", int.from_bytes(block, "little"))
        object.__setattr__(self, "_salt", int.from_bytes(key[:8], "little"))

    def block(self, index: int) -> bytes:
        """The whole 64 KiB block number ``index`` (the last one is not cut to ``size``)."""
        word = (((index + 1) * _GOLDEN) ^ self._salt) & _MASK64
        mask = int.from_bytes(word.to_bytes(8, "little") * _WORDS_PER_BLOCK, "little")
        return (self._pattern ^ mask).to_bytes(BLOCK, "little")

    def read(self, offset: int, length: int) -> bytes:
        end = _check_span(offset, length, self.size)
        return b"".join(self.iter_pieces(offset, end))

    def iter_pieces(self, first: int, end: int) -> Iterator[bytes]:
        """Bytes ``[first, end)`` as pieces that each stay inside one block."""
        pos = first
        while pos < end:
            index, inner = divmod(pos, BLOCK)
            take = min(BLOCK - inner, end - pos)
            data = self.block(index)
            yield data[inner : inner + take] if take != BLOCK else data
            pos += take


@dataclass(frozen=True, slots=True)
class BytesContent:
    """An object given as literal bytes (small objects, hand-made edge cases)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        end = _check_span(offset, length, self.size)
        return self.data[offset:end]


@dataclass(frozen=True, slots=True)
class CorruptedContent:
    """``inner`` with the bytes at ``flips`` inverted: the same size, the wrong bytes."""

    inner: ContentSource
    flips: tuple[int, ...] = (0,)

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, length: int) -> bytes:
        data = self.inner.read(offset, length)
        end = offset + len(data)
        hits = [pos for pos in self.flips if offset <= pos < end]
        if not hits:
            return data
        buf = bytearray(data)
        for pos in hits:
            buf[pos - offset] ^= 0xFF
        return bytes(buf)


def as_source(content: bytes | ContentSource) -> ContentSource:
    """Wrap literal bytes; pass a content source through."""
    return BytesContent(content) if isinstance(content, bytes) else content


def iter_content(
    source: ContentSource, first: int, end: int, *, piece: int = BLOCK
) -> Iterator[bytes]:
    """Bytes ``[first, end)`` of ``source`` in pieces of at most ``piece`` bytes."""
    if isinstance(source, PatternContent) and piece >= BLOCK:
        yield from source.iter_pieces(first, end)
        return
    pos = first
    while pos < end:
        take = min(piece, end - pos)
        data = source.read(pos, take)
        if not data:
            return
        yield data
        pos += len(data)


def content_sha1(content: bytes | ContentSource) -> str:
    """Lower-case hex SHA-1 of the whole object."""
    if isinstance(content, bytes):
        return hashlib.sha1(content).hexdigest()
    digest = hashlib.sha1()
    for piece in iter_content(content, 0, content.size):
        digest.update(piece)
    return digest.hexdigest()


def digest_name(
    content: bytes | ContentSource,
    *,
    stem: str = "windows10.0-kb5034441-x64",
    suffix: str = ".cab",
) -> str:
    """A Windows-Update-style file name carrying the content's SHA-1: ``STEM_<40 hex>SUFFIX``."""
    return f"{stem}_{content_sha1(content)}{suffix}"


def first_difference(expected: bytes, actual: bytes) -> int | None:
    """Index of the first byte where the two differ (a length difference counts), else None."""
    if expected == actual:
        return None
    common = min(len(expected), len(actual))
    # Narrow down by 4 KiB slices first: comparing slices runs in C.
    step = 4096
    for start in range(0, common, step):
        if expected[start : start + step] != actual[start : start + step]:
            for pos in range(start, min(start + step, common)):
                if expected[pos] != actual[pos]:
                    return pos
    return common
