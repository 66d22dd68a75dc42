"""A minimal STUN Binding client (RFC 8489), sans I/O: build requests, parse responses.

The transport sends Binding requests from its QUIC socket (so the answer is the
public mapping of that very socket, which is what peers must dial) and the
endpoint hands back datagrams that look like STUN (RFC 9443 demultiplexing:
the first two bits are 0 and the magic cookie follows). Only what the client
needs is implemented: Binding request with FINGERPRINT; success responses with
XOR-MAPPED-ADDRESS (or the legacy MAPPED-ADDRESS); error responses. A response
that does not parse is a :class:`StunError` value, never an exception.
"""

from __future__ import annotations

import binascii
import ipaddress
import os
import struct
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct(">HHI12s")
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
SOFTWARE = b"cretoai-transport"
TRANSACTION_ID_SIZE = 12


@dataclass(frozen=True, slots=True)
class StunAddress:
    transaction_id: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class StunError:
    transaction_id: bytes
    reason: str


def new_transaction_id() -> bytes:
    return os.urandom(TRANSACTION_ID_SIZE)


def looks_like_stun(data: bytes) -> bool:
    return (
        len(data) >= HEADER.size
        and data[0] & 0xC0 == 0
        and int.from_bytes(data[4:8], "big") == MAGIC_COOKIE
        and int.from_bytes(data[2:4], "big") + HEADER.size == len(data)
    )


def _attribute(kind: int, value: bytes) -> bytes:
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack(">HH", kind, len(value)) + value + padding


def _fingerprint(message_without: bytes) -> int:
    return (binascii.crc32(message_without) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def encode_message(msg_type: int, transaction_id: bytes, attributes: bytes) -> bytes:
    """A STUN message with ``attributes`` and a FINGERPRINT attribute appended."""
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise ValueError("a STUN transaction id is 12 bytes")
    length = len(attributes) + 8  # + FINGERPRINT
    head = HEADER.pack(msg_type, length, MAGIC_COOKIE, transaction_id) + attributes
    return head + _attribute(ATTR_FINGERPRINT, struct.pack(">I", _fingerprint(head)))


def binding_request(transaction_id: bytes) -> bytes:
    return encode_message(BINDING_REQUEST, transaction_id, _attribute(ATTR_SOFTWARE, SOFTWARE))


def xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """The value of an XOR-MAPPED-ADDRESS attribute (used by tests' responders too)."""
    ip = ipaddress.ip_address(host)
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xaddr = int(ip) ^ MAGIC_COOKIE
        return struct.pack(">BBHI", 0, 1, xport, xaddr)
    key = int.from_bytes(MAGIC_COOKIE.to_bytes(4, "big") + transaction_id, "big")
    return struct.pack(">BBH", 0, 2, xport) + (int(ip) ^ key).to_bytes(16, "big")


def _parse_address(value: bytes, *, xor: bool, transaction_id: bytes) -> tuple[str, int] | None:
    if len(value) < 4:
        return None
    family = value[1]
    port = int.from_bytes(value[2:4], "big")
    raw = value[4:]
    if family == 1 and len(raw) == 4:
        addr = int.from_bytes(raw, "big")
        if xor:
            port ^= MAGIC_COOKIE >> 16
            addr ^= MAGIC_COOKIE
        return str(ipaddress.IPv4Address(addr)), port
    if family == 2 and len(raw) == 16:
        addr = int.from_bytes(raw, "big")
        if xor:
            port ^= MAGIC_COOKIE >> 16
            addr ^= int.from_bytes(MAGIC_COOKIE.to_bytes(4, "big") + transaction_id, "big")
        return str(ipaddress.IPv6Address(addr)), port
    return None


def parse_response(data: bytes) -> StunAddress | StunError:
    """Parse a Binding response; the caller matches the transaction id to its request."""
    if not looks_like_stun(data):
        return StunError(transaction_id=b"", reason="not a STUN message")
    msg_type, length, _, transaction_id = HEADER.unpack_from(data)
    if msg_type not in (BINDING_SUCCESS, BINDING_ERROR):
        return StunError(transaction_id=transaction_id, reason=f"unexpected type {msg_type:#06x}")
    if length % 4:
        return StunError(transaction_id=transaction_id, reason="length not a multiple of 4")
    pos = HEADER.size
    mapped: tuple[str, int] | None = None
    xor_mapped: tuple[str, int] | None = None
    error: str | None = None
    while pos + 4 <= len(data):
        kind, size = struct.unpack_from(">HH", data, pos)
        start = pos + 4
        stop = start + size
        if stop > len(data):
            return StunError(transaction_id=transaction_id, reason="truncated attribute")
        value = data[start:stop]
        if kind == ATTR_FINGERPRINT:
            if size != 4 or stop != len(data):
                return StunError(transaction_id=transaction_id, reason="misplaced FINGERPRINT")
            if int.from_bytes(value, "big") != _fingerprint(data[:pos]):
                return StunError(transaction_id=transaction_id, reason="bad FINGERPRINT")
        elif kind == ATTR_XOR_MAPPED_ADDRESS:
            xor_mapped = _parse_address(value, xor=True, transaction_id=transaction_id)
        elif kind == ATTR_MAPPED_ADDRESS:
            mapped = _parse_address(value, xor=False, transaction_id=transaction_id)
        elif kind == ATTR_ERROR_CODE and size >= 4:
            code = (value[2] & 0x07) * 100 + value[3]
            error = f"error {code}: {value[4:].decode('utf-8', 'replace')}"
        pos = stop + (-size % 4)
    if msg_type == BINDING_ERROR:
        return StunError(transaction_id=transaction_id, reason=error or "error response")
    found = xor_mapped or mapped
    if found is None:
        return StunError(transaction_id=transaction_id, reason="no mapped address")
    return StunAddress(transaction_id=transaction_id, host=found[0], port=found[1])
