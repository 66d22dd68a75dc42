"""Packets larger than 16 KiB between transports on one host (docs/transport.md).

Real transports on loopback that both offer the feature send 60,000-byte datagrams once
authenticated, and a message of a MiB arrives whole in far fewer datagrams than at
15,000 bytes; one that does not offer it (an older transport) is sent 15,000-byte ones;
and the endpoint still drops unread what no node sends.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cretoai.v1 import transport_pb2
from devkit.transport import RunningTransport, all_connected, make_cluster, start_transport
from services.transport.bounded_quic import LARGE_LOOPBACK_DATAGRAM_BYTES
from services.transport.endpoint import oversized
from services.transport.settings import LOOPBACK_DATAGRAM_BYTES, MAX_DATAGRAM_BYTES
from tests.transport.conftest import Starter
from tests.transport.test_service import read_n

MESSAGE = 1_000_000  # incompressible: random bytes


def _datagrams_sent() -> int:
    return int(REGISTRY.get_sample_value("cretoai_transport_datagrams_sent_total") or 0)


async def _send_one(a: RunningTransport, b: RunningTransport) -> int:
    """Send b a MESSAGE-byte payload from a; the datagrams both sent meanwhile (the
    counter is the process's: both transports run in this one)."""
    inbound = b.stub.Exchange()
    try:
        payload = os.urandom(MESSAGE)
        before = _datagrams_sent()
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=payload))
        (got,) = await read_n(inbound, 1)
        assert got.payload == payload
        return _datagrams_sent() - before
    finally:
        inbound.cancel()


async def _datagram_sizes(a: RunningTransport, b: RunningTransport) -> tuple[int, int]:
    return (
        (await a.peers())[b.node_id].max_datagram_bytes,
        (await b.peers())[a.node_id].max_datagram_bytes,
    )


async def test_transports_on_one_host_send_60000_byte_datagrams(transports: Starter) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    assert await _datagram_sizes(a, b) == (LARGE_LOOPBACK_DATAGRAM_BYTES,) * 2
    datagrams = await _send_one(a, b)
    # at 15,000 bytes the data alone needs MESSAGE / 15,000 = 67 datagrams
    assert datagrams < MESSAGE / LOOPBACK_DATAGRAM_BYTES, datagrams


async def test_a_peer_that_does_not_offer_them_gets_15000_byte_datagrams(
    tmp_path: Path,
) -> None:
    spec = make_cluster(tmp_path, 2)
    spec.data[1]["transport"]["large_loopback_datagrams"] = False  # as an older transport
    nodes = [await start_transport(spec.config(i)) for i in range(2)]
    try:
        await all_connected(nodes)
        a, b = nodes
        assert await _datagram_sizes(a, b) == (LOOPBACK_DATAGRAM_BYTES,) * 2
        assert await _send_one(a, b) >= MESSAGE / LOOPBACK_DATAGRAM_BYTES
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.parametrize(
    ("size", "host", "dropped"),
    [
        (MAX_DATAGRAM_BYTES, "192.0.2.1", False),
        (MAX_DATAGRAM_BYTES + 1, "192.0.2.1", True),  # no node sends a peer elsewhere more
        (MAX_DATAGRAM_BYTES + 1, "127.0.0.1", False),
        (LARGE_LOOPBACK_DATAGRAM_BYTES, "::1", False),
        (LARGE_LOOPBACK_DATAGRAM_BYTES, "::ffff:127.0.0.2", False),
        (LARGE_LOOPBACK_DATAGRAM_BYTES + 1, "127.0.0.1", True),
        (LARGE_LOOPBACK_DATAGRAM_BYTES, "not an address", True),
    ],
)
def test_what_no_node_sends_is_oversized(size: int, host: str, dropped: bool) -> None:
    assert oversized(size, host) is dropped
