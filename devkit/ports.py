"""Free loopback ports for services under test and benchmark."""

from __future__ import annotations

import os
import random
import socket

from node.clusterinit import ports_free


def free_base_port(count: int = 20 * 8) -> int:
    """A base port whose next ``count`` TCP+UDP loopback ports are free right now
    (``cluster init --base-port``: a cluster takes about 20 ports per node)."""
    rng = random.Random(os.getpid() ^ os.urandom(2)[0])
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count, 20)
        if not ports_free("127.0.0.1", list(range(base, base + count, 7))):
            return base
    raise RuntimeError("no free port range on loopback")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct UDP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
