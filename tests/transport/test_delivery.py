"""Authenticated, in-order delivery among real transport services over QUIC on loopback."""

from __future__ import annotations

import asyncio

from cretoai.v1 import transport_pb2
from devkit.transport import all_connected, eventually
from services.transport.connection import APP_ACK_DELAY
from tests.transport.conftest import Starter


async def test_three_nodes_connect_and_deliver_in_order(transports: Starter) -> None:
    _, nodes = await transports(3)
    await all_connected(nodes)
    a, b, c = nodes
    stream_b = b.stub.Exchange()
    stream_c = c.stub.Exchange()
    count = 200
    for i in range(count):
        reply = await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"b%05d" % i))
        assert reply.queued and reply.peers == 1
    reply = await a.send(transport_pb2.Envelope(payload=b"to-all"))
    assert reply.queued and reply.peers == 2

    async def read(stream: object, n: int) -> list[transport_pb2.Envelope]:
        out = []
        while len(out) < n:
            out.append(await stream.read())  # type: ignore[attr-defined]
        return out

    got_b = await asyncio.wait_for(read(stream_b, count + 1), 10)
    got_c = await asyncio.wait_for(read(stream_c, 1), 10)
    assert [e.payload for e in got_b] == [b"b%05d" % i for i in range(count)] + [b"to-all"]
    assert all(getattr(e, "from") == a.node_id for e in got_b)
    assert got_c[0].payload == b"to-all" and getattr(got_c[0], "from") == a.node_id
    stream_b.cancel()
    stream_c.cancel()


async def test_a_message_needing_the_whole_window_follows_a_small_one_promptly(
    transports: Starter,
) -> None:
    """A few unacknowledged bytes must not hold back a message larger than the window (sent
    only into an empty one) until the next keep-alive. Regression: the cluster's 1 MB
    pre-prepares stalled for seconds. The receiver, with nothing to send back, holds its
    ACK frame for APP_ACK_DELAY: the large message waits that long, not a keep-alive."""
    window = 64 * 1024
    _, nodes = await transports(
        2,
        transport={"inflight_max_bytes": window, "keepalive_ms": 8_000, "idle_timeout_ms": 30_000},
    )
    await all_connected(nodes)
    a, b = nodes
    consumer = b.node.attach_consumer()
    loop = asyncio.get_running_loop()

    async def take() -> transport_pb2.Envelope:
        [delivery] = await asyncio.wait_for(consumer.get_batch(limit=1), 2)
        return delivery.envelope()

    waits = []
    for i in range(5):
        small = transport_pb2.Envelope(to=b.node_id, payload=b"s%d" % i)
        big = transport_pb2.Envelope(to=b.node_id, payload=bytes(window + 1000))
        started = loop.time()
        assert (await a.send(small)).queued
        assert (await a.send(big)).queued
        first = await take()
        second = await take()  # a keep-alive is 8 s away
        waits.append(loop.time() - started)
        assert first.payload == b"s%d" % i and len(second.payload) == window + 1000
    # held for the ACK delay (the small message's ACK frame), far from a keep-alive; the
    # bound leaves room for a loaded machine
    assert all(APP_ACK_DELAY <= w < 1.0 for w in waits), waits


async def test_four_nodes_all_to_all_in_order_per_sender(transports: Starter) -> None:
    _, nodes = await transports(4)
    await all_connected(nodes)
    streams = {n.node_id: n.stub.ExchangeBatches() for n in nodes}
    count = 150
    # every node broadcasts `count` numbered messages, interleaved with the others
    for i in range(count):
        for node in nodes:
            await node.send(
                transport_pb2.Envelope(payload=node.node_id[:8].encode() + b":%05d" % i)
            )

    async def collect(node_id: str) -> dict[str, list[int]]:
        per_sender: dict[str, list[int]] = {}
        received = 0
        while received < count * 3:
            batch = await streams[node_id].read()
            for envelope in batch.envelopes:
                sender = getattr(envelope, "from")
                prefix, number = envelope.payload.split(b":")
                assert prefix == sender[:8].encode()  # tagged with the authenticated sender
                assert envelope.to == node_id
                per_sender.setdefault(sender, []).append(int(number))
                received += 1
        return per_sender

    results = await asyncio.wait_for(
        asyncio.gather(*(collect(n.node_id) for n in nodes)), timeout=20
    )
    for node, per_sender in zip(nodes, results, strict=True):
        assert set(per_sender) == {n.node_id for n in nodes if n is not node}
        for numbers in per_sender.values():
            assert numbers == list(range(count))  # complete and in order, per peer
    for stream in streams.values():
        stream.cancel()


async def test_simultaneous_dials_leave_one_working_connection(transports: Starter) -> None:
    # dialers parked (a minute of backoff), then both sides dial each other at once
    _, nodes = await transports(
        2, transport={"reconnect_min_ms": 60_000, "reconnect_max_ms": 60_000}
    )
    a, b = nodes
    results = await asyncio.gather(
        a.node._dial_once(a.node._peers[b.node_id]),
        b.node._dial_once(b.node._peers[a.node_id]),
    )
    assert any(results)

    async def settled() -> bool:
        live = []
        for n in nodes:
            endpoint = n.node._endpoint
            assert endpoint is not None
            live.append(sum(1 for c in endpoint.connections if c.authenticated))
        return live == [1, 1]

    await eventually(settled, what="one connection left on each side")
    duplicates = [(await n.counters()).get("duplicate_connections", 0) for n in nodes]
    assert duplicates[0] >= 1 and duplicates[1] >= 1  # both saw two and resolved them
    pa, pb = (await a.peers())[b.node_id], (await b.peers())[a.node_id]
    assert pa.connected and pb.connected
    assert {pa.direction, pb.direction} == {"inbound", "outbound"}  # the same connection
    # the kept one is the one dialed by the lower node id
    lower = min(a.node_id, b.node_id)
    assert (pa.direction == "outbound") == (a.node_id == lower)
    inbound_b, inbound_a = b.stub.Exchange(), a.stub.Exchange()
    await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"a->b"))
    await b.send(transport_pb2.Envelope(to=a.node_id, payload=b"b->a"))
    assert (await asyncio.wait_for(inbound_b.read(), 5)).payload == b"a->b"
    assert (await asyncio.wait_for(inbound_a.read(), 5)).payload == b"b->a"
    inbound_a.cancel()
    inbound_b.cancel()
