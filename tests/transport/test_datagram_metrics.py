"""The endpoint counts every UDP datagram (and its payload bytes) it sends and reads."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from cretoai.v1 import transport_pb2
from devkit.transport import all_connected
from tests.transport.conftest import Starter

NAMES = (
    "cretoai_transport_datagrams_sent_total",
    "cretoai_transport_datagram_bytes_sent_total",
    "cretoai_transport_datagrams_received_total",
    "cretoai_transport_datagram_bytes_received_total",
)


def counters() -> dict[str, float]:
    return {name: REGISTRY.get_sample_value(name) or 0.0 for name in NAMES}


async def test_datagrams_and_their_bytes_are_counted_both_ways(transports: Starter) -> None:
    spec, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    stream = b.stub.Exchange()
    payload = 300_000  # several 64 KiB loopback datagrams
    before = counters()
    to_b = {"peer": spec.names[1], "direction": "out"}
    frames_before = REGISTRY.get_sample_value("cretoai_transport_bytes_total", to_b) or 0.0
    assert (await a.send(transport_pb2.Envelope(to=b.node_id, payload=bytes(payload)))).queued
    got = await asyncio.wait_for(stream.read(), 10)
    assert len(got.payload) == payload
    stream.cancel()
    delta = {name: value - before[name] for name, value in counters().items()}
    frames = (REGISTRY.get_sample_value("cretoai_transport_bytes_total", to_b) or 0.0) - (
        frames_before
    )
    # both transports run in this process: the counters hold both sides
    for way in ("sent", "received"):
        datagrams = delta[f"cretoai_transport_datagrams_{way}_total"]
        size = delta[f"cretoai_transport_datagram_bytes_{way}_total"]
        assert size >= payload, (way, delta)
        assert payload // 65536 <= datagrams, (way, delta)
        assert size / datagrams <= 65536  # UDP payloads, at most one loopback datagram each
    # the UDP payloads carry the MSG frame, and QUIC's headers, ACKs and padding beside it
    assert delta["cretoai_transport_datagram_bytes_sent_total"] > frames >= payload
