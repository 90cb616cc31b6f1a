"""Prometheus metrics of the services (`--metrics-listen HOST:PORT` serves `/metrics`).

- `patchcache.metrics.icap`: ICAP request/decision/error counters shared by the workers;
- `patchcache.metrics.prefetch`: the prefetcher's jobs, bytes, fill durations;
- `patchcache.metrics.state`: what the shared state holds (read on scrape, cached briefly).

Every series is named ``patchcache_...`` with Prometheus's unit suffixes (``_total``,
``_bytes``, ``_seconds``); labels are bounded: rules class names, ICAP methods, fixed outcome
names, never a URL or key. See README.md ("Metrics") for the table.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

__all__ = ["Listen", "MetricsServer", "check_bindable", "parse_listen", "serve_metrics"]


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        """As written on the command line: ``HOST:PORT``, ``[v6]:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); raises ValueError naming the expected form."""
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: use HOST:PORT, e.g. 127.0.0.1:9464")
    return Listen(host, int(port_text))


def check_bindable(listen: Listen) -> None:
    """Raise OSError now if ``listen`` cannot be bound (in use, no such address): for a clear
    start-up error before a service forks its workers."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((listen.host, listen.port))


@dataclass(slots=True)
class MetricsServer:
    """A running `/metrics` endpoint (a daemon thread of prometheus_client)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


def serve_metrics(listen: Listen, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` on ``http://HOST:PORT/metrics`` (any path answers, as prometheus_client
    does) from a daemon thread; port 0 picks a free port (see `MetricsServer.port`)."""
    server, thread = start_http_server(listen.port, listen.host, registry=registry)
    return MetricsServer(server, thread)
