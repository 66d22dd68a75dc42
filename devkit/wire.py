"""Protobuf wire bytes written by hand, for tests and benchmarks that need messages as
bytes without building them (already-serialized fields, or shapes protobuf would refuse
to build)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a protobuf base-128 varint."""
    if value < 0:
        raise ValueError("a varint here is non-negative")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field: int, data: bytes) -> bytes:
    """Field ``field`` of wire type 2 (bytes, string or message) holding ``data``."""
    return varint(field << 3 | 2) + varint(len(data)) + data
