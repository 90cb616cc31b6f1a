"""The report's charts as inline SVG, drawn by matplotlib.

matplotlib's object API (a `Figure` with its own SVG canvas) is used, never `pyplot`: no global
state, no GUI backend, nothing shown. Text is drawn as paths (`svg.fonttype: path`) so the
page needs no font at all (the admin's browser may be offline), and the SVG carries no date
so the same report renders to the same bytes.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports a backend; never a GUI one

from matplotlib.figure import Figure

_GIB = 1024**3
SERVED = "#2b7bba"
FETCHED = "#e07b39"
SAVED = "#3a9a5b"
_RC: dict[Any, Any] = {"svg.fonttype": "path", "font.size": 10, "svg.hashsalt": "patchcache"}


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(
            out,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    text = out.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inlined in HTML


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def bytes_per_class(report: dict[str, Any]) -> str:
    """Bytes served to clients and bytes fetched from upstream, per vendor class."""
    groups = [(n, g) for n, g in report["classes"].items() if g["requests"]]
    groups.sort(key=lambda item: item[1]["bytes_to_clients"])
    groups.insert(0, ("other", report["other"]))
    names = [n for n, _ in groups]
    served = [g["bytes_to_clients"] / _GIB for _, g in groups]
    fetched = [g["upstream_bytes"] / _GIB for _, g in groups]
    fig = _figure(8, 0.5 * len(names) + 1.5)
    ax = fig.add_subplot()
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], served, height=0.4, color=SERVED, label="served to clients")
    exact = report["total"]["upstream_bytes_exact"]
    ax.barh(
        [y - 0.2 for y in ys],
        fetched,
        height=0.4,
        color=FETCHED,
        hatch=None if exact else "//",
        label="fetched from upstream" + ("" if exact else " (estimate)"),
    )
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("GiB")
    ax.set_title("Bytes served vs fetched per vendor")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _days(series: list[dict[str, Any]]) -> list[dt.datetime]:
    return [dt.datetime.strptime(p["start"], "%Y-%m-%dT%H:%M:%SZ") for p in series]


def savings_per_day(report: dict[str, Any]) -> str:
    """Bytes saved on the uplink, per day."""
    daily = report["total"]["daily"]
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    labels = [d.strftime("%Y-%m-%d") for d in _days(daily)]
    ax.bar(labels, [p["bytes_saved"] / _GIB for p in daily], color=SAVED)
    ax.set_ylabel("GiB saved")
    exact = report["total"]["upstream_bytes_exact"]
    ax.set_title("Uplink bytes saved per day" + ("" if exact else " (estimate)"))
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def hit_ratio_over_time(report: dict[str, Any]) -> str:
    """Byte and request hit ratios, per hour over short periods, per day over long ones."""
    hourly = report["total"]["hourly"]
    series = hourly if len(hourly) <= 24 * 14 else report["total"]["daily"]
    unit = "hour" if series is hourly else "day"
    when: Any = _days(series)  # matplotlib takes datetimes; its stubs say floats
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    for key, label, color in (
        ("byte_hit_ratio", "byte hit ratio", SERVED),
        ("request_hit_ratio", "request hit ratio", FETCHED),
    ):
        values = [100 * p[key] if p[key] is not None else float("nan") for p in series]
        ax.plot(when, values, label=label, color=color, linewidth=1.5)
    ax.xaxis_date()
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(f"Hit ratio per {unit}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _svg(fig)
