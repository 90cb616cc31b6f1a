"""The report as one JSON-ready document, built from an `Aggregator` once the logs are read.

Shape (all byte figures are integers):
``{"classes": {"<class>": {"pack": ..., "requests": n, "hit_requests": n, "bytes_to_clients": n,
"hit_bytes": n, "upstream_bytes": n, "upstream_bytes_exact": bool, "bytes_saved": n,
"byte_hit_ratio": x, "request_hit_ratio": x, "distinct_objects": n, ...,
"top_objects": [...], "hourly": [...], "daily": [...]}}, "other": {...}, "total": {...},
"lines": {...}, "estimates": [...]}``
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from patchcache.report.aggregate import (
    BYTES,
    COUNTERS,
    EXACT,
    HIT_BYTES,
    HIT_REQUESTS,
    HOUR,
    REQUESTS,
    Aggregator,
    Group,
)

DAY = 86400
HIT_CODES_NOTE = (
    "hits: TCP_* result codes containing HIT (TCP_HIT, TCP_MEM_HIT, TCP_IMS_HIT, TCP_INM_HIT, "
    "TCP_CF_HIT, TCP_NEGATIVE_HIT, TCP_OFFLINE_HIT, also _ABORTED/_TIMEDOUT), and "
    "TCP_REFRESH_UNMODIFIED, TCP_REFRESH_IGNORED, TCP_REFRESH_FAIL_OLD (body served from the "
    "cache after revalidation); TCP_REFRESH_MODIFIED and TCP_CLIENT_REFRESH_MISS are misses"
)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 6)


def _counters(values: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(COUNTERS, values, strict=True):
        if name != "upstream_exact_requests":
            out[name] = value
    out["upstream_bytes_exact"] = values[REQUESTS] > 0 and values[EXACT] == values[REQUESTS]
    out["byte_hit_ratio"] = _ratio(values[HIT_BYTES], values[BYTES])
    out["request_hit_ratio"] = _ratio(values[HIT_REQUESTS], values[REQUESTS])
    return out


def _series(hours: dict[int, list[int]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    hourly: list[dict[str, Any]] = []
    days: dict[int, list[int]] = {}
    for hour in sorted(hours):
        values = hours[hour]
        hourly.append({"start": iso(hour * HOUR), **_counters(values)})
        day = days.setdefault(hour * HOUR // DAY, [0] * len(COUNTERS))
        for i, value in enumerate(values):
            day[i] += value
    daily = [{"start": iso(day * DAY), **_counters(days[day])} for day in sorted(days)]
    return hourly, daily


def _group(group: Group, top: int) -> dict[str, Any]:
    distinct, exact = group.distinct()
    objects = sorted(group.objects.items(), key=lambda item: (-item[1][0], item[0]))[:top]
    hourly, daily = _series(group.hours)
    return {
        "pack": group.pack,
        **_counters(group.totals()),
        "distinct_objects": distinct,
        "distinct_objects_exact": exact,
        "top_objects": [{"key": k, "bytes": v[0], "requests": v[1]} for k, v in objects],
        "top_objects_exact": group.top_exact,
        "hourly": hourly,
        "daily": daily,
    }


def build(agg: Aggregator, sources: list[dict[str, Any]], *, top: int = 10) -> dict[str, Any]:
    groups = [*agg.groups.values(), agg.other]
    all_hours: dict[int, list[int]] = {}
    for group in groups:
        for hour, values in group.hours.items():
            total = all_hours.setdefault(hour, [0] * len(COUNTERS))
            for i, value in enumerate(values):
                total[i] += value
    totals = [0] * len(COUNTERS)
    for values in all_hours.values():
        for i, value in enumerate(values):
            totals[i] += value
    hourly, daily = _series(all_hours)
    distinct = [g.distinct() for g in groups]
    stats = agg.stats
    estimates: list[str] = []
    if totals[REQUESTS] and totals[EXACT] < totals[REQUESTS]:
        estimates += [
            "upstream_bytes (bytes sent to clients on misses: the log has no %<bs; add the "
            "patchcache log from `patchcache squid-conf` for exact figures)",
            "bytes_saved (the bytes of hits)",
        ]
    if not all(exact for _, exact in distinct):
        estimates.append("distinct_objects where distinct_objects_exact is false (HyperLogLog)")
    if any(not g.top_exact for g in groups):
        estimates.append("top_objects where top_objects_exact is false (pruned to the biggest)")
    fmts = stats.formats
    notes: list[str] = []
    if fmts.get("patchcache") and (fmts.get("squid") or fmts.get("combined")):
        notes.append(
            "both patchcache and default-format lines were read: if they log the same "
            "requests (access.log and patchcache.log of one Squid), those are counted twice"
        )
    return {
        "generated_at": iso(dt.datetime.now(dt.UTC).timestamp()),
        "since": None if agg.since == float("-inf") else iso(agg.since),
        "until": None if agg.until == float("inf") else iso(agg.until),
        "sources": sources,
        "lines": {
            "read": stats.read,
            "counted": stats.counted,
            "bad": stats.bad,
            "outside_range": stats.outside_range,
            "formats": dict(sorted(fmts.items())),
            "bad_examples": stats.bad_examples,
        },
        "hit_codes": HIT_CODES_NOTE,
        "estimates": estimates,
        "notes": notes,
        "classes": {name: _group(g, top) for name, g in agg.groups.items()},
        "other": _group(agg.other, top),
        "total": {
            **_counters(totals),
            "distinct_objects": sum(n for n, _ in distinct),
            "distinct_objects_exact": all(exact for _, exact in distinct),
            "hourly": hourly,
            "daily": daily,
        },
    }
