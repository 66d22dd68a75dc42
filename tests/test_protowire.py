"""cretoai.protowire: the hand-written pieces of protobuf's wire format, against protobuf."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from cretoai.protowire import length_delimited, read_varint, sole_field, varint
from cretoai.v1 import transport_pb2


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1])
def test_a_varint_reads_back_as_written(value: int) -> None:
    encoded = varint(value)
    assert read_varint(encoded + b"\x99", 0) == (value, len(encoded))
    assert read_varint(b"\x00" + encoded, 1) == (value, len(encoded) + 1)


def test_varints_out_of_range_truncated_or_overlong_are_refused() -> None:
    for value in (-1, 2**64):
        with pytest.raises(ValueError):
            varint(value)
    with pytest.raises(ValueError, match="truncated"):
        read_varint(b"\x80\x80")
    with pytest.raises(ValueError, match="longer"):
        read_varint(b"\x80" * 10 + b"\x01")


def test_length_delimited_fields_are_what_protobuf_writes() -> None:
    payload = bytes(range(256)) * 3
    assert (
        length_delimited(3, payload) == transport_pb2.Envelope(payload=payload).SerializeToString()
    )
    both = length_delimited(1, b"to") + length_delimited(2, b"from")
    parsed = transport_pb2.Envelope.FromString(both)
    assert (parsed.to, getattr(parsed, "from")) == ("to", "from")


def test_sole_field_is_one_whole_field_and_nothing_else() -> None:
    body = length_delimited(3, b"x" * 200)
    assert sole_field(body, 3)
    assert not sole_field(body, 1)  # another field
    assert not sole_field(body + b"\x0a\x00", 3)  # a field after it
    assert not sole_field(body[:-1], 3)  # its bytes cut short
    assert not sole_field(body[:1], 3)  # its length missing
    assert not sole_field(b"", 3)


def test_sole_field_refuses_a_padded_length_which_protobuf_may_refuse() -> None:
    padded = b"\x1a" + bytes([0x85] + [0x80] * 8 + [0x00]) + b"hello"  # 5 in ten bytes
    with pytest.raises(DecodeError):
        transport_pb2.Envelope.FromString(padded)
    assert not sole_field(padded, 3)
    assert not sole_field(b"\x1a\x85\x00hello", 3)  # 5 in two bytes: parses, still not
    assert sole_field(b"\x1a\x05hello", 3)
