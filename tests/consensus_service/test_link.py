"""The consensus service's link to its transport (a real transport, real gRPC): what it
queues and how it batches, bounded in bytes as well as in envelopes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cretoai.v1 import transport_pb2
from devkit.transport import RunningTransport, all_connected, make_cluster, start_transport
from services.consensus.link import BATCH_MAX, BATCH_MAX_BYTES, QUEUE_MAX_BYTES, TransportLink

ENVELOPE = 3 * 1024 * 1024


def _dropped() -> float:
    return REGISTRY.get_sample_value("cretoai_consensus_outbound_dropped_total") or 0.0


async def _ignore(envelope: transport_pb2.Envelope) -> None:
    return None


@pytest.fixture
async def two_transports(tmp_path: Path) -> AsyncIterator[tuple[RunningTransport, ...]]:
    spec = make_cluster(tmp_path, 2)
    running = [await start_transport(spec.config(i)) for i in range(2)]
    yield tuple(running)
    for node in running:
        await node.stop()


async def test_large_envelopes_queued_together_reach_the_peer(
    two_transports: tuple[RunningTransport, ...],
) -> None:
    """Eight 3-MiB envelopes queued at once (state-transfer answers, NEW-VIEWs) once went
    in one 24-MiB gRPC message: past the channel's limit, the stream failed for every
    peer's traffic and they were lost. Batches now stop at BATCH_MAX_BYTES."""
    a, b = two_transports
    await all_connected([a, b])
    inbound = b.stub.ExchangeBatches()
    link = TransportLink(f"127.0.0.1:{a.service.port}", _ignore)
    count = 8
    assert count * ENVELOPE > 16 * 1024 * 1024 > BATCH_MAX_BYTES
    for i in range(count):
        link.send(bytes([i]) * ENVELOPE, to=b.node_id)
    link.start()
    got: list[bytes] = []

    async def collect() -> None:
        while len(got) < count:
            batch = await inbound.read()
            got.extend(e.payload[:1] for e in batch.envelopes)

    try:
        await asyncio.wait_for(collect(), 30)
    finally:
        inbound.cancel()
        await link.close()
    assert got == [bytes([i]) for i in range(count)]


async def test_the_queue_to_the_transport_is_bounded_in_bytes() -> None:
    """10,000 envelopes of megabytes each would be gigabytes: a Byzantine peer drawing
    large answers faster than they leave grew a consensus process past 1 GB. Beyond
    QUEUE_MAX_BYTES, envelopes are dropped and counted."""
    link = TransportLink("127.0.0.1:9", _ignore)  # never started: everything stays queued
    before = _dropped()
    fits = QUEUE_MAX_BYTES // (ENVELOPE + 64 + 1)
    for _ in range(fits + 5):
        link.send(b"x" * ENVELOPE, to="p")
    assert _dropped() - before == 5
    await link.close()


async def test_a_batchs_bytes_are_the_envelopes_as_a_message_would_hold_them() -> None:
    """The link writes each batch by concatenation (no message built around 2-MiB
    payloads): it must parse to the envelopes queued, in order, and stop at BATCH_MAX."""
    link = TransportLink("127.0.0.1:9", _ignore)  # never started
    traced = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "k=v"}
    sent = [
        ("p" * 64, b"to one peer" * 1000, None),
        ("", b"to every peer", None),
        ("q" * 64, b"", None),  # an empty payload
        ("", b"traced", traced),
    ]
    for to, payload, context in sent:
        link.send(payload, to=to, trace_context=context)
    batch = transport_pb2.EnvelopeBatch.FromString(link._take_batch())
    expected = transport_pb2.EnvelopeBatch(
        envelopes=[
            transport_pb2.Envelope(to=to, payload=payload, trace_context=context)
            for to, payload, context in sent
        ]
    )
    assert batch == expected
    assert link._take_batch() == b""  # nothing left queued
    for i in range(BATCH_MAX + 3):
        link.send(b"%d" % i, to="p")
    first = transport_pb2.EnvelopeBatch.FromString(link._take_batch())
    rest = transport_pb2.EnvelopeBatch.FromString(link._take_batch())
    assert [e.payload for e in first.envelopes] == [b"%d" % i for i in range(BATCH_MAX)]
    assert [e.payload for e in rest.envelopes] == [
        b"%d" % i for i in range(BATCH_MAX, BATCH_MAX + 3)
    ]
    await link.close()
