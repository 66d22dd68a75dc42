"""A peer's trace context is untrusted: garbage or oversized is dropped, the message delivered."""

from __future__ import annotations

import asyncio

import pytest

from cretoai.v1 import transport_pb2
from devkit.transport import RunningTransport, all_connected
from services.transport.framing import FrameType, encode_frame
from tests.transport.conftest import Starter

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

HOSTILE = {
    "not a traceparent": {"traceparent": "zz"},
    "oversized traceparent": {"traceparent": "00-" + "a" * 100_000},
    "zero span id": {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
    "uppercase hex": {"traceparent": VALID.upper()},
    "unknown version": {"traceparent": "ff" + VALID[2:]},
    "too many keys": {"traceparent": VALID, **{f"k{i}": "x" for i in range(1000)}},
    "oversized extra": {"traceparent": VALID, "r0": "x" * 10_000},
    "oversized key": {"traceparent": VALID, "k" * 5000: "x"},
}


def hostile_sender(node: RunningTransport, carrier: dict[str, str]) -> None:
    """Make ``node`` put ``carrier`` on the wire as it is (a peer that does not play by
    the rules; an honest transport sanitizes what it sends)."""
    transport = node.node
    max_frame = transport.settings.max_frame_bytes

    def encode(envelope: transport_pb2.Envelope) -> tuple[bytes, bytes]:
        body = transport_pb2.Envelope(
            payload=envelope.payload, trace_context=carrier
        ).SerializeToString()
        return encode_frame(FrameType.MSG, body, max_frame_bytes=max_frame), body

    transport._encode_outbound = encode  # type: ignore[method-assign]


async def receive(call: object) -> transport_pb2.Envelope:
    return await asyncio.wait_for(call.read(), 10)  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_hostile_trace_context_is_dropped_and_the_message_delivered(
    transports: Starter, case: str
) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    inbound = b.stub.Exchange()
    try:
        hostile_sender(a, HOSTILE[case])
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"first"))
        got = await receive(inbound)
        assert got.payload == b"first" and getattr(got, "from") == a.node_id
        assert dict(got.trace_context) == {}
        # the link is unharmed: an honest context after it is continued
        hostile_sender(a, {"traceparent": VALID, "r0": VALID})
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"second"))
        got = await receive(inbound)
        assert got.payload == b"second"
        assert got.trace_context["r0"] == VALID  # consensus' per-request contexts pass
        assert got.trace_context["traceparent"].split("-")[1] == TRACE_ID
        assert got.trace_context["traceparent"] != VALID  # the receive span's own
    finally:
        inbound.cancel()


async def test_an_unsampled_context_is_not_continued(transports: Starter) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    inbound = b.stub.Exchange()
    outbound = a.stub.Exchange()
    try:
        await outbound.write(
            transport_pb2.Envelope(
                to=b.node_id, payload=b"quiet", trace_context={"traceparent": VALID[:-2] + "00"}
            )
        )
        got = await receive(inbound)
        assert got.payload == b"quiet" and dict(got.trace_context) == {}
    finally:
        inbound.cancel()
        outbound.cancel()


async def test_a_peers_to_and_from_are_replaced_in_a_batch(transports: Starter) -> None:
    """What consensus's batch stream delivers is the peer's bytes parsed again with this
    transport's fields: a peer that names another sender (or another receiver) in its
    envelope, with a trace context, gets its own name and a sanitized context."""
    _, nodes = await transports(3)
    await all_connected(nodes)
    a, b, c = nodes
    max_frame = a.node.settings.max_frame_bytes
    traced = {"traceparent": VALID, "tracestate": "vendor=1", "r0": "x"}
    lies: dict[str, dict[str, str]] = {"plain": {}, "traced": traced}
    inbound = b.stub.ExchangeBatches()
    try:
        for name, carrier in lies.items():

            def encode(
                envelope: transport_pb2.Envelope, carrier: dict[str, str] = carrier
            ) -> tuple[bytes, bytes]:
                lie = transport_pb2.Envelope(
                    to=c.node_id, payload=envelope.payload, trace_context=carrier
                )
                setattr(lie, "from", c.node_id)
                body = lie.SerializeToString()
                return encode_frame(FrameType.MSG, body, max_frame_bytes=max_frame), body

            a.node._encode_outbound = encode  # type: ignore[method-assign]
            await a.send(transport_pb2.Envelope(to=b.node_id, payload=name.encode()))
            batch = await asyncio.wait_for(inbound.read(), 10)
            [got] = batch.envelopes
            assert got.payload == name.encode()
            assert (getattr(got, "from"), got.to) == (a.node_id, b.node_id), name
            if carrier:  # the receive span's context; the peer's tracestate is not kept
                assert set(got.trace_context) == {"traceparent", "r0"}, got.trace_context
                assert got.trace_context["r0"] == "x"
                assert got.trace_context["traceparent"].split("-")[1] == TRACE_ID
                assert got.trace_context["traceparent"] != VALID
            else:
                assert dict(got.trace_context) == {}
    finally:
        inbound.cancel()
