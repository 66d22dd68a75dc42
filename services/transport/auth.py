"""Peer authentication and signed address records: pure functions, no I/O.

After the QUIC/TLS handshake each side proves that it holds the ML-DSA-87 key
of a cluster member by signing a transcript bound to *this* connection:

    transcript = SHA3-256( "cretoai.v1.transport.auth" 0x00
                           || role                       ("client" | "server")
                           || lp(channel_binding)        (TLS master secret + transcript derived)
                           || lp(client HELLO body)      (version, node id, nonce, boot id)
                           || lp(server HELLO body) )

signed with the FIPS 204 context string ``cretoai.v1.transport.auth``.
``lp`` is a 4-byte big-endian length prefix. The channel binding is different
for every TLS session, so a man in the middle (clients do not check the
throwaway TLS certificate) cannot relay one side's signature into its own
session with the other side; both nonces make every transcript fresh even if a
binding ever repeated; the role stops a signature from being reflected back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct

AUTH_CONTEXT = b"cretoai.v1.transport.auth"
ADDRESS_CONTEXT = b"cretoai.v1.transport.addr"
PROTOCOL_VERSION = 1
NONCE_SIZE = 32
BOOT_ID_SIZE = 16
CLIENT = b"client"
SERVER = b"server"
#: A signed address record may claim to be issued at most this far in the future.
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
MAX_ADDRESS_LENGTH = 300


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def auth_transcript(
    *, role: bytes, binding: bytes, client_hello: bytes, server_hello: bytes
) -> bytes:
    if role not in (CLIENT, SERVER):
        raise ValueError(f"role must be {CLIENT!r} or {SERVER!r}")
    h = hashlib.sha3_256()
    h.update(AUTH_CONTEXT + b"\x00")
    h.update(role)
    h.update(_lp(binding))
    h.update(_lp(client_hello))
    h.update(_lp(server_hello))
    return h.digest()


def address_record_message(*, node_id: str, address: str, issued_unix_ms: int) -> bytes:
    """What a member signs to state where it can be reached."""
    return (
        ADDRESS_CONTEXT
        + b"\x00"
        + _lp(node_id.encode())
        + _lp(address.encode())
        + struct.pack(">Q", issued_unix_ms)
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def parse_host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` → (host, port); None when malformed."""
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        return None
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host, port
    if ":" in host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # a DNS name: letters, digits, dots and hyphens only
        if not all(c.isalnum() or c in ".-" for c in host):
            return None
    return host, port


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
