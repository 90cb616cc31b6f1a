"""`patchcache icap --workers 2 --metrics-listen`: the figures add up across worker processes,
and a worker killed and restarted continues its predecessor's counts (no counter goes back)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.icap_wire import TIMEOUT, read_reply, status_of

from patchcache.testbed.squid_logs import wait_until

REQ = b"GET http://files.example.org/a.iso HTTP/1.1\r\nHost: files.example.org\r\n\r\n"
RES = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
SERIES = 'patchcache_icap_requests_total{class="",decision="bypass",method="RESPMOD"}'


@dataclass
class IcapProcess:
    proc: subprocess.Popen[str]
    port: int
    metrics_url: str
    log: list[str]


@pytest.fixture
def icap_workers() -> Iterator[IcapProcess]:
    patchcache = Path(sys.executable).with_name("patchcache")
    command = [
        str(patchcache),
        "icap",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            port, metrics_url = 0, ""
            log: list[str] = []
            for _ in range(200):
                line = proc.stderr.readline()
                if not line:
                    break
                log.append(line)
                found = re.search(r"metrics on (http://\S+)", line)
                if found:
                    metrics_url = found.group(1)
                found = re.search(r"patchcache icap: listening on 127\.0\.0\.1:(\d+) ", line)
                if found:
                    port = int(found.group(1))
                    break
            assert port and metrics_url, "".join(log)
            stderr = proc.stderr
            drain = threading.Thread(target=lambda: log.extend(stderr), daemon=True)
            drain.start()
            yield IcapProcess(proc, port, metrics_url, log)
            proc.terminate()
            assert proc.wait(TIMEOUT + 5) == 0, "".join(log)
            drain.join(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)


def one_request(port: int) -> None:
    """One RESPMOD on a new connection: SO_REUSEPORT spreads connections over the workers."""
    head = (
        f"RESPMOD icap://127.0.0.1:{port}/respmod ICAP/1.0\r\nHost: 127.0.0.1\r\n"
        f"Allow: 204\r\nEncapsulated: req-hdr=0, res-hdr={len(REQ)}, "
        f"null-body={len(REQ) + len(RES)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(head.encode() + REQ + RES)
        assert status_of(read_reply(sock)) == 204


def scraped(url: str) -> float:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    found = re.search(re.escape(SERIES) + r" (\S+)", text)
    assert found, text
    return float(found.group(1))


def worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == parent and stat[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def test_counts_add_up_over_workers_and_survive_a_worker_restart(
    icap_workers: IcapProcess,
) -> None:
    for _ in range(60):
        one_request(icap_workers.port)
    assert scraped(icap_workers.metrics_url) == 60
    workers = worker_pids(icap_workers.proc.pid)
    assert len(workers) == 2, workers
    # 60 connections hashed over 2 workers: each served some (all on one: odds 2**-59), so
    # the 60 is a sum of two rows. Now one dies; its successor continues from its row.
    os.kill(workers[0], signal.SIGKILL)
    wait_until(
        lambda: worker_pids(icap_workers.proc.pid),
        lambda now: len(now) == 2 and workers[0] not in now,
        timeout=30,
        interval=0.1,
        awaiting=f"the killed worker {workers[0]} to be replaced",
    )
    time.sleep(0.5)  # the new worker binds its socket
    for _ in range(40):
        one_request(icap_workers.port)
    assert scraped(icap_workers.metrics_url) == 100


@pytest.mark.parametrize("service", ["icap", "prefetch"])
def test_a_busy_metrics_port_is_a_start_up_error(service: str, tmp_path: Path) -> None:
    patchcache = Path(sys.executable).with_name("patchcache")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        extra = ["--workers", "2"] if service == "icap" else ["--proxy", "http://127.0.0.1:9"]
        done = subprocess.run(
            [
                str(patchcache),
                service,
                *extra,
                "--state-dir",
                str(tmp_path / "state"),
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"--metrics-listen 127.0.0.1:{port}" in done.stderr
