"""How fast one unthrottled prefetch fill runs through a real Squid, and what it costs in CPU.

Two fills of one object (256 MiB by default) through a throwaway Squid 5.7 with the generated
patchcache config, from the testbed origin:

1. `miss`: the prefetcher's own run (`Prefetcher.run` with `once`): Squid fetches the object
   from the origin while the prefetcher reads and hashes it;
2. `hit`: the same fill again with the worker's fetcher alone: Squid serves it from its cache,
   so this line is the client's own speed (parsing, hashing, the event loop).

3. `wire`: the fetcher alone against a minimal origin thread on loopback (no Squid, no
   hashing): the HTTP client's own cost per MiB, the figure the protocol code decides.

CPU seconds are the event loop thread's (`RUSAGE_THREAD`): the origin's threads run in this
process too and are left out.

    python bench/prefetch_fill_speed.py [--size-mib 256] [--repeat 3]

Run as root (Squid switches to user proxy; its helpers must reach this Python).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pwd
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path

from patchcache.installation import check_runnable, console_script
from patchcache.prefetch import fetch as fetch_module
from patchcache.prefetch.fetch import Proxy
from patchcache.prefetch.worker import Prefetcher, WorkerSettings
from patchcache.rules import load_rules
from patchcache.squidconf import ConfOptions, render_squid_conf
from patchcache.state import StateStore
from patchcache.testbed import Origin, SquidInstance

MiB = 1 << 20

RULES = """
packs = []
[classes.dl]
hosts = ["dl.example.com"]
path = '^/pkg/.*_(?P<digest>[0-9a-f]{40})\\.bin$'
key = "/sha1/{digest}"
digest = "sha1"
max_object_size = "4 GiB"
"""


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _line(name: str, size: int, seconds: float, cpu: float) -> None:
    print(
        f"  {name:<5} {size / MiB:>6.0f} MiB {seconds:>7.2f} s {size / MiB / seconds:>8.1f} MiB/s"
        f" {cpu:>6.2f} CPU s ({cpu / (size / MiB) * 1000:.2f} ms/MiB)"
    )


async def _hit(proxy: Proxy, url: str) -> int:
    # As the worker fetches (sha1 on, no throttle, 64 KiB pieces). `fetch_whole` is what the
    # worker's ProxyFetcher calls; older trees had no ProxyFetcher, so the bench calls it directly.
    result = await fetch_module.fetch_whole(proxy, url, digest="sha1")
    return result.total


def _serve_once(listener: socket.socket, body: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        size = len(body)
        conn.sendall(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-%d/%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (size - 1, size, size)
        )
        conn.sendall(memoryview(body))


def run_wire(size: int, repeat: int) -> None:
    print(f"== the fetcher alone on loopback, {size / MiB:.0f} MiB, no digest")
    body = os.urandom(1024) * (size // 1024)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        proxy = Proxy("127.0.0.1", listener.getsockname()[1])
        for _ in range(repeat):
            server = threading.Thread(target=_serve_once, args=(listener, body))
            server.start()
            cpu, began = _thread_cpu(), time.monotonic()
            result = asyncio.run(fetch_module.fetch_whole(proxy, "http://o.example/x"))
            _line("wire", result.total, time.monotonic() - began, _thread_cpu() - cpu)
            server.join()
            assert result.total == size


def run(work: Path, size: int, repeat: int) -> None:
    rules_path = work / "rules.toml"
    rules_path.write_text(RULES)
    rules = load_rules(rules_path)
    binary = console_script()
    if os.geteuid() == 0:
        check_runnable(binary)
    state_dir = work / "state"
    StateStore(state_dir).close()
    if os.geteuid() == 0:
        user = pwd.getpwnam("proxy")
        for path in (state_dir, *state_dir.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
    conf = render_squid_conf(
        rules,
        ConfOptions(
            patchcache_bin=str(binary),
            rules_path=rules_path,
            state_dir=state_dir,
            store_id_children=1,
            concurrency=10,
        ),
    )
    print(f"== one unthrottled fill of {size / MiB:.0f} MiB through Squid 5.7 (sha1 on)")
    with Origin() as origin:
        squid = SquidInstance(conf, workdir=work / "squid", origin_peer_port=origin.port)
        with squid, StateStore(state_dir) as store:
            proxy = Proxy.parse(squid.proxy_url)
            for number in range(repeat):
                body = os.urandom(1024) * (size // 1024)
                digest = hashlib.sha1(body).hexdigest()
                obj = origin.register(f"/pkg/r{number}_{digest}.bin", len(body), content=body)
                url = origin.url(obj, host="dl.example.com", with_port=False)
                match = rules.match(url)
                assert match is not None
                store.record_first_sight(match.key, url, match.cls.name, size, None, None)
                settings = WorkerSettings(proxy=proxy, owner="bench", poll_interval=0.05, once=True)
                cpu, began = _thread_cpu(), time.monotonic()
                tally = asyncio.run(Prefetcher(store, rules, settings).run())
                _line("miss", size, time.monotonic() - began, _thread_cpu() - cpu)
                assert tally.completed == 1, tally
                cpu, began = _thread_cpu(), time.monotonic()
                total = asyncio.run(_hit(proxy, url))
                _line("hit", total, time.monotonic() - began, _thread_cpu() - cpu)
                assert total == size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wire-only", action="store_true", help="skip the Squid part")
    args = parser.parse_args()
    run_wire(args.size_mib * MiB, args.repeat)
    if args.wire_only:
        return
    with tempfile.TemporaryDirectory(prefix="pc-fill-") as tmp:
        run(Path(tmp), args.size_mib * MiB, args.repeat)


if __name__ == "__main__":
    main()
