"""Requests per second of patchcache's ICAP server answering 204 after a preview, next to c-icap.

Starts, on loopback only:
* patchcache's server with `NullService` (``--workers`` processes, SO_REUSEPORT);
* c-icap (Debian package ``c-icap``) with its ``srv_echo`` service and a throwaway config;

then drives each with the same asyncio load generator (``--connections`` persistent connections,
one request in flight per connection, for ``--seconds``) and prints requests/s and the ratio.

and, as a reference for what Python itself costs here, a "floor" server: uvloop answering every
request with a constant 204 without parsing anything (it shows how fast the load generator can
go, and the part of a request that is sockets rather than ICAP work).

Workloads (every reply must be an ICAP 204, else the run fails):
* ``nullbody``: RESPMOD with ``null-body`` and ``Allow: 204`` (heads as Squid sends them for a
  Windows Update range). Both servers answer 204: this is the side-by-side comparison.
* ``preview0``: RESPMOD, ``Preview: 0``, what Squid sends after our OPTIONS; 204 after the
  preview. patchcache only: c-icap's echo service toggles between 204 and ``100 Continue`` on
  successive previews (a demo behaviour), so it cannot be held to 204 there.

With ``--pure``, also 1 patchcache worker without the native head scanner
(``PATCHCACHE_PURE_PYTHON=1``), as on an install built without a C compiler. With ``--rules``,
also 1 worker running the real decision service (built-in rule packs, no state directory) in
place of `NullService`: the message is a Windows Update 206, so the class and size checks run.

Usage: python bench/icap_rps.py [--seconds 5] [--connections 16] [--workers 2] [--pure] [--rules]
       [--cicap-processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from patchcache.testbed.squid_logs import wait_until

HTTP_REQ = (
    b"GET http://download.windowsupdate.com/d/msdownload/update/software/x.cab HTTP/1.1\r\n"
    b"Host: download.windowsupdate.com\r\nUser-Agent: Microsoft-Delivery-Optimization/10.0\r\n"
    b"Range: bytes=0-1048575\r\nAccept: */*\r\n\r\n"
)
HTTP_RES = (
    b"HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Range: bytes 0-1048575/104857600\r\nContent-Length: 1048576\r\n"
    b'ETag: "abc123"\r\nLast-Modified: Tue, 01 Oct 2024 10:00:00 GMT\r\n'
    b"Accept-Ranges: bytes\r\n\r\n"
)


def respmod(port: int, path: str, kind: str) -> bytes:
    res = HTTP_RES
    req_len = len(HTTP_REQ)
    body_at = req_len + len(res)
    icap = [
        f"RESPMOD icap://127.0.0.1:{port}/{path} ICAP/1.0",
        f"Host: 127.0.0.1:{port}",
        "Allow: 204",
    ]
    if kind == "nullbody":
        icap.append(f"Encapsulated: req-hdr=0, res-hdr={req_len}, null-body={body_at}")
        body = b""
    else:
        icap.append("Preview: 0")
        icap.append(f"Encapsulated: req-hdr=0, res-hdr={req_len}, res-body={body_at}")
        body = b"0\r\n\r\n"
    head = ("\r\n".join(icap) + "\r\n\r\n").encode()
    return head + HTTP_REQ + res + body


class _Client(asyncio.Protocol):
    """One persistent connection sending ``message`` again as soon as a 204 comes back."""

    def __init__(self, message: bytes, deadline: float, done: asyncio.Future[int]) -> None:
        self.message = message
        self.deadline = deadline
        self.done = done
        self.count = 0
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.message)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            reply, self.buf = self.buf[:end], self.buf[end + 4 :]
            if not reply.startswith(b"ICAP/1.0 204"):
                self._finish(RuntimeError(f"unexpected reply {reply[:60]!r}"))
                return
            self.count += 1
            if time.monotonic() >= self.deadline:
                self._finish(None)
                return
            assert self.transport is not None
            self.transport.write(self.message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or RuntimeError("server closed the connection"))

    def _finish(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(self.count)
            else:
                self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def _drive(
    port: int, message: bytes, connections: int, seconds: float, pid: int | None = None
) -> tuple[float, float]:
    """(requests/s, server CPU microseconds per request; 0 when ``pid`` is None)."""
    loop = asyncio.get_running_loop()
    # Warm up (first connections, c-icap thread start) before timing.
    await _run_clients(loop, port, message, connections, 0.5)
    cpu_before = _tree_cpu(pid) if pid else 0.0
    start = time.monotonic()
    total = await _run_clients(loop, port, message, connections, seconds)
    elapsed = time.monotonic() - start
    cpu = (_tree_cpu(pid) - cpu_before) if pid else 0.0
    return total / elapsed, (cpu / total * 1e6 if total else 0.0)


def _tree_cpu(root: int) -> float:
    """User+system CPU seconds of ``root`` and its descendants (Linux /proc)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, wanted = 0.0, {root}
    for _ in range(8):  # a few generations are plenty (c-icap: main -> children)
        total += sum(stats[pid][1] for pid in wanted if pid in stats)
        wanted = {pid for pid, (ppid, _) in stats.items() if ppid in wanted}
        if not wanted:
            break
    return total


async def _run_clients(
    loop: asyncio.AbstractEventLoop, port: int, message: bytes, connections: int, seconds: float
) -> int:
    deadline = time.monotonic() + seconds
    futures: list[asyncio.Future[int]] = []
    for _ in range(connections):
        done: asyncio.Future[int] = loop.create_future()
        await loop.create_connection(
            lambda d=done: _Client(message, deadline, d), "127.0.0.1", port
        )
        futures.append(done)
    counts = await asyncio.wait_for(asyncio.gather(*futures), seconds + 30)
    return sum(counts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:

    def accepts() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    wait_until(accepts, bool, timeout=timeout, awaiting=f"the server to listen on port {port}")


@contextlib.contextmanager
def patchcache_server(
    workers: int, *, pure: bool = False, rules: bool = False
) -> Iterator[tuple[int, int]]:
    port = _free_port()
    if rules:
        # The service `patchcache icap` runs, on the built-in packs, without a state directory:
        # the URL's class and the object's size are looked up, no first sight is recorded.
        service = "PatchcacheService(load_rules(None))"
        imports = (
            "from patchcache.icap_service.patchcache_service import PatchcacheService\n"
            "from patchcache.rules import load_rules\n"
        )
    else:
        service = "NullService()"
        imports = "from patchcache.icap_service.service_interface import NullService\n"
    code = (
        "from patchcache.icap_service.server import run_server\n"
        + imports
        + f"run_server({service}, '127.0.0.1', {port}, workers={workers})\n"
    )
    env = dict(os.environ, PATCHCACHE_PURE_PYTHON="1" if pure else "")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        _wait_port(port, proc)
        time.sleep(0.3)  # let every worker reach listen()
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


FLOOR_SERVER = """
import asyncio, sys, uvloop
REPLY = b'ICAP/1.0 204 No Content\\r\\nISTag: "floor"\\r\\nEncapsulated: null-body=0\\r\\n\\r\\n'
class Floor(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        if data.endswith(b"\\r\\n\\r\\n"):  # the bench's null-body requests come whole
            self.transport.write(REPLY)
async def main(port):
    await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port)
    await asyncio.Event().wait()
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(main(int(sys.argv[1])))
"""


@contextlib.contextmanager
def floor_server() -> Iterator[tuple[int, int]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(port)])
    try:
        _wait_port(port, proc)
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def cicap_server(binary: str, processes: int = 2) -> Iterator[tuple[int, int]]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="cicap-bench-") as tmp:
        user = "root" if os.geteuid() == 0 else ""
        conf = Path(tmp, "c-icap.conf")
        lines = [
            f"PidFile {tmp}/c-icap.pid",
            f"CommandsSocket {tmp}/c-icap.ctl",
            "Timeout 300",
            "MaxKeepAliveRequests 0",
            "KeepAliveTimeout 600",
            f"StartServers {processes}",
            # 2 processes may grow to 4 (c-icap's own choice); another count is held fixed.
            f"MaxServers {4 if processes == 2 else processes}",
            "MinSpareThreads 8",
            "MaxSpareThreads 40",
            "ThreadsPerChild 32",
            f"Port 127.0.0.1:{port}",
            f"TmpDir {tmp}",
            "DebugLevel 0",
            "Pipelining on",
            "ModulesDir /usr/lib/x86_64-linux-gnu/c_icap",
            "ServicesDir /usr/lib/x86_64-linux-gnu/c_icap",
            f"ServerLog {tmp}/server.log",
            "AccessLog /dev/null",
            "Service echo srv_echo.so",
        ]
        if user:
            lines += [f"User {user}", f"Group {user}"]
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([binary, "-N", "-f", str(conf)])
        try:
            _wait_port(port, proc)
            yield port, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="patchcache worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server; best is kept")
    parser.add_argument("--cicap", default=shutil.which("c-icap") or "/usr/bin/c-icap")
    parser.add_argument(
        "--rules",
        action="store_true",
        help="also run 1 worker with the real decision service on the built-in rules",
    )
    parser.add_argument(
        "--pure",
        action="store_true",
        help="also run 1 worker without the native scanner (PATCHCACHE_PURE_PYTHON=1)",
    )
    parser.add_argument(
        "--cicap-processes", type=int, default=2, help="c-icap server processes (StartServers)"
    )
    args = parser.parse_args()

    print(
        f"loopback, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, "
        f"{args.connections} connections, {args.seconds:g} s x {args.rounds} rounds per run, "
        "load generator: 1 asyncio process"
    )
    servers: list[tuple[str, Callable[[], contextlib.AbstractContextManager[tuple[int, int]]], str]]
    servers = [
        (f"patchcache x{w}", lambda w=w: patchcache_server(w), "respmod")
        for w in sorted({1, args.workers})
    ]
    if args.rules:
        servers.append(("patchcache x1 rules", lambda: patchcache_server(1, rules=True), "respmod"))
    if args.pure:
        servers.append(("patchcache x1 pure", lambda: patchcache_server(1, pure=True), "respmod"))
    servers.append(("python floor", floor_server, "floor"))
    if os.path.exists(args.cicap):
        servers.append(
            (
                "c-icap echo",
                lambda: cicap_server(args.cicap, args.cicap_processes),
                "echo",
            )
        )
    else:
        print(f"c-icap not found at {args.cicap}: no comparison")
    best: dict[tuple[str, str], tuple[float, float]] = {}
    # Rounds interleave the servers, so a burst of load elsewhere hits them alike.
    for _ in range(args.rounds):
        for name, start, path in servers:
            with start() as (port, pid):
                patchcache = name.startswith("patchcache")
                kinds = ("nullbody", "preview0") if patchcache else ("nullbody",)
                for kind in kinds:
                    message = respmod(port, path, kind)
                    rps, cpu = asyncio.run(
                        _drive(port, message, args.connections, args.seconds, pid)
                    )
                    if rps > best.get((name, kind), (0.0, 0.0))[0]:
                        best[(name, kind)] = (rps, cpu)
    for (name, kind), (rps, cpu) in best.items():
        print(f"{name:19} {kind:9} {rps:9.0f} req/s   server CPU {cpu:5.1f} us/request")
    base = best.get(("c-icap echo", "nullbody"))
    if base:
        for name, _, _ in servers:
            if not name.startswith("patchcache"):
                continue
            rps, cpu = best[(name, "nullbody")]
            print(
                f"ratio {name} / c-icap echo (nullbody): {rps / base[0]:.2f} x the rate, "
                f"{cpu / base[1]:.2f} x the CPU per request"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
