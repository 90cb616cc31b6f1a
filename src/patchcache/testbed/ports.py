"""Free loopback TCP ports for throwaway servers.

The kernel hands out a free port when a socket binds to port 0; the socket is closed again and
the number given to a program that binds it itself (Squid). Another process may take the port
in between, so callers that cannot bind port 0 themselves retry on "address in use".
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"

# 3128 is Squid's well-known port: a system Squid may own it, and a testbed instance that
# grabbed it would be mistaken for (or collide with) that one.
RESERVED_PORTS = frozenset({3128, 3129, 8080})

_MAX_TRIES = 50


def free_port(host: str = LOOPBACK, *, avoid: frozenset[int] = RESERVED_PORTS) -> int:
    """Return a TCP port on ``host`` that was free a moment ago and is not in ``avoid``."""
    for _ in range(_MAX_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError(f"no free TCP port on {host} after {_MAX_TRIES} tries")


def port_accepts(port: int, host: str = LOOPBACK, *, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_listening(port: int, host: str = LOOPBACK) -> bool | None:
    """Whether a socket listens on ``host:port`` per /proc/net/tcp, without connecting
    (a probe connection shows up in a server's logs); None if /proc/net/tcp is unreadable."""
    try:
        with open("/proc/net/tcp") as proc_table:
            table = proc_table.read()
    except OSError:
        return None
    octets = [int(part) for part in host.split(".")]
    local_ip = "".join(f"{octet:02X}" for octet in reversed(octets))
    wanted = {f"{local_ip}:{port:04X}", f"00000000:{port:04X}"}
    for line in table.splitlines()[1:]:
        fields = line.split()
        # fields: sl local_address rem_address st ...; st 0A is LISTEN.
        if len(fields) > 3 and fields[1] in wanted and fields[3] == "0A":
            return True
    return False
