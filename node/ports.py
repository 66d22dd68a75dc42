"""Before starting a node's processes: are the ports they will listen on free?

Without this check, a second cluster initialised with the same ports (another
``--dir``, default ports) started its 16 processes anyway: each storage failed to bind
and was restarted until given up, about 12 s later, while the supervisor's readiness
checks reached the *other* cluster's services and filled the console with their TLS
handshake failures (mTLS kept the two clusters apart). Now nothing starts, and one
message names the ports in use and how to move this cluster.

A port is tried by binding it (TCP with ``SO_REUSEADDR``, so that connections of a
cluster just stopped, in TIME_WAIT, do not count; UDP for QUIC) and closing it at once.
Addresses that are not IP literals (a service host name in containers) are not tried:
they are not this machine's to bind.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from cretoai.config import NodeConfig


@dataclass(frozen=True)
class Listener:
    """One address a node's service listens on."""

    node: str
    what: str
    address: str
    udp: bool = False

    def __str__(self) -> str:
        return f"{self.address} ({self.node} {self.what}, {'UDP' if self.udp else 'TCP'})"


def listeners(cfg: NodeConfig) -> list[Listener]:
    """Every address ``cfg``'s services bind (metrics ``""``: off, not listed)."""
    name = cfg.node.name
    found = [
        Listener(name, "gateway HTTP", cfg.gateway.http),
        Listener(name, "gateway gRPC", cfg.gateway.grpc),
        Listener(name, "consensus", cfg.consensus.listen),
        Listener(name, "transport", cfg.transport.listen),
        Listener(name, "storage", cfg.storage.listen),
        Listener(name, "QUIC", cfg.quic_listen, udp=True),
    ]
    for service in ("gateway", "consensus", "transport", "storage"):
        metrics = getattr(cfg, service).metrics
        if metrics:
            found.append(Listener(name, f"{service} metrics", metrics))
    return found


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        return None  # a host name: not this machine's to try
    return (host, number) if number else None


def in_use(listener: Listener) -> bool:
    """Whether binding ``listener``'s address fails because something holds it."""
    parsed = _host_port(listener.address)
    if parsed is None:
        return False
    host, port = parsed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if listener.udp else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        if not listener.udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def busy(configs: list[NodeConfig]) -> list[Listener]:
    """The listeners of ``configs`` whose address something else holds now."""
    return [listener for cfg in configs for listener in listeners(cfg) if in_use(listener)]


def busy_message(taken: list[Listener], *, move_hint: str, shown: int = 6) -> str:
    """One error for ports in use: which, the likely cause, and ``move_hint``."""
    lines = [f"{len(taken)} of the ports this would listen on are in use already:"]
    lines += [f"  {listener}" for listener in taken[:shown]]
    if len(taken) > shown:
        lines.append(f"  … and {len(taken) - shown} more")
    lines.append(
        "Another cluster or node (or another program) holds them; nothing was started. "
        f"Stop it, or {move_hint}."
    )
    return "\n".join(lines)
