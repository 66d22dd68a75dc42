"""The few pieces of protobuf's wire format that the services write by hand.

Where a large message is only bytes passed on (a peer's envelope to consensus, a vertex
into its stored record), building its encoding by concatenation copies each part once;
a message object copies them in, and serializing copies them out again, into buffers
that grow by doubling (a voted batch persisted: 11 ms and 2,200 page faults against
0.8 ms and none, docs/benchmarks.md, "A slow hour, and a peer's message passed on as
bytes").

Two facts of the format make this safe to combine with a peer's bytes: a length-delimited
field is its tag, its length as a varint and its bytes; and a parser that meets a
singular field twice keeps the last value (maps and repeated fields accumulate), so a
valid encoding followed by fields of its own is the encoding of that message with those
fields replaced.
"""

from __future__ import annotations

#: Wire type of length-delimited fields (bytes, strings, messages).
LENGTH_DELIMITED = 2
#: The most bytes a 64-bit varint takes.
MAX_VARINT_BYTES = 10


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a base-128 varint."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"a varint holds 0 to 2**64 - 1, not {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it; ValueError when it is
    truncated or longer than :data:`MAX_VARINT_BYTES`."""
    result = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return result, pos + i + 1
    raise ValueError("varint longer than 10 bytes")


def tag(field: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    """The key of field number ``field`` with ``wire_type``."""
    return varint(field << 3 | wire_type)


def length_delimited(field: int, data: bytes) -> bytes:
    """Field ``field`` holding ``data`` (bytes, a UTF-8 string or an encoded message)."""
    return tag(field) + varint(len(data)) + data


def sole_field(data: bytes, field: int) -> bool:
    """Whether ``data`` is exactly one length-delimited field ``field``, encoded as
    protobuf encodes it: its key, its length as a minimal varint and that many bytes,
    nothing else. (A padded varint is refused: upb refuses some that this module's
    reader would take, such as a length in ten bytes, and bytes this says yes to are
    passed on unparsed.)"""
    key = tag(field)
    if not data.startswith(key):
        return False
    try:
        length, start = read_varint(data, len(key))
    except ValueError:
        return False
    return start + length == len(data) and start - len(key) == len(varint(length))


def as_is(encoded: bytes) -> bytes:
    """A gRPC serializer for requests already encoded (by this module's pieces)."""
    return encoded
