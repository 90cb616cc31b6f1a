"""squid.conf lines that make Squid hold prefetch fills to their bandwidth limits on the WAN.

Why Squid must do it (measured on Squid 5.7, tests/integration/test_prefetch_bandwidth.py): an
expanded fetch (`range_offset_limit none`) is decoupled from its reader so that it survives the
reader's disconnect, and Squid then reads it from the origin as fast as the origin sends, whatever
the reader's pace: a prefetcher reading at 4 MiB/s saw the origin send at 100 MiB/s. A delay pool
(http://www.squid-cache.org/Doc/config/delay_pools/) limits Squid's reads from the origin for the
requests it applies to: the same fill with a 4 MiB/s pool made the origin send at 4.3 MiB/s.

The prefetcher names the class of each fill in the `X-PatchCache-Prefetch` request header; a
`req_header` ACL (fast, so usable in `delay_access`) sends the fill to its pool:

- one class-1 (aggregate) pool per class with its own `prefetch_rate`, at that rate (capped by
  the global rate);
- one pool at the global `prefetch_rate` for the fills of every other class.

Limits of the mechanism: a request belongs to exactly one pool, so when several classes with
their own rates fill at once, their sum is not capped by the global rate; Squid refills pools
once per second, so rates are exact over seconds, not milliseconds; and once the prefetcher has
disconnected (killed), no reader is left to account to, and Squid finishes the fetch unthrottled.
Real clients never send the header and are never slowed; a client that forges it only slows
itself.
"""

from __future__ import annotations

from patchcache.rules import CompiledRules

PREFETCH_HEADER = "X-PatchCache-Prefetch"
_MAX_RATE = 2**31 - 1  # Squid keeps restore rates in a C int


def _squid_rate(rate: int) -> int:
    return max(1, min(rate, _MAX_RATE))


def render_delay_pools(rules: CompiledRules) -> str:
    """The delay-pool lines for the rules' prefetch rates ('' when no rate is set).

    Include them once in squid.conf (a config has a single `delay_pools` count); they use the
    ACL names `pc_prefetch` and `pc_prefetch_<class>`.
    """
    global_rate = rules.settings.prefetch_rate
    pools: list[tuple[str, int]] = []
    for cls in rules.classes:
        rate = cls.rule.prefetch_rate
        if cls.rule.prefetch and rate is not None:
            if global_rate is not None:
                rate = min(rate, global_rate)
            pools.append((f"pc_prefetch_{cls.name}", rate))
    if global_rate is not None:
        pools.append(("pc_prefetch", global_rate))
    if not pools:
        return ""
    lines = [
        "# Prefetch bandwidth: Squid reads prefetched objects from the origin at these rates.",
        f"acl pc_prefetch req_header {PREFETCH_HEADER} .",
    ]
    for acl, _rate in pools:
        if acl != "pc_prefetch":
            name = acl.removeprefix("pc_prefetch_")
            # Class names are [a-z0-9-]: nothing to escape in the regex.
            lines.append(f"acl {acl} req_header {PREFETCH_HEADER} ^{name}$")
    lines.append(f"delay_pools {len(pools)}")
    for number, (acl, rate) in enumerate(pools, start=1):
        squid_rate = _squid_rate(rate)
        lines.append(f"delay_class {number} 1")
        # The bucket holds one second of traffic: Squid refills pools once per second.
        lines.append(f"delay_parameters {number} {squid_rate}/{squid_rate}")
        lines.append(f"delay_access {number} allow {acl}")
        lines.append(f"delay_access {number} deny all")
    return "\n".join(lines) + "\n"
