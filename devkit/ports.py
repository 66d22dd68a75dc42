"""Free loopback ports for services under test and benchmark."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from node.clusterinit import ports_free


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; else IANA's)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_base_port(count: int = 20 * 8) -> int:
    """A base port whose next ``count`` TCP+UDP loopback ports are free right now
    (``cluster init --base-port``: a cluster takes about 20 ports per node).

    The range lies below the kernel's ephemeral ports: a port handed to an outgoing
    connection (a gRPC client, a QUIC socket, a scraper) between this check and the
    service's bind would otherwise make the service fail to start."""
    low, high = ephemeral_range()
    ranges = [(r0, r1) for r0, r1 in ((10000, low), (high + 1, 65536)) if r1 - r0 > count]
    # seeded from the OS each call: two calls in one process must not repeat a choice
    # (a seed of the pid and one random byte did, one time in 256)
    rng = random.SystemRandom()
    for _ in range(200):
        start, end = rng.choice(ranges)
        base = rng.randrange(start, end - count, 20)
        if not ports_free("127.0.0.1", list(range(base, base + count))):
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
