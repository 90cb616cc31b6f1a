"""The report as plain text for a terminal or a mail."""

from __future__ import annotations

from typing import Any


def human_bytes(value: float) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _row(name: str, group: dict[str, Any]) -> str:
    upstream = human_bytes(group["upstream_bytes"])
    if group["requests"] and not group["upstream_bytes_exact"]:
        upstream = "~" + upstream
    return (
        f"{name:<24} {group['requests']:>10} {_pct(group['request_hit_ratio']):>7} "
        f"{human_bytes(group['bytes_to_clients']):>11} {human_bytes(group['hit_bytes']):>11} "
        f"{upstream:>12} {_pct(group['byte_hit_ratio']):>7} {group['distinct_objects']:>8}"
    )


def render_text(report: dict[str, Any], *, top: int = 5) -> str:
    lines = [
        "patchcache report",
        f"period: {report['since'] or 'start of logs'} .. {report['until'] or 'end of logs'}",
    ]
    for source in report["sources"]:
        lines.append(f"log: {source['path']} ({source['lines']} lines, {source['bad_lines']} bad)")
    stats = report["lines"]
    formats = ", ".join(f"{k} {v}" for k, v in stats["formats"].items()) or "none"
    lines.append(
        f"lines: {stats['read']} read, {stats['counted']} counted ({formats}), "
        f"{stats['bad']} bad, {stats['outside_range']} outside the period"
    )
    lines.append("")
    header = (
        f"{'class':<24} {'requests':>10} {'req hit':>7} {'to clients':>11} {'from cache':>11} "
        f"{'from upstream':>12} {'byte hit':>7} {'objects':>8}"
    )
    lines += [header, "-" * len(header)]
    used = [(n, g) for n, g in report["classes"].items() if g["requests"]]
    used.sort(key=lambda item: -item[1]["bytes_to_clients"])
    for name, group in used:
        lines.append(_row(name, group))
    lines.append(_row("other", report["other"]))
    lines.append("-" * len(header))
    lines.append(_row("total", report["total"]))
    total = report["total"]
    lines.append("")
    saved = human_bytes(total["bytes_saved"])
    if not total["requests"]:
        exact = "no requests"
    else:
        exact = "exact" if total["upstream_bytes_exact"] else "estimated"
    lines.append(f"bytes saved on the uplink: {saved} ({exact})")
    unused = [n for n, g in report["classes"].items() if not g["requests"]]
    if unused:
        lines.append(f"classes without requests: {', '.join(unused)}")
    for name, group in used:
        if not group["top_objects"]:
            continue
        mark = "" if group["top_objects_exact"] else " (approximate)"
        lines.append("")
        lines.append(f"top objects of {name}{mark}:")
        for obj in group["top_objects"][:top]:
            lines.append(
                f"  {human_bytes(obj['bytes']):>11} {obj['requests']:>7} req  {obj['key']}"
            )
    if report["estimates"] or report["notes"]:
        lines.append("")
        lines += [f"estimate: {text}" for text in report["estimates"]]
        lines += [f"note: {text}" for text in report["notes"]]
    if stats["bad_examples"]:
        lines.append("")
        lines.append("examples of bad lines:")
        lines += [f"  {example}" for example in stats["bad_examples"]]
    lines.append("")
    lines.append(report["hit_codes"])
    return "\n".join(lines) + "\n"
