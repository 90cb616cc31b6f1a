"""Read the given logs into one report document (`summary.build`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from patchcache.errors import ConfigError
from patchcache.report.aggregate import Aggregator
from patchcache.report.sources import LineReader, open_log
from patchcache.report.summary import build
from patchcache.rules import CompiledRules, load_pack, pack_names

DEFAULT_LOGS = (Path("/var/log/squid/patchcache.log"), Path("/var/log/squid/access.log"))


def class_packs() -> dict[str, str]:
    """Class name -> the built-in pack it comes from (admin-only classes have none)."""
    packs: dict[str, str] = {}
    for pack in pack_names():
        for name in load_pack(pack).classes:
            packs.setdefault(name, pack)
    return packs


def default_logs() -> list[Path]:
    """patchcache's own log when Squid writes it (exact upstream bytes), else access.log."""
    for path in DEFAULT_LOGS:
        if path.exists():
            return [path]
    return [DEFAULT_LOGS[1]]


def make_report(
    paths: Sequence[Path],
    rules: CompiledRules,
    *,
    since: float | None = None,
    until: float | None = None,
    top: int = 10,
) -> dict[str, Any]:
    agg = Aggregator(rules, class_packs(), since=since, until=until)
    sources: list[dict[str, Any]] = []
    for path in paths:
        before = agg.stats.read, agg.stats.bad
        try:
            stream = open_log(path)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the access log: {exc.strerror}", file=str(path), field="--access-log"
            ) from None
        with stream:
            reader = LineReader(stream)
            try:
                for block in reader:
                    agg.feed(block)
            except (OSError, EOFError) as exc:
                # A compressed file cut short (rotation in progress): keep what was read.
                agg.add_bad(1, f"{path}: read stopped: {exc}")
            agg.add_bad(reader.overlong, f"{path}: a line longer than 64 KiB")
        sources.append(
            {
                "path": str(path),
                "lines": agg.stats.read - before[0],
                "bad_lines": agg.stats.bad - before[1],
            }
        )
    return build(agg, sources, top=top)
