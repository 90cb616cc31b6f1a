"""Python cost of one ICAP request in patchcache's server, in one process, without sockets.

`bench/icap_rps.py` measures requests/s over real sockets, where the kernel, the load generator
and the other worker share the 2 cores. This bench isolates the part that is ours: it feeds the
same RESPMOD messages as `icap_rps.py` to the server's per-connection protocol object (the
ICAP core, the adapter and the service, exactly as on a real connection) with a transport that
only collects the replies, and prints microseconds per request.

Services: ``null`` (`NullService`, what `icap_rps.py` runs) and ``rules`` (`PatchcacheService`
with the built-in rule packs and no state directory: the class look-up and the size decision
run, the first-sight record is not written), and ``metrics``: the same with the Prometheus
counters of `--metrics-listen` (`patchcache.metrics.icap.IcapCounters`: one shared-memory add
per request).

Usage: python bench/icap_core_cost.py [--requests 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icap_rps import respmod

from patchcache.icap_service.patchcache_service import PatchcacheService
from patchcache.icap_service.server import ServerLimits, _IcapProtocol, _Server
from patchcache.icap_service.service_interface import IcapService, NullService
from patchcache.metrics.icap import IcapCounters
from patchcache.rules import load_rules


class _CollectingTransport:
    """Just enough of asyncio.Transport for the protocol object: keeps the last reply."""

    def __init__(self) -> None:
        self.last = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def close(self) -> None:
        raise AssertionError("the server closed a healthy connection")

    def abort(self) -> None:
        raise AssertionError("the server aborted a healthy connection")


def cost_us(service: IcapService, message: bytes, requests: int) -> float:
    """Microseconds per request for ``requests`` copies of ``message`` on one connection."""
    proto = _IcapProtocol(_Server(service, ServerLimits(), 1))
    transport = _CollectingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    feed = proto.data_received
    start = time.perf_counter()
    for _ in range(requests):
        feed(message)
    elapsed = time.perf_counter() - start
    if transport.writes != requests or not transport.last.startswith(b"ICAP/1.0 204 "):
        raise SystemExit(f"unexpected reply {transport.last[:60]!r} ({transport.writes} writes)")
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rules = load_rules(None)
    counters = IcapCounters([cls.name for cls in rules.classes], workers=2)
    services: dict[str, IcapService] = {
        "null": NullService(),
        "rules": PatchcacheService(rules),
        "metrics": PatchcacheService(rules, counters=counters),
    }
    print(f"{'workload':10} {'service':8} {'best us/req':>12} {'median':>8}")
    for kind in ("nullbody", "preview0"):
        message = respmod(1344, "respmod", kind)
        for name, service in services.items():
            samples = sorted(cost_us(service, message, args.requests) for _ in range(args.rounds))
            median = samples[len(samples) // 2]
            print(f"{kind:10} {name:8} {samples[0]:12.2f} {median:8.2f}")


if __name__ == "__main__":
    main()
