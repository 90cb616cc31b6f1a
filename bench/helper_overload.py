"""Does Squid survive a store-ID helper pool that stays overloaded? (by hand, not in CI)

A throwaway Squid runs the store-ID lines `patchcache squid-conf` generates, with a slow
stand-in helper (one pool of `--children` helpers, `concurrency=1`, `--delay` s per lookup), and
closed-loop clients at twice what the pool holds (running plus `queue-size`) for `--seconds`.
Squid acts on `on-persistent-overload` only once the overload has lasted 3 minutes, so a run
that shows the difference needs `--seconds 200` or more:

    python bench/helper_overload.py --seconds 200                 # generated: ERR
    python bench/helper_overload.py --seconds 200 --squid-default # the line without the option

Prints one JSON object: requests sent and answered by status, client errors, the slowest
answer, whether Squid still runs, and the cache.log lines about the overload.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil

from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, helper_queue_size, render_squid_conf
from patchcache.testbed import Origin, SquidInstance
from patchcache.testbed.overload import closed_loop, write_slow_helper
from patchcache.testbed.squid import new_workdir

_OVERLOAD_LINES = re.compile(r"busy|pending requests|overload|Too many queued|FATAL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per lookup")
    parser.add_argument("--children", type=int, default=1)
    parser.add_argument(
        "--squid-default",
        action="store_true",
        help="drop on-persistent-overload=ERR (Squid's default: die)",
    )
    args = parser.parse_args()

    helper_dir = new_workdir("overload-helper-")
    try:
        helper = write_slow_helper(helper_dir / "slow-store-id", delay=args.delay)
        opts = ConfOptions(
            patchcache_bin=str(helper),
            store_id_children=args.children,
            concurrency=1,
            report_log=None,
        )
        conf = render_squid_conf(load_rules(), opts)
        if args.squid_default:
            conf = conf.replace(" on-persistent-overload=ERR", "")
        clients = 2 * (args.children + helper_queue_size(opts))
        with Origin() as origin:
            origin.register("/d/msdownload/update/software/kb1.cab", 4096)
            url = "http://download.windowsupdate.com/d/msdownload/update/software/kb1.cab"
            squid = SquidInstance(conf, origin_peer_port=origin.port)
            with squid:
                result = closed_loop(
                    squid.proxy_url, [url], clients=clients, seconds=args.seconds, timeout=60
                )
                running = squid.running
                log = [
                    line
                    for line in squid.cache_log_text().splitlines()
                    if _OVERLOAD_LINES.search(line)
                ]
        print(
            json.dumps(
                {
                    "seconds": args.seconds,
                    "clients": clients,
                    "on_persistent_overload": "die" if args.squid_default else "ERR",
                    "sent": result.sent,
                    "answered": dict(result.statuses),
                    "client_errors": dict(result.errors),
                    "slowest_s": round(result.slowest, 2),
                    "squid_running_after": running,
                    "cache_log": log[:12],
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(helper_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
