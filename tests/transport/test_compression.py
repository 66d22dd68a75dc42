"""Compressed MSG frames (zstd) between transports that both offer them.

The codec refuses anything but one bounded zstd frame; real transports on loopback send
large messages compressed to a peer that offered the feature, plain to one that did not
(and convert what was queued when a peer comes back without it); a member sending a
decompression bomb loses its connection, counted, and the others are unaffected.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from cretoai.v1 import transport_pb2
from devkit.transport import (
    RunningTransport,
    all_connected,
    eventually,
    make_cluster,
    start_transport,
)
from services.transport import compression
from services.transport.compression import CompressionError
from services.transport.framing import FrameType, encode_frame
from tests.transport.conftest import Starter
from tests.transport.test_service import _has, read_n

#: Like a PRE-PREPARE from few clients: random blocks (signatures) with a repeated one
#: (a client's public key) in between.
KEY = os.urandom(2592)


def vertex_like_payload(count: int) -> bytes:
    return b"".join(os.urandom(5700) + KEY for _ in range(count))


# ---- the codec ----------------------------------------------------------------------


def test_a_message_round_trips_and_shrinks() -> None:
    body = vertex_like_payload(40)
    packed = compression.compress(body)
    assert packed is not None and len(packed) < 0.75 * len(body)
    assert compression.decompress(packed, max_bytes=len(body)) == body


def test_what_is_not_worth_compressing_goes_plain() -> None:
    assert compression.compress(b"x" * (compression.MIN_BYTES - 1)) is None  # short
    assert compression.compress(os.urandom(100_000)) is None  # nothing to gain
    # expands beyond what a receiver accepts: sent as it is
    assert compression.compress(b"\0" * 1_000_000) is None


@pytest.mark.parametrize(
    ("packed", "why"),
    [
        (b"not zstd at all", "not a zstd frame"),
        # a frame without its content size (streamed): its expansion is unknown
        (
            zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 5000),
            "does not declare",
        ),
        # declares more than the frame limit
        (zstandard.ZstdCompressor().compress(os.urandom(70_000)), "expands to"),
        # a bomb: far more than MAX_RATIO times its size
        (zstandard.ZstdCompressor().compress(b"\0" * 60_000), "expands to"),
        # one message per frame: bytes after the zstd frame are refused
        (zstandard.ZstdCompressor().compress(os.urandom(6000)) + b"tail", "undecodable"),
        # truncated
        (zstandard.ZstdCompressor().compress(vertex_like_payload(2))[:-10], "undecodable"),
    ],
)
def test_the_receiver_refuses_all_but_one_bounded_frame(packed: bytes, why: str) -> None:
    with pytest.raises(CompressionError, match=why):
        compression.decompress(packed, max_bytes=65_536)


# ---- real transports ----------------------------------------------------------------


async def _bytes_out(node: RunningTransport, peer_id: str) -> int:
    return (await node.peers())[peer_id].bytes_out


async def test_large_messages_go_compressed_to_a_peer_that_offers_it(
    transports: Starter,
) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    inbound = b.stub.Exchange()
    try:
        payload = vertex_like_payload(60)
        before = await _bytes_out(a, b.node_id)
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=payload))
        small = b"a PREPARE"  # below MIN_BYTES: plain
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=small))
        got = await read_n(inbound, 2)
        assert [g.payload for g in got] == [payload, small]
        sent = await _bytes_out(a, b.node_id) - before
        assert sent < 0.8 * len(payload), (sent, len(payload))
    finally:
        inbound.cancel()


async def test_a_peer_that_does_not_offer_it_gets_plain_frames(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, 2)
    spec.data[1]["transport"]["compress_messages"] = False  # as an older transport
    nodes = [await start_transport(spec.config(i)) for i in range(2)]
    try:
        await all_connected(nodes)
        a, b = nodes
        inbound = b.stub.Exchange()
        payload = vertex_like_payload(60)
        before = await _bytes_out(a, b.node_id)
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=payload))
        (got,) = await read_n(inbound, 1)
        assert got.payload == payload
        assert await _bytes_out(a, b.node_id) - before > len(payload)
        # a compressed frame queued for it (the peer came back without the feature) is
        # sent plain: converted when it leaves the queue. (Read on the same stream: a
        # stream cancelled and opened again could hand the frame to the old one's
        # consumer while its end is still on the way.)
        peer = a.node._peers[b.node_id]
        frame = a.node._compressed_frame(
            transport_pb2.Envelope(payload=payload).SerializeToString()
        )
        assert frame is not None and frame[4] == FrameType.MSG_ZSTD
        assert a.node._enqueue(peer, frame)
        a.node._pump(peer)
        (got,) = await read_n(inbound, 1)
        assert got.payload == payload
        inbound.cancel()
    finally:
        for node in nodes:
            await node.stop()


async def test_a_decompression_bomb_closes_only_that_connection(transports: Starter) -> None:
    _, nodes = await transports(3)
    await all_connected(nodes)
    a, b, c = nodes
    # a (Byzantine, white-box) sends a tiny frame declaring 4 MB of zeros
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (4 * 1024 * 1024 - 64))
    conn = a.node._peers[b.node_id].conn
    assert conn is not None and a.node._endpoint is not None
    conn.send_messages([encode_frame(FrameType.MSG_ZSTD, bomb, max_frame_bytes=1 << 20)])
    a.node._endpoint.transmit(conn)
    await eventually(
        lambda: _has(b, "protocol_errors.malformed_compressed"), what="the bomb refused"
    )
    assert (await b.peers())[c.node_id].connected  # c is unaffected
    # a and b reconnect, and compressed messages flow again
    await all_connected([a, b])
    inbound = b.stub.Exchange()
    try:
        payload = vertex_like_payload(30)
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=payload))
        (got,) = await read_n(inbound, 1)
        assert got.payload == payload
    finally:
        inbound.cancel()
