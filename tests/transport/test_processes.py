"""Transport services as real processes: a peer restarts; a peer is stalled (SIGSTOP)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from cretoai.v1 import transport_pb2
from devkit.transport import (
    TransportProcess,
    eventually,
    make_cluster,
    spawnable,
    start_transport,
)

pytestmark = pytest.mark.slow


async def read_n(call: object, n: int, timeout: float = 15.0) -> list[transport_pb2.Envelope]:
    async def go() -> list[transport_pb2.Envelope]:
        out = []
        while len(out) < n:
            out.append(await call.read())  # type: ignore[attr-defined]
        return out

    return await asyncio.wait_for(go(), timeout)


async def test_reconnection_after_a_peer_restarts(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, 3)
    proc = spawnable(spec, 2)
    a = await start_transport(spec.config(0))
    b = await start_transport(spec.config(1))
    try:
        await proc.start(timeout=40)

        async def c_connected_to_both() -> bool:
            peers_a, peers_b = await a.peers(), await b.peers()
            return peers_a[proc.node_id].connected and peers_b[proc.node_id].connected

        await eventually(c_connected_to_both, timeout=40, what="process peer connected")
        call = proc.stub.Exchange()
        await a.send(transport_pb2.Envelope(to=proc.node_id, payload=b"before"))
        assert (await read_n(call, 1))[0].payload == b"before"
        call.cancel()

        assert await proc.stop(kill=True) == -signal.SIGKILL
        await proc.start(timeout=40)

        async def reconnected() -> bool:
            # a *new* connection on both survivors (the old one may still look alive
            # until its keep-alive deadline: the process was killed, it said nothing)
            peers_a, peers_b = await a.peers(), await b.peers()
            return all(
                p[proc.node_id].connected and p[proc.node_id].reconnects >= 1
                for p in (peers_a, peers_b)
            )

        await eventually(reconnected, timeout=40, what="reconnected after restart")
        # delivery works again, in order, from both survivors
        call = proc.stub.Exchange()
        for i in range(50):
            await a.send(transport_pb2.Envelope(to=proc.node_id, payload=b"a%02d" % i))
            await b.send(transport_pb2.Envelope(to=proc.node_id, payload=b"b%02d" % i))
        got = await read_n(call, 100)
        from_a = [e.payload for e in got if getattr(e, "from") == a.node_id]
        from_b = [e.payload for e in got if getattr(e, "from") == b.node_id]
        assert from_a == [b"a%02d" % i for i in range(50)]
        assert from_b == [b"b%02d" % i for i in range(50)]
        call.cancel()
    finally:
        await proc.stop()
        await a.stop()
        await b.stop()


async def test_a_stalled_peer_blocks_nobody_and_memory_stays_bounded(tmp_path: Path) -> None:
    queue_max, queue_bytes, window = 300, 2 * 1024 * 1024, 256 * 1024
    spec = make_cluster(
        tmp_path,
        3,
        transport={
            "send_queue_max": queue_max,
            "send_queue_max_bytes": queue_bytes,
            "inflight_max_bytes": window,
            # 1 MiB frames, and room for a PRE-PREPARE of a 1-MiB batch (below)
            "max_frame_bytes": 1024 * 1024 + 64 * 1024,
            "keepalive_ms": 2_000,
            "idle_timeout_ms": 20_000,
        },
    )
    for data in spec.data:  # the config check: a batch's PRE-PREPARE must fit a frame
        data["consensus"] = {"batch_max_bytes": 1024 * 1024}
    stalled: TransportProcess = spawnable(spec, 2)
    a = await start_transport(spec.config(0))
    b = await start_transport(spec.config(1))
    try:
        await stalled.start(timeout=40)

        async def all_up() -> bool:
            peers = await a.peers()
            return all(p.connected for p in peers.values())

        await eventually(all_up, timeout=40, what="a connected to b and the process")
        stalled.signal(signal.SIGSTOP)  # alive but silent: no ACKs, no reads
        call = b.stub.Exchange()
        payload = b"x" * 5000
        total = 2000
        started = time.monotonic()
        received: list[transport_pb2.Envelope] = []

        async def reader() -> None:
            while len(received) < total:
                received.append(await call.read())

        reading = asyncio.create_task(reader())
        for i in range(total):
            # broadcast: every message goes to b *and* to the stalled process
            reply = await a.send(transport_pb2.Envelope(payload=b"%06d" % i + payload))
            assert reply.peers == 2
        await asyncio.wait_for(reading, 60)
        elapsed = time.monotonic() - started
        assert [e.payload[:6] for e in received] == [b"%06d" % i for i in range(total)]
        peers = await a.peers()
        slow = peers[stalled.node_id]
        # bounded: the queue holds at most its limits, the window at most one window
        assert slow.send_queue_depth <= queue_max
        assert slow.send_queue_bytes <= queue_bytes
        assert slow.inflight_bytes <= window + len(payload) + 64
        assert slow.dropped > 0  # drop-oldest, counted
        assert (await a.counters())["dropped.queue_full"] == slow.dropped
        assert peers[b.node_id].dropped == 0
        assert elapsed < 60
        call.cancel()
        stalled.signal(signal.SIGCONT)
        # once it runs again, it gets the newest messages that were still queued
        inbound = stalled.stub.Exchange()
        last = (await read_n(inbound, 1, timeout=20))[0]
        assert last.payload[:6].isdigit()
        inbound.cancel()
    finally:
        if stalled.proc is not None and stalled.proc.returncode is None:
            stalled.signal(signal.SIGCONT)
        await stalled.stop()
        await a.stop()
        await b.stop()
