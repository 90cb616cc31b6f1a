"""A small HyperLogLog: distinct counts in fixed memory once exact sets would grow too big.

Flajolet et al. 2007, with the linear-counting correction for small cardinalities. 2**14
one-byte registers (16 KiB) give a standard error of about 1.04 / sqrt(2**14) = 0.8 %.
"""

from __future__ import annotations

import hashlib
import math

_P = 14
_M = 1 << _P
_ALPHA = 0.7213 / (1 + 1.079 / _M)


class HyperLogLog:
    __slots__ = ("_registers",)

    def __init__(self) -> None:
        self._registers = bytearray(_M)

    def add(self, item: str) -> None:
        value = int.from_bytes(
            hashlib.blake2b(item.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
        )
        index = value >> (64 - _P)
        rest = value & ((1 << (64 - _P)) - 1)
        rank = (64 - _P) - rest.bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank

    def estimate(self) -> int:
        registers = self._registers
        raw = _ALPHA * _M * _M / sum(2.0**-r for r in registers)
        zeros = registers.count(0)
        if raw <= 2.5 * _M and zeros:
            return round(_M * math.log(_M / zeros))
        return round(raw)
