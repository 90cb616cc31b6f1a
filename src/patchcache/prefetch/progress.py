"""Fills in progress, as `patchcache status` shows them: percent, rate, ETA.

The records keep each fill's bytes so far (`ObjectRecord.bytes_filled`) but not when it began,
so a rate cannot be derived from them. Each prefetcher therefore writes a small JSON file of its
running fills, ``<state dir>/progress/<owner>.json``, at each heartbeat (atomically: a temporary
file renamed over the old one), and removes it when it stops. `read_boards` reads them all and
skips files not refreshed within `STALE_AFTER` seconds (a prefetcher killed with SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchcache.logging_setup import redact

__all__ = ["STALE_AFTER", "FillStatus", "ProgressBoard", "eta_seconds", "read_boards"]

BOARD_DIR = "progress"
STALE_AFTER = 60.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(slots=True)
class FillStatus:
    """One running fill."""

    key: str
    class_name: str
    url: str
    started: float
    received: int = 0
    total: int | None = None
    updated: float = 0.0

    def rate(self, now: float) -> float:
        """Bytes per second since the fill began."""
        elapsed = now - self.started
        return self.received / elapsed if elapsed > 0 else 0.0

    def percent(self) -> float | None:
        if not self.total:
            return None
        return round(100.0 * self.received / self.total, 1)

    def to_dict(self, now: float) -> dict[str, Any]:
        rate = self.rate(now)
        return {
            "key": self.key,
            "class": self.class_name,
            "url": redact(self.url),
            "started": self.started,
            "received": self.received,
            "total": self.total,
            "percent": self.percent(),
            "rate_bytes_per_second": round(rate, 1),
            "eta_seconds": eta_seconds(self.received, self.total, rate),
            "updated": now,
        }


def eta_seconds(received: int, total: int | None, rate: float) -> float | None:
    """Seconds left at `rate`, or None when the size or a rate is unknown."""
    if total is None or rate <= 0:
        return None
    return round(max(0, total - received) / rate, 1)


class ProgressBoard:
    """This prefetcher's running fills, mirrored to its file."""

    def __init__(
        self, state_dir: Path, owner: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._dir = state_dir / BOARD_DIR
        self._path = self._dir / (_UNSAFE.sub("_", owner) + ".json")
        self._owner = owner
        self._clock = clock
        self.fills: dict[str, FillStatus] = {}

    def begin(self, key: str, class_name: str, url: str, total: int | None) -> FillStatus:
        status = FillStatus(key, class_name, url, started=self._clock(), total=total)
        self.fills[key] = status
        return status

    def end(self, key: str) -> None:
        self.fills.pop(key, None)

    def write(self) -> None:
        """Write the file (blocking; small). Errors are ignored: progress is advisory."""
        now = self._clock()
        doc = {
            "owner": self._owner,
            "pid": os.getpid(),
            "updated": now,
            "fills": [fill.to_dict(now) for fill in self.fills.values()],
        }
        with contextlib.suppress(OSError):
            self._dir.mkdir(exist_ok=True)
            tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self._path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._path.unlink()


def read_boards(state_dir: Path, now: float) -> list[dict[str, Any]]:
    """Running fills of every live prefetcher (files refreshed within STALE_AFTER)."""
    fills: list[dict[str, Any]] = []
    folder = state_dir / BOARD_DIR
    if not folder.is_dir():
        return fills
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("fills"), list):
            continue
        updated = doc.get("updated")
        if not isinstance(updated, int | float) or now - updated > STALE_AFTER:
            continue
        for fill in doc["fills"]:
            if isinstance(fill, dict):
                fills.append({**fill, "owner": doc.get("owner")})
    return fills
