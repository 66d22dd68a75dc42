"""The EnvelopeBatch a transport hands consensus, built by concatenation from its peers'
bytes: it must parse to what building the message gave, with this transport's ``to`` and
``from`` whatever a peer put in its bytes."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from cretoai.protowire import length_delimited, varint
from cretoai.v1 import transport_pb2
from services.transport.node import (
    Delivery,
    envelope_batch_bytes,
    is_payload_only,
    payload_field,
)

ME = "a" * 64
PEER = "b" * 64


def delivery(body: bytes, trace_context: dict[str, str] | None = None) -> Delivery:
    return Delivery(body, ME, PEER, trace_context, len(body))


def built(deliveries: list[Delivery]) -> transport_pb2.EnvelopeBatch:
    """The batch as the transport built it as a message (Delivery.write_to)."""
    batch = transport_pb2.EnvelopeBatch()
    for d in deliveries:
        d.write_to(batch.envelopes.add())
    return batch


def test_untraced_payloads_and_peer_set_fields_come_out_as_the_built_batch() -> None:
    payload = bytes(range(256)) * 40
    bodies = [
        payload_field(payload),  # what an honest transport sends
        payload_field(b""),  # an empty payload field, written anyway
        b"",  # an empty envelope
        # a peer naming another sender and receiver, before and after its payload
        length_delimited(2, b"c" * 64) + payload_field(b"p") + length_delimited(1, b"d" * 64),
        # and a field this version does not know
        payload_field(b"q") + length_delimited(9, b"unknown"),
    ]
    deliveries = [delivery(body) for body in bodies]
    batch = transport_pb2.EnvelopeBatch.FromString(envelope_batch_bytes(deliveries))
    assert batch == built(deliveries)
    assert [e.to for e in batch.envelopes] == [ME] * len(bodies)
    assert [getattr(e, "from") for e in batch.envelopes] == [PEER] * len(bodies)
    assert batch.envelopes[0].payload == payload


def test_a_traced_delivery_carries_this_transports_context_not_the_peers() -> None:
    peer_context = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "x=1"}
    body = transport_pb2.Envelope(payload=b"p", trace_context=peer_context).SerializeToString()
    mine = {"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"}
    d = delivery(body, mine)
    batch = transport_pb2.EnvelopeBatch.FromString(envelope_batch_bytes([d]))
    assert batch == built([d])
    assert dict(batch.envelopes[0].trace_context) == mine


def test_no_peer_bytes_that_parse_can_change_the_ids_it_is_delivered_with() -> None:
    """Mutations of a peer's envelope (bytes flipped, cut, repeated): whenever the
    result parses as an Envelope without a trace context (what the transport delivers
    as the peer's bytes), the batch says this transport's ``to`` and ``from`` and the
    payload the peer's bytes hold."""
    rng = random.Random(1207)
    seed = (
        length_delimited(1, b"c" * 64)
        + length_delimited(2, b"d" * 64)
        + payload_field(b"payload" * 8)
        + varint(5 << 3) + varint(300)  # an unknown varint field
    )  # fmt: skip
    tried = delivered = 0
    while delivered < 300 and tried < 20_000:
        tried += 1
        body = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(body))
            kind = rng.random()
            if kind < 0.5:
                body[i] = rng.randrange(256)
            elif kind < 0.75:
                del body[i:]
                if not body:
                    break
            else:
                body += body[i : i + rng.randint(1, 20)]
        peer = bytes(body)
        try:
            parsed = transport_pb2.Envelope.FromString(peer)
        except DecodeError:
            continue  # the transport drops it as malformed
        if parsed.trace_context:
            continue  # rebuilt, not passed on
        delivered += 1
        out = transport_pb2.EnvelopeBatch.FromString(envelope_batch_bytes([delivery(peer)]))
        (envelope,) = out.envelopes
        assert (envelope.to, getattr(envelope, "from")) == (ME, PEER)
        assert envelope.payload == parsed.payload
    assert delivered >= 300


@pytest.mark.parametrize(
    ("body", "alone"),
    [
        (payload_field(b"x" * 70_000), True),
        (payload_field(b""), True),
        (b"", False),
        (payload_field(b"x") + payload_field(b"y"), False),
        (payload_field(b"x" * 300)[:-1], False),
        (transport_pb2.Envelope(payload=b"x", trace_context={"k": "v"}).SerializeToString(), False),
        (length_delimited(1, b"to"), False),
    ],
)
def test_only_a_lone_payload_field_skips_the_parse(body: bytes, alone: bool) -> None:
    assert is_payload_only(body) is alone


def test_whatever_passes_unparsed_is_an_envelope_protobuf_parses() -> None:
    """A peer's bytes taken as a lone payload field go to consensus unparsed: one that
    protobuf refused would spoil the whole batch, every peer's messages in it. Lengths
    written in every width a varint allows (padded ones included), and cut or extended."""
    rng = random.Random(7)
    accepted = 0
    for _ in range(3000):
        payload = rng.randbytes(rng.choice((0, 1, 5, 127, 128, 300, 2_000)))
        length = bytearray(varint(len(payload)))
        for _ in range(rng.choice((0, 0, 1, 3, 9))):  # pad: continuation bytes of zero
            length[-1] |= 0x80
            length.append(0x00)
        body = b"\x1a" + bytes(length) + payload
        cut = rng.choice((0, 0, 1, -1))
        body = body[: len(body) - 1] if cut == 1 else body + b"\x00" if cut == -1 else body
        if is_payload_only(body):
            accepted += 1
            out = transport_pb2.EnvelopeBatch.FromString(envelope_batch_bytes([delivery(body)]))
            assert out.envelopes[0].payload == transport_pb2.Envelope.FromString(body).payload
    assert accepted > 500
