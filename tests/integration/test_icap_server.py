"""The asyncio ICAP server over real loopback sockets, driven by independent ICAP clients:
``c-icap-client`` (Debian c-icap), the ``python-icap`` PyPI client, raw sockets, and Squid."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from icap import IcapClient
from support.fixtures import SquidFactory
from support.icap_wire import (
    REQ,
    RES,
    TIMEOUT,
    ServerFactory,
    assert_closed,
    connect,
    options,
    read_reply,
    respmod,
    status_of,
)

from patchcache.icap_service.decision import (
    AddRequestHeaders,
    AddResponseHeaders,
    ReqmodDecision,
    RespmodDecision,
)
from patchcache.icap_service.service_interface import IcapRequest, NullService
from patchcache.testbed import Origin, http_request

C_ICAP_CLIENT = shutil.which("c-icap-client") or "/usr/bin/c-icap-client"


class HeaderService(NullService):
    """Adds a marker header: RESPMOD to the response, REQMOD to the request."""

    def respmod(self, request: IcapRequest) -> RespmodDecision:
        return AddResponseHeaders((("X-Patchcache", "test"),))

    def reqmod(self, request: IcapRequest) -> ReqmodDecision:
        return AddRequestHeaders((("X-Req", "1"),))


class RecordingService:
    """Wraps a service and records what each RESPMOD looked like."""

    def __init__(self, inner: NullService) -> None:
        self.inner = inner
        self.seen: list[IcapRequest] = []
        self.istag = inner.istag
        self.service_paths = inner.service_paths

    def reqmod(self, request: IcapRequest) -> ReqmodDecision:
        self.seen.append(request)
        return self.inner.reqmod(request)

    def respmod(self, request: IcapRequest) -> RespmodDecision:
        self.seen.append(request)
        return self.inner.respmod(request)


class FailingService(NullService):
    def respmod(self, request: IcapRequest) -> RespmodDecision:
        raise KeyError("a bug in the service")


# ------------------------------------------------------------------------------------------------
# c-icap-client (an independent C implementation of the client side)
# ------------------------------------------------------------------------------------------------


def c_icap_client(port: int, *args: str) -> str:
    proc = subprocess.run(
        [C_ICAP_CLIENT, "-i", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_c_icap_client_options(icap_server: ServerFactory) -> None:
    server = icap_server()
    out = c_icap_client(server.port, "-s", "respmod")
    assert "Allow 204: Yes" in out and "Allow 206: Yes" in out and "Preview: 0" in out
    assert 'ISTag: "patchcache-null"' in out
    assert "Methods: RESPMOD" in out and "Transfer-Preview: *" in out


def test_c_icap_client_respmod_and_reqmod_get_204(
    icap_server: ServerFactory, tmp_path: Path
) -> None:
    server = icap_server()
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(200_000))
    out = c_icap_client(server.port, "-s", "respmod", "-f", str(body), "-v")
    assert "ICAP/1.0 204 No Content" in out
    out = c_icap_client(server.port, "-s", "respmod", "-f", str(body), "-nopreview", "-v")
    assert "ICAP/1.0 204 No Content" in out
    out = c_icap_client(server.port, "-s", "reqmod", "-req", "http://wu.example/x", "-v")
    assert "ICAP/1.0 204 No Content" in out
    # Preview: 0 then 204: the 200 kB body never reached the server.
    assert server.running.stats.bytes_received < 200_000 + 20_000


def test_c_icap_client_206_keeps_the_original_body(
    icap_server: ServerFactory, tmp_path: Path
) -> None:
    server = icap_server(HeaderService())
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(300_000))
    out_file = tmp_path / "out.bin"
    out = c_icap_client(
        server.port, "-s", "respmod", "-f", str(body), "-206", "-o", str(out_file), "-v"
    )
    assert "ICAP/1.0 206 Partial Content" in out
    assert out_file.read_bytes() == body.read_bytes()
    assert server.running.stats.bytes_received < 10_000


def test_c_icap_client_without_206_gets_the_body_echoed(
    icap_server: ServerFactory, tmp_path: Path
) -> None:
    server = icap_server(HeaderService())
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(2_000_000))
    out_file = tmp_path / "out.bin"
    out = c_icap_client(server.port, "-s", "respmod", "-f", str(body), "-o", str(out_file), "-v")
    assert "ICAP/1.0 200 OK" in out and "X-Patchcache: test" in out
    assert out_file.read_bytes() == body.read_bytes()


def test_c_icap_client_without_204_gets_the_body_echoed(
    icap_server: ServerFactory, tmp_path: Path
) -> None:
    server = icap_server()
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(500_000))
    out_file = tmp_path / "out.bin"
    args = ["-s", "respmod", "-f", str(body), "-nopreview", "-no204", "-o", str(out_file), "-v"]
    out = c_icap_client(server.port, *args)
    assert "ICAP/1.0 200 OK" in out
    assert out_file.read_bytes() == body.read_bytes()


def test_c_icap_client_reqmod_body_echoed_with_new_head(
    icap_server: ServerFactory, tmp_path: Path
) -> None:
    server = icap_server(HeaderService())
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(100_000))
    out_file = tmp_path / "out.bin"
    args = ["-s", "reqmod", "-req", "http://wu.example/x", "-f", str(body), "-o", str(out_file)]
    out = c_icap_client(server.port, *args, "-v")
    assert "ICAP/1.0 200 OK" in out and "X-Req: 1" in out
    assert out_file.read_bytes() == body.read_bytes()


def test_c_icap_client_reqmod_modified_head(icap_server: ServerFactory) -> None:
    server = icap_server(HeaderService())
    out = c_icap_client(server.port, "-s", "reqmod", "-req", "http://wu.example/x", "-v")
    assert "ICAP/1.0 200 OK" in out
    assert "X-Req: 1" in out


# ------------------------------------------------------------------------------------------------
# python-icap (PyPI), one persistent connection
# ------------------------------------------------------------------------------------------------


def test_python_icap_client_many_requests_on_one_connection(icap_server: ServerFactory) -> None:
    server = icap_server()
    res = RES.replace(b"1000000", b"11") + b"hello world"
    with IcapClient("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        reply = client.options("respmod")
        assert reply.status_code == 200
        assert reply.headers["Preview"] == "0" and reply.headers["Allow"] == "204, 206"
        for _ in range(5):
            assert client.respmod("respmod", REQ, res).status_code == 204
            assert client.respmod("respmod", REQ, res, preview=4).status_code == 204
            assert client.reqmod("reqmod", REQ).status_code == 204
            assert client.reqmod("reqmod", REQ, b"posted body").status_code == 204
    assert server.running.stats.connections == 1
    assert server.running.stats.requests == 21


# ------------------------------------------------------------------------------------------------
# Raw sockets: exact replies, errors, limits, shutdown
# ------------------------------------------------------------------------------------------------


def test_persistent_connection_and_preview0_never_needs_the_body(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(HeaderService())
    with connect(server.port) as sock:
        buf = bytearray()
        # The HTTP response announces 1 MB, but after "Preview: 0" only the last chunk comes.
        sock.sendall(respmod(server.port, "Allow: 204\r\nPreview: 0\r\n"))
        reply = read_reply(sock, buf)
        assert status_of(reply) == 100  # no Allow: 206 -> we must see (and echo) the body
        sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        reply = read_reply(sock, buf)
        assert status_of(reply) == 200
        assert reply.endswith(b"X-Patchcache: test\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        for _ in range(3):
            sock.sendall(respmod(server.port, "Allow: 204, 206\r\nPreview: 0\r\n"))
            reply = read_reply(sock, buf)
            new_res = RES[:-2] + b"X-Patchcache: test\r\n\r\n"
            assert reply == (
                b'ICAP/1.0 206 Partial Content\r\nISTag: "patchcache-null"\r\n'
                + f"Encapsulated: res-hdr=0, res-body={len(new_res)}\r\n\r\n".encode()
                + new_res
                + b"0; use-original-body=0\r\n\r\n"
            )
        sock.sendall(options(server.port))
        assert status_of(read_reply(sock, buf)) == 200
    assert server.running.stats.connections == 1


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"OPTIONS icap://127.0.0.1/respmod ICAP/9.9\r\n\r\n", 505),
        (b"LOG icap://127.0.0.1/respmod ICAP/1.0\r\n\r\n", 501),
        (b"RESPMOD icap://127.0.0.1/respmod ICAP/1.0\r\nEncapsulated: res-hdr=9, x=1\r\n\r\n", 400),
        (b"\x00\xff" * 40 + b"\r\n\r\n", 400),
    ],
    ids=["garbage", "version", "method", "encapsulated", "binary"],
)
def test_malformed_bytes_get_an_error_and_the_server_keeps_serving(
    icap_server: ServerFactory, data: bytes, status: int
) -> None:
    server = icap_server()
    with connect(server.port) as sock:
        sock.sendall(data)
        reply = read_reply(sock)
        assert status_of(reply) == status
        assert b"Connection: close\r\n" in reply
        assert_closed(sock)
    with connect(server.port) as sock:
        sock.sendall(options(server.port))
        assert status_of(read_reply(sock)) == 200


def test_oversized_head_gets_400(icap_server: ServerFactory) -> None:
    server = icap_server(max_head_size=4096)
    with connect(server.port) as sock:
        sock.sendall(b"OPTIONS icap://127.0.0.1/respmod ICAP/1.0\r\nX-Pad: " + b"a" * 8000)
        assert status_of(read_reply(sock)) == 400
        assert_closed(sock)


def test_resynchronisable_errors_keep_the_connection(icap_server: ServerFactory) -> None:
    server = icap_server(FailingService())
    with connect(server.port) as sock:
        buf = bytearray()
        sock.sendall(options(server.port, "nosuch"))
        assert status_of(read_reply(sock, buf)) == 404
        # A body without preview: the error comes at once and the body is skipped.
        sock.sendall(respmod(server.port, "Allow: 204\r\n", b"3\r\nabc\r\n0\r\n\r\n", "nosuch"))
        assert status_of(read_reply(sock, buf)) == 404
        sock.sendall(respmod(server.port, "Preview: 0\r\n", path="reqmod"))
        assert status_of(read_reply(sock, buf)) == 405
        sock.sendall(respmod(server.port, "Preview: 0\r\n"))
        assert status_of(read_reply(sock, buf)) == 500
        sock.sendall(options(server.port))
        assert status_of(read_reply(sock, buf)) == 200


def test_max_connections_refuses_with_503_when_every_slot_is_in_a_request(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(max_connections=2)
    first, second = connect(server.port), connect(server.port)
    try:
        for sock in (first, second):  # both accepted, each inside a request (half a body)
            sock.sendall(respmod(server.port, "Allow: 204\r\n", b"3\r\nabc\r\n"))
        server.wait_for_requests(2)
        with connect(server.port) as third:
            assert status_of(read_reply(third)) == 503
            assert_closed(third)
        for sock in (first, second):  # untouched: they finish their requests
            sock.sendall(b"0\r\n\r\n")
            assert status_of(read_reply(sock)) == 204
    finally:
        first.close()
        second.close()
    assert server.running.stats.refused == 1


def test_at_max_connections_the_longest_idle_connection_makes_room(
    icap_server: ServerFactory,
) -> None:
    server = icap_server(max_connections=2)
    first, second = connect(server.port), connect(server.port)
    try:
        for sock in (first, second):  # both served, then idle between requests
            sock.sendall(options(server.port))
            assert status_of(read_reply(sock)) == 200
        with connect(server.port) as third:
            third.sendall(options(server.port))
            assert status_of(read_reply(third)) == 200
        assert_closed(first)  # idle longest: closed for the newcomer
        second.sendall(options(server.port))
        assert status_of(read_reply(second)) == 200
    finally:
        first.close()
        second.close()
    assert server.running.stats.refused == 0
    assert server.running.stats.evicted == 1


def test_idle_connections_are_closed(icap_server: ServerFactory) -> None:
    server = icap_server(idle_timeout=0.3)
    with connect(server.port) as sock:
        sock.sendall(options(server.port))
        assert status_of(read_reply(sock)) == 200
        assert_closed(sock)  # recv blocks (TIMEOUT at most) until the server closes


def test_graceful_shutdown_finishes_in_flight_requests(icap_server: ServerFactory) -> None:
    server = icap_server()
    idle, busy = connect(server.port), connect(server.port)
    try:
        idle.sendall(options(server.port))
        assert status_of(read_reply(idle)) == 200
        # In flight: a body without preview, only half sent; 204 comes at its end.
        busy.sendall(respmod(server.port, "Allow: 204\r\n", b"3\r\nabc\r\n"))
        server.wait_for_requests(2)
        closing = asyncio.run_coroutine_threadsafe(server.running.close(), server.loop)
        assert_closed(idle)  # idle connections are closed at once
        with pytest.raises(OSError):
            connect(server.port).recv(1)  # no longer accepting
        assert not closing.done()
        busy.sendall(b"0\r\n\r\n")
        reply = read_reply(busy)
        assert status_of(reply) == 204
        assert b"Connection: close\r\n" in reply
        assert_closed(busy)
        closing.result(TIMEOUT)
    finally:
        idle.close()
        busy.close()


WORKER_SCRIPT = """
import os, sys
from patchcache.icap_service.server import run_server
from patchcache.icap_service.service_interface import NullService

class PidService(NullService):
    @property
    def istag(self):
        return f"pid{os.getpid()}"

run_server(PidService(), "127.0.0.1", 0, workers=2, ready=lambda port: print(port, flush=True))
"""


def test_worker_processes_share_one_port_and_stop_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            istags = set()
            for _ in range(40):
                with connect(port) as sock:
                    sock.sendall(options(port))
                    reply = read_reply(sock)
                    assert status_of(reply) == 200
                    found = re.search(rb'ISTag: "(pid\d+)"', reply)
                    assert found is not None
                    istags.add(found.group(1))
            assert len(istags) == 2  # both workers answered (40 connections: 2**-39 to fail)
            assert proc.pid not in {int(tag[3:]) for tag in istags}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT + 5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)


# ------------------------------------------------------------------------------------------------
# Squid 5.7 as the ICAP client
# ------------------------------------------------------------------------------------------------


@pytest.mark.squid
@pytest.mark.parametrize("service", [NullService(), HeaderService()], ids=["204", "206"])
def test_squid_respmod_with_preview0(
    icap_server: ServerFactory, squid_factory: SquidFactory, origin: Origin, service: NullService
) -> None:
    recorder = RecordingService(service)
    server = icap_server(recorder)
    squid = squid_factory(
        "icap_enable on\n"
        "icap_preview_enable on\n"
        f"icap_service pc_resp respmod_precache icap://127.0.0.1:{server.port}/respmod bypass=off\n"
        "adaptation_access pc_resp allow all\n",
        origin_peer_port=origin.port,
    )
    obj = origin.register("/d/msdownload/update/software/big.cab", 4 * 1024 * 1024)
    url = origin.url(obj, host="download.windowsupdate.com", with_port=False)
    for _ in range(2):
        reply = http_request(squid.proxy_url, url, timeout=30)
        assert reply.status == 200
        assert reply.body == obj.content.read(0, obj.size)
        marker = [v for k, v in reply.headers if k.lower() == "x-patchcache"]
        assert marker == (["test"] if isinstance(service, HeaderService) else [])
    # Squid followed our OPTIONS: heads only (Preview: 0), 204/206 allowed...
    assert recorder.seen, "Squid sent no RESPMOD"
    for request in recorder.seen:
        assert request.method == "RESPMOD" and request.preview == 0
        assert request.allow_206 and request.http_response is not None
        assert request.http_response.headers.get("Content-Length") == str(obj.size)
    # ...so the 4 MiB bodies never crossed the ICAP connection.
    assert server.running.stats.bytes_received < 64 * 1024
