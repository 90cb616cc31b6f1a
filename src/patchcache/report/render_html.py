"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no script, no
font, no link to anything elsewhere (the admin's browser may be offline)."""

from __future__ import annotations

import importlib
from html import escape
from typing import Any

from patchcache.report.render_text import human_bytes

# matplotlib is optional (the `html` extra; Debian: python3-matplotlib): without it the page
# still has every table, and says how to get the charts.
NO_CHARTS = (
    "The charts need matplotlib: install Debian's python3-matplotlib, or "
    "pip install 'patchcache[html]'."
)

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
tr.total td { font-weight: bold; border-top: 2px solid #444; }
.note { color: #555; font-size: 0.9em; }
.chart svg { max-width: 100%; height: auto; }
code { font-size: 0.85em; }
"""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _row(name: str, group: dict[str, Any], css: str = "") -> str:
    upstream = human_bytes(group["upstream_bytes"])
    if group["requests"] and not group["upstream_bytes_exact"]:
        upstream = "~" + upstream
    cells = [
        escape(name),
        escape(group.get("pack") or ""),
        str(group["requests"]),
        _pct(group["request_hit_ratio"]),
        human_bytes(group["bytes_to_clients"]),
        human_bytes(group["hit_bytes"]),
        upstream,
        human_bytes(group["bytes_saved"]),
        _pct(group["byte_hit_ratio"]),
        str(group["distinct_objects"]),
    ]
    attr = f' class="{css}"' if css else ""
    return f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_html(report: dict[str, Any]) -> str:
    used = [(n, g) for n, g in report["classes"].items() if g["requests"]]
    used.sort(key=lambda item: -item[1]["bytes_to_clients"])
    heads = [
        "class",
        "pack",
        "requests",
        "request hits",
        "to clients",
        "from cache",
        "from upstream",
        "saved",
        "byte hits",
        "objects",
    ]
    rows = [_row(n, g) for n, g in used]
    rows.append(_row("other", report["other"]))
    rows.append(_row("total", report["total"], "total"))
    stats = report["lines"]
    period = f"{report['since'] or 'start of logs'} .. {report['until'] or 'end of logs'}"
    sources = "".join(
        f"<li><code>{escape(s['path'])}</code>: {s['lines']} lines, {s['bad_lines']} bad</li>"
        for s in report["sources"]
    )
    notes = "".join(f"<li>estimate: {escape(t)}</li>" for t in report["estimates"]) + "".join(
        f"<li>{escape(t)}</li>" for t in report["notes"]
    )
    tops = []
    for name, group in used:
        items = "".join(
            f"<tr><td><code>{escape(o['key'])}</code></td><td>{human_bytes(o['bytes'])}</td>"
            f"<td>{o['requests']}</td></tr>"
            for o in group["top_objects"][:5]
        )
        approx = "" if group["top_objects_exact"] else " (approximate)"
        tops.append(
            f"<h3>{escape(name)}{approx}</h3><table><tr><th>object</th><th>bytes</th>"
            f"<th>requests</th></tr>{items}</table>"
        )
    try:
        charts = importlib.import_module("patchcache.report.charts")
    except ImportError:
        charts = None
    if charts is None:
        chart_html = f'<p class="note">{escape(NO_CHARTS)}</p>'
    elif report["total"]["requests"]:
        figures = [
            charts.bytes_per_class(report),
            charts.savings_per_day(report),
            charts.hit_ratio_over_time(report),
        ]
        chart_html = "".join(f'<div class="chart">{svg}</div>' for svg in figures)
    else:
        chart_html = "<p>No requests in the period: no charts.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>patchcache report</title>
<style>{_CSS}</style></head>
<body>
<h1>patchcache report</h1>
<p>Period: {escape(period)}. Lines: {stats["read"]} read, {stats["counted"]} counted,
{stats["bad"]} bad, {stats["outside_range"]} outside the period.</p>
<ul class="note">{sources}</ul>
<table><tr>{"".join(f"<th>{h}</th>" for h in heads)}</tr>
{"".join(rows)}</table>
<ul class="note">{notes}</ul>
{chart_html}
<h2>Top objects by bytes served</h2>
{"".join(tops)}
<p class="note">{escape(report["hit_codes"])}. Generated {escape(report["generated_at"])}.</p>
</body></html>
"""
