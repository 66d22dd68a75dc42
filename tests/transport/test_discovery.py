"""Discovery: peer exchange of signed address records, STUN on loopback, mDNS on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from cretoai.v1 import transport_pb2
from devkit.ports import free_udp_ports
from devkit.transport import (
    RunningTransport,
    all_connected,
    eventually,
    make_cluster,
    start_transport,
)
from services.transport import auth, stun


def stale(port: int) -> str:
    return f"127.0.0.1:{port}"


async def test_peer_exchange_teaches_a_members_current_address(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, 3)
    (dead,) = free_udp_ports(1)
    # node2 and node3 only know wrong addresses for each other; node1 knows both
    spec.data[2]["validators"][1]["address"] = stale(dead)
    spec.data[1]["validators"][2]["address"] = stale(dead)
    nodes: list[RunningTransport] = []
    try:
        for i in range(3):
            nodes.append(await start_transport(spec.config(i)))
        await all_connected(nodes, timeout=20)
        n2, n3 = nodes[1], nodes[2]
        learned = (await n3.peers())[n2.node_id]
        assert learned.address == f"127.0.0.1:{spec.ports[1]}"
        assert learned.address_source == "peer_exchange"
        assert (await n3.counters()).get("addresses_learned.peer_exchange", 0) >= 1
    finally:
        for node in nodes:
            await node.stop()


async def test_forged_or_foreign_address_records_are_refused(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, 2)
    nodes = [await start_transport(spec.config(i)) for i in range(2)]
    try:
        n1, n2 = nodes
        real = n1.node._peers[n2.node_id].address
        soon = int(time.time() * 1000) + 60_000  # newer than anything node1 holds
        future = int(time.time() * 1000) + 60 * 60_000  # beyond the allowed clock skew

        def record(
            issued: int, address: str, signer: RunningTransport
        ) -> transport_pb2.AddressRecord:
            message = auth.address_record_message(
                node_id=n2.node_id, address=address, issued_unix_ms=issued
            )
            return transport_pb2.AddressRecord(
                node_id=n2.node_id,
                address=address,
                issued_unix_ms=issued,
                signature=signer.node._key.sign(message, context=auth.ADDRESS_CONTEXT),
            )

        assert not n1.node.learn_address(record(future, "127.0.0.1:9", n2), source="test")
        assert not n1.node.learn_address(record(soon, "127.0.0.1:9", n1), source="test")
        assert not n1.node.learn_address(record(soon, "not an address", n2), source="test")
        stranger = transport_pb2.AddressRecord(node_id="ab" * 32, address="127.0.0.1:9")
        assert not n1.node.learn_address(stranger, source="test")
        assert n1.node._peers[n2.node_id].address == real
        counters = await n1.counters()
        assert counters["protocol_errors.record_from_future"] == 1
        assert counters["protocol_errors.record_bad_signature"] == 1
        assert counters["protocol_errors.record_bad_address"] == 1
        assert counters["protocol_errors.record_not_member"] == 1
        # node2's own signed record, whoever relays it, is adopted
        assert n1.node.learn_address(record(soon, "127.0.0.1:10", n2), source="test")
        assert n1.node._peers[n2.node_id].address == "127.0.0.1:10"
        # and an older one cannot roll it back
        assert not n1.node.learn_address(record(soon - 1, real, n2), source="test")
    finally:
        for node in nodes:
            await node.stop()


class StunResponder(asyncio.DatagramProtocol):
    """An independent RFC 8489 Binding responder (struct-level), loopback only."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg_type, length, cookie = struct.unpack_from(">HHI", data)
        if msg_type != 0x0001 or cookie != 0x2112A442 or length + 20 != len(data):
            return
        self.requests += 1
        txid = data[8:20]
        host, port = addr[0], addr[1]
        xport = port ^ 0x2112
        xaddr = struct.unpack(">I", socket.inet_aton(host))[0] ^ 0x2112A442
        value = struct.pack(">BBHI", 0, 1, xport, xaddr)
        attrs = struct.pack(">HH", 0x0020, len(value)) + value
        response = struct.pack(">HHI", 0x0101, len(attrs), 0x2112A442) + txid + attrs
        assert self.transport is not None
        self.transport.sendto(response, addr)


@pytest.fixture
async def stun_server() -> AsyncIterator[tuple[StunResponder, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        StunResponder, local_addr=("127.0.0.1", 0)
    )
    yield protocol, transport.get_extra_info("sockname")[1]
    transport.close()


async def test_stun_learns_the_public_address_and_peers_learn_it(
    tmp_path: Path, stun_server: tuple[StunResponder, int]
) -> None:
    responder, stun_port = stun_server
    spec = make_cluster(tmp_path, 3)
    (dead,) = free_udp_ports(1)
    real = f"127.0.0.1:{spec.ports[0]}"
    # everybody, node1 included, lists a wrong address for node1; it listens on its real port
    for data in spec.data:
        data["validators"][0]["address"] = stale(dead)
    spec.data[0]["transport"]["quic_listen"] = real
    spec.data[0]["transport"]["stun_server"] = f"127.0.0.1:{stun_port}"
    nodes: list[RunningTransport] = []
    try:
        for i in range(3):
            nodes.append(await start_transport(spec.config(i)))
        n1, _, n3 = nodes

        async def advertised() -> bool:
            reply = await n1.stub.ListPeers(transport_pb2.ListPeersRequest(), timeout=5)
            return bool(reply.advertised_address == real)

        await eventually(advertised, what="node1 learned its address over STUN")
        assert responder.requests >= 1
        assert (await n1.counters())["stun.successes"] >= 1
        # node1 dials out and announces its STUN-learned address; node3 learns and dials it
        await all_connected(nodes, timeout=20)
        assert (await n3.peers())[n1.node_id].address == real
    finally:
        for node in nodes:
            await node.stop()


def test_stun_codec_against_an_independent_encoding() -> None:
    txid = bytes(range(12))
    request = stun.binding_request(txid)
    assert stun.looks_like_stun(request)
    assert struct.unpack_from(">HHI", request) == (0x0001, len(request) - 20, 0x2112A442)
    assert request[8:20] == txid
    # IPv6 and IPv4 XOR-MAPPED-ADDRESS round trips, plus FINGERPRINT check
    for host in ("192.0.2.1", "2001:db8::1"):
        attrs = struct.pack(">HH", 0x0020, 8 if ":" not in host else 20) + stun.xor_address(
            host, 32853, txid
        )
        response = stun.encode_message(0x0101, txid, attrs)
        result = stun.parse_response(response)
        assert isinstance(result, stun.StunAddress)
        assert (result.host, result.port, result.transaction_id) == (host, 32853, txid)
        broken = bytearray(response)
        broken[-1] ^= 1
        bad = stun.parse_response(bytes(broken))
        assert isinstance(bad, stun.StunError) and "FINGERPRINT" in bad.reason
    error = stun.encode_message(
        0x0111, txid, struct.pack(">HH", 0x0009, 8) + b"\x00\x00\x04\x00" + b"Bad!"
    )
    result = stun.parse_response(error)
    assert isinstance(result, stun.StunError) and "400" in result.reason
    assert isinstance(stun.parse_response(b"\x01\x01\x00\x04" + b"\x00" * 20), stun.StunError)
    assert not stun.looks_like_stun(b"\x40" + b"\x00" * 40)  # a QUIC short header


async def test_mdns_on_loopback_finds_members(tmp_path: Path) -> None:
    spec = make_cluster(tmp_path, 2)
    (dead,) = free_udp_ports(1)
    # neither node knows the other's real address: only mDNS can tell them
    spec.data[0]["validators"][1]["address"] = stale(dead)
    spec.data[1]["validators"][0]["address"] = stale(dead)
    for data in spec.data:
        data["transport"]["mdns"] = True
        data["transport"]["mdns_interfaces"] = "127.0.0.1"
    nodes: list[RunningTransport] = []
    try:
        for i in range(2):
            nodes.append(await start_transport(spec.config(i)))
        await all_connected(nodes, timeout=30)
        sources = {
            (await n.peers())[m.node_id].address_source for n in nodes for m in nodes if m is not n
        }
        assert "mdns" in sources
    finally:
        for node in nodes:
            await node.stop()
