"""The transport service over real QUIC on loopback: auth failures, bad input, bans, faults."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.rangeset import RangeSet
from aioquic.tls import Epoch

from cretoai.config import parse_config
from cretoai.crypto import write_keypair
from cretoai.crypto.keys import read_public_key
from cretoai.v1 import transport_pb2
from devkit.transport import RunningTransport, all_connected, eventually, start_transport
from services.transport.bounded_quic import UNAUTHENTICATED_RECEIVE_WINDOW
from services.transport.connection import parameters_differ
from services.transport.errors import CloseCode, InvalidRequest, UnknownPeer
from services.transport.framing import FrameType, encode_frame
from services.transport.service import build_node
from services.transport.tls import quic_configuration
from tests.transport.conftest import Starter


async def read_n(call: object, n: int, timeout: float = 10.0) -> list[transport_pb2.Envelope]:
    async def go() -> list[transport_pb2.Envelope]:
        out = []
        while len(out) < n:
            out.append(await call.read())  # type: ignore[attr-defined]
        return out

    return await asyncio.wait_for(go(), timeout)


async def counter(node: RunningTransport, name: str) -> int:
    return (await node.counters()).get(name, 0)


async def test_non_member_is_rejected_and_counted(transports: Starter, tmp_path: Path) -> None:
    spec, nodes = await transports(2)
    await all_connected(nodes)
    # a stranger: its own config lists the cluster plus itself, so it dials them
    _, _ = write_keypair(tmp_path / "stranger")
    stranger_pub = read_public_key(tmp_path / "stranger" / "node.pub")
    data = spec.data[0] | {
        "node": {"name": "stranger", "key": str(tmp_path / "stranger" / "node.key")},
        "validators": [
            *spec.data[0]["validators"],
            {"name": "stranger", "public_key": stranger_pub.hex(), "address": "127.0.0.1:0"},
        ],
    }
    stranger = await build_node(parse_config(data, tmp_path / "stranger" / "node.toml"))
    try:
        await eventually(
            lambda: _has(nodes[0], "auth_failures.non_member"), what="non-member rejected"
        )
        peers = await nodes[0].peers()
        assert stranger.node_id not in peers
        assert all(p.connected for p in peers.values())  # the members are unaffected
        assert not any(p.connected for p in stranger.peers())
    finally:
        await stranger.stop()


async def _has(node: RunningTransport, name: str, at_least: int = 1) -> bool:
    return await counter(node, name) >= at_least


async def test_member_presenting_the_wrong_key_is_rejected(
    transports: Starter, tmp_path: Path
) -> None:
    # node3 is listed but never started; an impostor holds another key and claims node3
    spec, nodes = await transports(2, extra_members=1)
    await all_connected(nodes)
    _, _ = write_keypair(tmp_path / "impostor")
    fake_pub = read_public_key(tmp_path / "impostor" / "node.pub")
    validators = [dict(v) for v in spec.data[2]["validators"]]
    validators[2]["public_key"] = fake_pub.hex()  # the impostor's own (wrong) view
    data = spec.data[2] | {
        "node": {"name": "node3", "key": str(tmp_path / "impostor" / "node.key")},
        "validators": validators,
    }
    impostor = await build_node(parse_config(data, tmp_path / "impostor" / "node.toml"))
    impostor._node_id = spec.node_ids[2]  # claim the real node3's id
    try:
        await eventually(
            lambda: _has(nodes[0], "auth_failures.bad_signature"),
            what="wrong key rejected by node1",
        )
        await eventually(
            lambda: _has(nodes[1], "auth_failures.bad_signature"),
            what="wrong key rejected by node2",
        )
        for node in nodes:
            assert not (await node.peers())[spec.node_ids[2]].connected
    finally:
        await impostor.stop()


async def test_garbage_datagrams_and_floods_are_counted_and_harmless(
    transports: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.transport.node")
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    host, port = b.node.quic_address
    rng = os.urandom
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        deadline = time.monotonic() + 5
        for i in range(3000):  # bounded in count and time
            if time.monotonic() > deadline:
                break
            size = 1 + (i * 37) % 1400
            payload = rng(size)
            if i % 3 == 0:  # looks like a QUIC short header for an unknown connection
                payload = bytes([0x40 | (payload[0] & 0x3F)]) + payload[1:]
            if i % 5 == 0:  # a fake Initial from a stranger
                payload = b"\xc0\x00\x00\x00\x01\x08" + rng(8) + b"\x08" + rng(8) + rng(1200)
            sock.sendto(payload, (host, port))
            if i % 10 == 0:  # let the service read (one event loop here)
                await asyncio.sleep(0)
    counters = await b.counters()
    bad = sum(v for k, v in counters.items() if k.startswith("protocol_errors."))
    assert bad > 100, counters
    # logged too, but at most once per reason in 5 s: a few lines for thousands
    refused = [r for r in caplog.records if r.getMessage() == "datagram refused or dropped"]
    reasons = [getattr(r, "fields", {}).get("reason") for r in refused]
    assert "garbage_datagram" in reasons or "unknown_connection_datagram" in reasons, reasons
    assert len(reasons) == len(set(reasons)) <= 8, reasons
    # still alive and delivering, connection intact
    call = b.stub.Exchange()
    await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"after the storm"))
    got = await read_n(call, 1)
    assert got[0].payload == b"after the storm"
    call.cancel()
    assert (await a.peers())[b.node_id].connected


async def test_oversized_frame_from_a_member_closes_only_that_connection(
    transports: Starter,
) -> None:
    _, nodes = await transports(3)
    await all_connected(nodes)
    a, b, c = nodes
    # a (Byzantine, white-box) writes a frame header announcing more than max_frame_bytes
    conn = a.node._peers[b.node_id].conn
    assert conn is not None and a.node._endpoint is not None
    conn.quic.send_stream_data(0, (b.cfg.transport.max_frame_bytes + 1).to_bytes(4, "big"))
    a.node._endpoint.transmit(conn)
    await eventually(lambda: _has(b, "protocol_errors.oversized_frame"), what="oversized counted")
    # c is unaffected; a and b reconnect on their own
    assert (await b.peers())[c.node_id].connected
    await eventually(
        lambda: _connected(b, a.node_id), what="a and b reconnected after the protocol error"
    )
    # and a malformed message body (valid frame) is dropped and counted, not fatal
    conn = a.node._peers[b.node_id].conn
    assert conn is not None
    conn.send_messages([encode_frame(FrameType.MSG, b"\xff\xff\xff", max_frame_bytes=1 << 20)])
    a.node._endpoint.transmit(conn)
    await eventually(lambda: _has(b, "protocol_errors.malformed_message"), what="malformed")
    assert (await b.peers())[a.node_id].connected


async def _connected(node: RunningTransport, peer_id: str) -> bool:
    return (await node.peers())[peer_id].connected


async def test_ban_closes_at_once_and_refuses_reconnects(transports: Starter) -> None:
    _, nodes = await transports(3)
    await all_connected(nodes)
    a, b, c = nodes
    await a.stub.BanPeer(transport_pb2.BanPeerRequest(node_id=b.node_id, reason="test"), timeout=5)
    peers = await a.peers()
    assert peers[b.node_id].banned and not peers[b.node_id].connected  # at once
    # b keeps trying (its dialer backs off) and is refused every time
    await eventually(lambda: _has(a, "refused.banned", 2), what="b's reconnects refused")
    assert not (await a.peers())[b.node_id].connected
    # b hears why (it looked merely disconnected): counted, said, listed
    await eventually(lambda: _has(b, "refused_by_peer"), what="b told that a refuses it")
    assert (await b.peers())[a.node_id].refuses_us
    assert not (await b.peers())[c.node_id].refuses_us
    reply = await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"x"))
    assert not reply.queued
    # a and c still talk
    call = c.stub.Exchange()
    await a.send(transport_pb2.Envelope(to=c.node_id, payload=b"still here"))
    assert (await read_n(call, 1))[0].payload == b"still here"
    call.cancel()
    # errors for bad requests
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.stub.BanPeer(transport_pb2.BanPeerRequest(node_id="00" * 32), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_ban_lasts_as_long_as_the_consensus_process_that_asked_for_it(
    transports: Starter,
) -> None:
    """Reputation lives in the consensus process: a restarted one starts every peer again
    and reports none banned, but its transport kept refusing a peer banned by the old
    one until the transport restarted too (found by an audit, 2026-12-04). A ban without
    an end now belongs to the consensus session that asked for it: the same session's
    stream again (a reconnect) keeps it, another session's (a restart) lifts it, and b
    is let in again."""
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    old = (("cretoai-consensus-session", "old-process"),)
    await a.stub.BanPeer(
        transport_pb2.BanPeerRequest(node_id=b.node_id, reason="reputation"),
        timeout=5,
        metadata=old,
    )
    assert (await a.peers())[b.node_id].banned

    async def stream_of(session: tuple[tuple[str, str], ...]) -> Any:
        call = a.stub.ExchangeBatches(metadata=session)
        await call.wait_for_connection()
        return call

    reconnect = await stream_of(old)  # the same process's link reconnecting
    await eventually(lambda: _has(a, "refused.banned", 1), what="b refused")
    assert (await a.peers())[b.node_id].banned
    reconnect.cancel()
    restarted = await stream_of((("cretoai-consensus-session", "new-process"),))
    try:
        await eventually(lambda: _connected(a, b.node_id), what="b let in after the restart")
        assert not (await a.peers())[b.node_id].banned
    finally:
        restarted.cancel()


async def test_timed_ban_expires(transports: Starter) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    started = time.monotonic()
    await a.stub.BanPeer(
        transport_pb2.BanPeerRequest(node_id=b.node_id, duration_ms=500), timeout=5
    )
    assert (await a.peers())[b.node_id].banned
    await eventually(lambda: _connected(a, b.node_id), what="reconnected after the ban expired")
    assert time.monotonic() - started >= 0.5
    assert await _has(b, "refused_by_peer")  # b was told, when its connection was cut
    await eventually(lambda: _connected(b, a.node_id), what="b sees the connection too")
    assert not (await b.peers())[a.node_id].refuses_us  # cleared once let in again


async def test_fault_injection_is_refused_unless_enabled(transports: Starter) -> None:
    _, nodes = await transports(2)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nodes[0].stub.SetFaults(transport_pb2.SetFaultsRequest(drop_rate=1.0), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await nodes[0].stub.SetFaults(transport_pb2.SetFaultsRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_partition_cuts_the_link_for_real_and_heals(transports: Starter) -> None:
    _, nodes = await transports(3, fault_injection=True)
    await all_connected(nodes)
    a, b, c = nodes
    await a.stub.SetFaults(
        transport_pb2.SetFaultsRequest(node_id=b.node_id, partitioned=True), timeout=5
    )
    # both ends see the link down (b learns it from the QUIC close)
    await eventually(lambda: _disconnected(b, a.node_id), what="b sees the cut")
    assert not (await a.peers())[b.node_id].connected
    await eventually(lambda: _has(a, "refused.partitioned"), what="b's redials refused")
    reply = await a.send(transport_pb2.Envelope(payload=b"bcast"))
    assert reply.peers == 1  # only c
    call = c.stub.Exchange()
    assert (await read_n(call, 1))[0].payload == b"bcast"
    call.cancel()
    await a.stub.SetFaults(transport_pb2.SetFaultsRequest(node_id=b.node_id), timeout=5)
    await eventually(lambda: _connected(a, b.node_id), what="healed")


async def _disconnected(node: RunningTransport, peer_id: str) -> bool:
    return not (await node.peers())[peer_id].connected


async def test_drop_and_delay_faults(transports: Starter) -> None:
    _, nodes = await transports(2, fault_injection=True)
    await all_connected(nodes)
    a, b = nodes
    call = b.stub.Exchange()
    await a.stub.SetFaults(
        transport_pb2.SetFaultsRequest(node_id=b.node_id, drop_rate=1.0), timeout=5
    )
    for i in range(20):
        reply = await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"%d" % i))
        assert not reply.queued
    assert await counter(a, "dropped.fault_drop") == 20
    await a.stub.SetFaults(
        transport_pb2.SetFaultsRequest(node_id=b.node_id, delay_ms=300), timeout=5
    )
    sent = time.monotonic()
    await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"late"))
    got = await read_n(call, 1)
    assert got[0].payload == b"late"  # nothing of the dropped ones arrived first
    assert time.monotonic() - sent >= 0.3
    call.cancel()


async def test_bad_requests_map_to_status_codes(transports: Starter) -> None:
    _, nodes = await transports(2)
    a, b = nodes
    cases = [
        (transport_pb2.Envelope(to="ab" * 32, payload=b"x"), UnknownPeer, "unknown_peer"),
        (transport_pb2.Envelope(to=a.node_id, payload=b"x"), InvalidRequest, "invalid"),
        (
            transport_pb2.Envelope(to=b.node_id, payload=b"x" * (4 * 1024 * 1024)),
            InvalidRequest,
            "invalid",
        ),
    ]
    codes = {
        UnknownPeer: grpc.StatusCode.NOT_FOUND,
        InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    }
    for envelope, error, _ in cases:
        with pytest.raises(error) as raised:
            await a.send(envelope)
        assert raised.value.grpc_status == codes[error]
    # on the Exchange stream (consensus's way to send) they are dropped and counted
    call = a.stub.Exchange()
    for envelope, _, _ in cases:
        await call.write(envelope)

    async def dropped() -> bool:
        counters = await a.counters()
        return (counters.get("dropped.unknown_peer"), counters.get("dropped.invalid")) == (1, 2)

    await eventually(dropped, what="bad envelopes dropped and counted")
    call.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.stub.PingPeer(transport_pb2.PingPeerRequest(node_id="cd" * 32), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await all_connected(nodes)
    reply = await a.stub.PingPeer(transport_pb2.PingPeerRequest(node_id=b.node_id), timeout=5)
    assert 0 < reply.rtt_ms < 1000


async def test_a_second_exchange_stream_supersedes_the_first(transports: Starter) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    first = b.stub.Exchange()
    await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"one"))
    assert (await read_n(first, 1))[0].payload == b"one"
    second = b.stub.Exchange()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await read_n(first, 1)
    assert info.value.code() == grpc.StatusCode.ABORTED
    await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"two"))
    assert (await read_n(second, 1))[0].payload == b"two"
    second.cancel()


async def test_exchange_sends_outbound_and_carries_trace_context(transports: Starter) -> None:
    _, nodes = await transports(2)
    await all_connected(nodes)
    a, b = nodes
    inbound = b.stub.Exchange()
    outbound = a.stub.Exchange()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    await outbound.write(
        transport_pb2.Envelope(
            to=b.node_id, payload=b"traced", trace_context={"traceparent": parent}
        )
    )
    got = (await read_n(inbound, 1))[0]
    assert got.payload == b"traced"
    assert getattr(got, "from") == a.node_id
    # same trace, a new span (the transport's receive span) as parent
    traceparent = got.trace_context["traceparent"]
    assert traceparent.split("-")[1] == trace_id
    assert traceparent != parent
    inbound.cancel()
    outbound.cancel()


async def test_two_processes_with_one_members_key_are_told_and_stop_taking_turns(
    transports: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator starts node1 a second time (a copied config and key, another port).
    The twin's connections look like node1's restart and take over; when the original,
    alive, comes back (a restart never brings an old boot id back), node2 and node3 both
    keep the process with the lower boot id and refuse the other at every redial,
    instead of letting the two take turns; the peers and the processes say what is
    wrong. Once the kept one stops, the other is let in."""
    caplog.set_level(logging.WARNING, logger="services.transport.node")
    spec, nodes = await transports(3)
    original, node2, node3 = nodes
    await all_connected(nodes)
    data = spec.data[0] | {"transport": {**spec.data[0]["transport"], "quic_listen": "127.0.0.1:0"}}
    twin = await build_node(parse_config(data, tmp_path / "twin" / "node.toml"))
    twin_kept = twin.boot_id < original.node.boot_id
    kept, refused = (twin, original.node) if twin_kept else (original.node, twin)

    def told(node: Any) -> int:
        return int(node.stats.counters["identity_conflicts.this_node"])

    async def peers_kept(node: Any) -> bool:
        """Whether node2 and node3 both hold a connection to ``node`` for node1."""
        for peer in (node2, node3):
            link = peer.node._peers[original.node_id].conn
            if link is None or link.closed or link.peer_boot_id != node.boot_id:
                return False
        return True

    try:
        assert twin.node_id == original.node_id and twin.boot_id != original.node.boot_id
        for peer in (node2, node3):
            await eventually(
                functools.partial(_has, peer, "identity_conflicts.member"),
                what="a peer sees two processes",
            )

        async def refused_told() -> bool:
            return told(refused) >= 1

        await eventually(refused_told, what="the refused process is told")
        assert told(original.node) >= 1  # replaced by the twin's connection: told at once
        assert any(
            r.levelno == logging.ERROR and "two processes run as this node" in r.getMessage()
            for r in caplog.records
        )
        # both peers keep the same process: the other's next tries are refused
        refusals = await counter(node2, "identity_conflicts.member")
        await eventually(
            lambda: _has(node2, "identity_conflicts.member", refusals + 2),
            what="the other's next tries refused",
        )
        await eventually(lambda: peers_kept(kept), what="both peers keep the same process")
    finally:
        await (twin.stop() if twin_kept else original.stop())
    try:
        await eventually(lambda: peers_kept(refused), what="the other let in once one stopped")
    finally:
        await (original.stop() if twin_kept else twin.stop())


async def test_after_two_processes_a_restart_of_the_kept_one_is_let_in_at_once(
    transports: Starter, tmp_path: Path
) -> None:
    """Once two processes of node1 have met (one kept, one refused) and the refused one
    is stopped, the kept one crashes (its socket closed, nothing sent: node2's link to
    it still looks alive) and node1 restarts. The restart is not the pair held to its
    choice: it is let in at once as a restart, not refused as a third process."""
    spec, nodes = await transports(2)
    original, node2 = nodes
    await all_connected(nodes)

    def twin_config(name: str) -> Any:
        data = spec.data[0] | {
            "transport": {**spec.data[0]["transport"], "quic_listen": "127.0.0.1:0"}
        }
        return parse_config(data, tmp_path / name / "node.toml")

    def link_boot() -> bytes | None:
        link = node2.node._peers[original.node_id].conn
        return None if link is None or link.closed else link.peer_boot_id

    twin = await build_node(twin_config("twin"))
    restarted = None
    try:
        await eventually(
            lambda: _has(node2, "identity_conflicts.member"), what="node2 sees two processes"
        )
        twin_kept = twin.boot_id < original.node.boot_id
        kept = twin if twin_kept else original.node

        async def kept_linked() -> bool:
            return link_boot() == kept.boot_id

        await eventually(kept_linked, what="node2 keeps one of the two")
        await (original.stop() if twin_kept else twin.stop())  # the refused one, cleanly
        assert kept._endpoint is not None
        kept._endpoint.close()  # the kept one crashes: no CONNECTION_CLOSE is sent
        assert link_boot() == kept.boot_id  # node2 has not noticed
        conflicts = await counter(node2, "identity_conflicts.member")
        restarted = await build_node(twin_config("restarted"))

        async def restart_linked() -> bool:
            return link_boot() == restarted.boot_id

        await eventually(restart_linked, what="the restart let in")
        assert restarted.stats.counters["identity_conflicts.this_node"] == 0
        assert await counter(node2, "identity_conflicts.member") == conflicts
    finally:
        for process in (twin, restarted):
            if process is not None:
                await process.stop()


def _other_batch_limit(data: dict[str, Any]) -> dict[str, Any]:
    return data | {"consensus": {**data.get("consensus", {}), "batch_max_count": 2}}


def _validators_reordered(data: dict[str, Any]) -> dict[str, Any]:
    return data | {"validators": list(reversed(data["validators"]))}


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        (_other_batch_limit, "consensus.batch_max_count: 2 there, 256 here"),
        (_validators_reordered, "validators: 3 keys, set digest"),
    ],
    ids=["batch_max_count", "validator_order"],
)
async def test_a_member_with_other_cluster_parameters_is_refused_with_what_differs(
    transports: Starter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mistake: Any,
    named: str,
) -> None:
    """node3's operator set another consensus.batch_max_count, or listed the validators
    in another order (so other replica ids and primaries). Before the check the links
    came up: in a real 4-node cluster whose primary allowed 256 vertices a batch and the
    others 2, the others charged its 20-vertex batch as a protocol fault, banned it for
    good and left its 20 accepted vertices pending. Now every link to node3 is refused
    once it authenticated, on both sides, with an error that names what differs; node1
    and node2 stay connected."""
    caplog.set_level(logging.ERROR, logger="services.transport.node")
    spec, nodes = await transports(2, extra_members=1)
    node1, node2 = nodes
    odd = await start_transport(
        parse_config(mistake(spec.data[2]), spec.directory / "node3" / "node.toml")
    )
    try:
        for node in (node1, node2, odd):
            await eventually(
                functools.partial(_has, node, "parameters_differ"),
                what=f"{node.cfg.node.name} refuses a link for other parameters",
            )
        assert await _connected(node1, node2.node_id)
        for node in (node1, node2):
            assert not await _connected(node, odd.node_id)
            assert not await _connected(odd, node.node_id)
        errors = [
            (r.getMessage(), str(getattr(r, "fields", {}).get("differ")))
            for r in caplog.records
            if r.levelno == logging.ERROR
        ]
        assert any("other cluster parameters" in m and named in d for m, d in errors), errors
    finally:
        await odd.stop()


def test_what_differs_is_named_and_what_one_side_lacks_is_not_compared() -> None:
    ours = (("validators", "4 keys, set digest aa"), ("consensus.batch_max_count", "256"))
    assert parameters_differ(ours, ours) is None
    assert (
        parameters_differ(ours, (("consensus.batch_max_count", "2"),))
        == "consensus.batch_max_count: 2 there, 256 here"
    )
    # a transport older than the check sends none; a newer one may send more
    assert parameters_differ(ours, ()) is None
    assert parameters_differ((), ours) is None
    assert parameters_differ(ours, (*ours, ("consensus.new_limit", "1"))) is None


def test_close_codes_are_stable() -> None:
    # part of the wire protocol (docs/transport.md): never renumber
    assert {code.name: int(code) for code in CloseCode} == {
        "NO_ERROR": 0,
        "PROTOCOL_VIOLATION": 1,
        "AUTH_FAILED": 2,
        "NOT_MEMBER": 3,
        "BANNED": 4,
        "DUPLICATE": 5,
        "PEER_RESTARTED": 6,
        "HANDSHAKE_TIMEOUT": 7,
        "SHUTDOWN": 8,
        "PARTITIONED": 9,
        "KEEPALIVE_TIMEOUT": 10,
        "WRONG_PEER": 11,
        "UNSUPPORTED_VERSION": 12,
        "SELF_CONNECTION": 13,
        "AUTH_COOLDOWN": 14,
        "IDENTITY_IN_USE": 15,
        "PARAMETERS_DIFFER": 16,
    }


async def test_exchange_batches(transports: Starter) -> None:
    _, nodes = await transports(3)
    await all_connected(nodes)
    a, b, c = nodes
    inbound = b.stub.ExchangeBatches()
    outbound = a.stub.ExchangeBatches()
    envelopes = [transport_pb2.Envelope(to=b.node_id, payload=b"%04d" % i) for i in range(300)]
    await outbound.write(transport_pb2.EnvelopeBatch(envelopes=envelopes[:150]))
    await outbound.write(transport_pb2.EnvelopeBatch(envelopes=envelopes[150:]))
    got: list[bytes] = []

    async def collect() -> None:
        while len(got) < 300:
            batch = await inbound.read()
            assert all(getattr(e, "from") == a.node_id for e in batch.envelopes)
            got.extend(e.payload for e in batch.envelopes)

    await asyncio.wait_for(collect(), 10)
    assert got == [b"%04d" % i for i in range(300)]
    # one consumer at a time: a plain Exchange now supersedes the batch stream
    plain = b.stub.Exchange()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(inbound.read(), 5)
    assert info.value.code() == grpc.StatusCode.ABORTED
    await c.send(transport_pb2.Envelope(to=b.node_id, payload=b"plain"))
    assert (await read_n(plain, 1))[0].payload == b"plain"
    plain.cancel()
    outbound.cancel()


async def test_prometheus_metrics_are_exported(tmp_path: Path) -> None:
    import urllib.request

    from devkit.transport import make_cluster, start_transport

    spec = make_cluster(tmp_path, 2)
    a = await start_transport(spec.config(0), metrics=True)
    b = await start_transport(spec.config(1))
    try:
        await all_connected([a, b])
        await a.send(transport_pb2.Envelope(to=b.node_id, payload=b"m"))
        await a.stub.PingPeer(transport_pb2.PingPeerRequest(node_id=b.node_id), timeout=5)
        url = f"http://127.0.0.1:{a.service.metrics_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:  # loopback only
                return str(reply.read().decode())

        text = await asyncio.to_thread(scrape)
        for name in (
            "cretoai_transport_peers_connected",
            "cretoai_transport_rtt_seconds_bucket",
            'cretoai_transport_messages_total{direction="out",peer="node2"}',
            "cretoai_transport_bytes_total",
            "cretoai_transport_send_queue_depth",
            "cretoai_transport_dropped_total",
            "cretoai_transport_reconnects_total",
            "cretoai_transport_auth_failures_total",
        ):
            assert name in text, name
    finally:
        await a.stop()
        await b.stop()


#: A node that waits long for handshakes and never redials on its own (the test dials).
QUIET = {"handshake_timeout_ms": 20_000, "reconnect_min_ms": 60_000, "reconnect_max_ms": 60_000}


def stranger_config() -> QuicConfiguration:
    """A QUIC client with no identity: it completes the handshake, then proves nothing."""
    return quic_configuration(
        is_client=True, identity=None, idle_timeout=30, max_datagram_size=1350, flow_window=1 << 20
    )


async def stranger(
    target: tuple[str, int], source: str, kept: list[object] | None = None
) -> tuple[QuicConnection, QuicConnectionProtocol]:
    """A stranger's connection from the loopback address ``source``, connecting; with
    ``kept``, the stream writers a peer's stream opens are kept there (aioquic's writer
    ends its stream when it is dropped)."""
    quic = QuicConnection(configuration=stranger_config())
    handler = None if kept is None else (lambda r, w: kept.append(w))
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicConnectionProtocol(quic, stream_handler=handler), local_addr=(source, 0)
    )
    protocol.connect(target)
    return quic, protocol


async def test_handshakes_that_never_authenticate_trigger_address_validation(
    transports: Starter,
) -> None:
    from aioquic.asyncio.client import connect

    # b accepts at most 4 unauthenticated connections; from 2 on it demands a Retry
    _, nodes = await transports(2, transport={"max_pending_connections": 4, **QUIET})
    a, b = nodes
    host, port = b.node.quic_address
    async with contextlib.AsyncExitStack() as stack:
        # strangers that complete QUIC and then say nothing
        for _ in range(3):
            await stack.enter_async_context(connect(host, port, configuration=stranger_config()))
        counters = await b.counters()
        assert counters.get("protocol_errors.retry_sent", 0) >= 1  # the 3rd had to retry
        assert counters["pending_connections"] == 3
        # a member still gets in (aioquic answers the Retry), and authenticates
        assert await a.node._dial_once(a.node._peers[b.node_id])
        assert (await b.peers())[a.node_id].connected


async def test_one_stranger_cannot_take_every_pending_slot(transports: Starter) -> None:
    """A stranger at one address that completes QUIC and then says nothing holds at
    most ``max(MIN_PENDING_PER_ADDRESS, members)`` (4) pending connections: its next
    one is refused after the Retry, and a member still gets in. Without the bound it
    would hold all 8 of ``max_pending_connections`` and the member would be refused."""
    _, nodes = await transports(2, transport={"max_pending_connections": 8, **QUIET})
    a, b = nodes
    strangers: list[QuicConnectionProtocol] = []

    async def connects() -> bool:
        """One connection from 127.0.0.2 (another address than the members'): whether
        the QUIC handshake completed within 2 s."""
        _, protocol = await stranger(b.node.quic_address, "127.0.0.2")
        strangers.append(protocol)
        try:
            await asyncio.wait_for(protocol.wait_connected(), 2.0)
        except TimeoutError:
            return False
        return True

    try:
        for _ in range(4):
            assert await connects()
        assert not await connects()  # retried, then refused: its address holds 4
        counters = await b.counters()
        assert counters["pending_connections"] == 4
        assert counters.get("protocol_errors.address_pending_limit", 0) >= 1
        assert await a.node._dial_once(a.node._peers[b.node_id])
        assert (await b.peers())[a.node_id].connected
    finally:
        for protocol in strangers:
            protocol.close()


async def test_an_address_that_keeps_failing_a_members_proof_is_refused_for_a_while(
    transports: Starter,
) -> None:
    """A stranger at 127.0.0.2 claims member a's id and sends a garbage proof: each try
    costs b an ML-DSA-87 verification, until the 8th failure within a minute; then b
    refuses that claim from that address at its HELLO (AUTH_COOLDOWN), with no
    verification, while a itself, from its own address, still gets in. From a
    member's own address, failures are not held against the address."""
    from cretoai.crypto import SIGNATURE_SIZE
    from services.transport import auth
    from services.transport.connection import STREAM_ID
    from services.transport.node import AUTH_FAILURES_BEFORE_COOLDOWN

    _, nodes = await transports(2, transport=QUIET)
    a, b = nodes

    async def impostor(source: str = "127.0.0.2") -> None:
        """One connection claiming a's id with a garbage proof, until b closes it."""
        kept: list[object] = []  # b's HELLO opens a stream writer here: a dropped one ends it
        quic, protocol = await stranger(b.node.quic_address, source, kept)
        try:
            await asyncio.wait_for(protocol.wait_connected(), 10)
            hello = transport_pb2.WireHello(
                version=auth.PROTOCOL_VERSION,
                node_id=a.node_id,
                nonce=os.urandom(auth.NONCE_SIZE),
                boot_id=os.urandom(auth.BOOT_ID_SIZE),
            )
            proof = transport_pb2.WireAuth(signature=os.urandom(SIGNATURE_SIZE))
            for kind, body in ((FrameType.HELLO, hello), (FrameType.AUTH, proof)):
                frame = encode_frame(kind, body.SerializeToString(), max_frame_bytes=1 << 20)
                quic.send_stream_data(STREAM_ID, frame)
            protocol.transmit()
            await asyncio.wait_for(protocol.wait_closed(), 10)
        finally:
            protocol.close()

    for _ in range(AUTH_FAILURES_BEFORE_COOLDOWN):
        await impostor()
    counters = await b.counters()
    assert counters["auth_failures.bad_signature"] == AUTH_FAILURES_BEFORE_COOLDOWN
    assert counters.get("refused.auth_cooldown", 0) == 0
    await impostor()
    counters = await b.counters()
    assert counters["auth_failures.bad_signature"] == AUTH_FAILURES_BEFORE_COOLDOWN  # no work
    assert counters["refused.auth_cooldown"] == 1
    assert await a.node._dial_once(a.node._peers[b.node_id])
    assert (await b.peers())[a.node_id].connected
    # from the address a member connects from (127.0.0.1), failures are not held against
    # the address: a member there could otherwise get another member refused
    for _ in range(AUTH_FAILURES_BEFORE_COOLDOWN + 1):
        await impostor("127.0.0.1")
    counters = await b.counters()
    assert counters["auth_failures.bad_signature"] == 2 * AUTH_FAILURES_BEFORE_COOLDOWN + 1
    assert counters["refused.auth_cooldown"] == 1


async def test_a_members_stop_sending_closes_only_that_connection(transports: Starter) -> None:
    """A member that sends STOP_SENDING on the stream makes aioquic reset our side of it:
    the next write raised, which killed the task reading consensus's Exchange stream (so
    nothing more went to any peer) and the peer-exchange task, silently. Now it closes
    that one connection as the member's fault; traffic to the others goes on."""
    _, nodes = await transports(3, transport={"peer_exchange_ms": 500})
    await all_connected(nodes)
    a, b, c = nodes  # a: Byzantine member; b: the victim
    conn = a.node._peers[b.node_id].conn
    assert conn is not None and a.node._endpoint is not None
    conn.quic.stop_stream(0, 0)
    a.node._endpoint.transmit(conn)
    await eventually(lambda: _has(b, "protocol_errors.stop_sending"), what="stop_sending counted")
    call = b.stub.Exchange()
    c_in = c.stub.Exchange()
    try:
        await call.write(transport_pb2.Envelope(to="", payload=b"broadcast"))
        for i in range(5):
            await call.write(transport_pb2.Envelope(to=c.node_id, payload=b"to-c-%d" % i))
        got = [(await asyncio.wait_for(c_in.read(), 10)).payload for _ in range(6)]
        assert got == [b"broadcast"] + [b"to-c-%d" % i for i in range(5)]
        assert not [t for t in b.node._tasks if t.done()]  # no task of b's died
        await eventually(lambda: _connected(b, a.node_id), what="a and b reconnected")
    finally:
        call.cancel()
        c_in.cancel()


async def test_a_strangers_closed_connections_are_dropped_at_once(transports: Starter) -> None:
    """A connection closed before it authenticated was kept through QUIC's closing period
    (3 PTO with the peer's max_ack_delay: up to ~49 s) with its buffers, outside the
    pending bounds: strangers opening connections that get closed piled up hundreds of
    MiB. It is forgotten once its CONNECTION_CLOSE is sent."""
    _, nodes = await transports(2, transport={"max_pending_connections": 8, **QUIET})
    _, b = nodes
    assert b.node._endpoint is not None
    before = len(b.node._endpoint.connections)
    strangers = []
    try:
        for _ in range(12):  # more than max_pending_connections, from one address
            quic, protocol = await stranger(b.node.quic_address, "127.0.0.2")
            strangers.append(protocol)
            await asyncio.wait_for(protocol.wait_connected(), 5)
            # a frame before authenticating is a protocol violation: b closes at once
            quic.send_stream_data(0, encode_frame(FrameType.MSG, b"x", max_frame_bytes=1 << 20))
            protocol.transmit()
            await eventually(
                lambda: _has(b, "protocol_errors.unauthenticated_frame", len(strangers)),
                what="closed",
            )
        assert len(b.node._endpoint.connections) == before  # none kept
        counters = await b.counters()
        assert counters.get("protocol_errors.address_pending_limit", 0) == 0  # never full
    finally:
        for protocol in strangers:
            protocol.close()


async def test_handshakes_that_end_inside_quic_are_counted(transports: Starter) -> None:
    """A handshake aioquic refuses itself (no common ALPN) ended with no counter moved and
    was logged as closed by the peer: every connection that ends before it authenticates
    is counted (``auth_failures.closed_before_auth``)."""
    import ssl

    from aioquic.asyncio.client import connect

    _, nodes = await transports(2, transport=QUIET)
    _, b = nodes
    host, port = b.node.quic_address
    wrong = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
    for _ in range(2):
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(5), connect(host, port, configuration=wrong):
                pass
    await eventually(lambda: _has(b, "auth_failures.closed_before_auth", 2), what="both counted")


async def test_forged_address_hints_cannot_keep_a_member_undialed(transports: Starter) -> None:
    """mDNS hints are unauthenticated. Each one reset the back-off and re-armed the dial
    delay, and a dial took the hint over the known address: a hint every 10 ms meant the
    member's real address was never dialed. Only the first hint since a dial wakes the
    dialer, and a hint and the known address take turns."""
    spec, nodes = await transports(2, extra_members=1)  # the third member is down
    a = nodes[0]
    assert a.node._endpoint is not None
    member = spec.node_ids[2]
    known = a.node._peers[member].address
    dialed: list[str] = []
    connect = a.node._endpoint.connect

    def recording(addr: tuple[str, int], expected_peer: str) -> Any:
        if expected_peer == member:
            dialed.append(f"{addr[0]}:{addr[1]}")
        return connect(addr, expected_peer)

    a.node._endpoint.connect = recording  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8
    i = 0
    while loop.time() < deadline and known not in dialed[1:]:  # bounded in time
        a.node.mdns_candidate(member, f"127.0.0.9:{20000 + i}")
        i += 1
        await asyncio.sleep(0.01)
    assert known in dialed, dialed  # the real address is still tried during the flood
    assert any(d.startswith("127.0.0.9:") for d in dialed)  # and so are hints, in turn


def _buffered(node: RunningTransport) -> int:
    """Bytes aioquic holds for ``node``'s unauthenticated connections: out-of-order
    stream data waiting for its gap to fill."""
    assert node.node._endpoint is not None
    return sum(
        len(stream.receiver._buffer)
        for conn in node.node._endpoint.connections
        if not conn.authenticated
        for stream in conn.quic._streams.values()
    )


async def test_a_stranger_cannot_grow_its_receive_window_with_data_out_of_order(
    transports: Starter,
) -> None:
    """aioquic doubles a stream's and a connection's receive window whenever data reaches
    half of it, out of order included, and buffers the gap below it: a stranger that had
    completed the QUIC handshake could send one byte at the end of the window, get it
    doubled, and again, and make the node allocate gigabytes before it ever authenticated.
    Before authentication the window is small and does not move; the gap it can open is
    at most that."""
    _, nodes = await transports(2, transport=QUIET)
    _, b = nodes
    quic, protocol = await stranger(b.node.quic_address, "127.0.0.2")
    try:
        await asyncio.wait_for(protocol.wait_connected(), 5)
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, b"")
        stream = quic._streams[stream_id]
        largest = 0
        for _ in range(12):
            window = min(stream.max_stream_data_remote, quic._remote_max_data)
            if window - 1 < stream.sender.highest_offset:  # not raised: nothing to send
                break
            # one byte at the very end of the window, everything before it left out
            stream.sender._buffer = bytearray()
            stream.sender._buffer_start = stream.sender._buffer_stop = window - 1
            stream.sender.write(b"x")
            protocol.transmit()

            async def raised(w: int = window) -> bool:
                return min(stream.max_stream_data_remote, quic._remote_max_data) > w

            with contextlib.suppress(AssertionError):  # not raised: the loop ends above
                await eventually(raised, what="a larger window", timeout=0.5)
            largest = max(largest, _buffered(b))
        # the stranger did open a gap (the attack ran), and no larger than the window
        assert UNAUTHENTICATED_RECEIVE_WINDOW // 2 < largest <= UNAUTHENTICATED_RECEIVE_WINDOW
        assert min(stream.max_stream_data_remote, quic._remote_max_data) <= (
            UNAUTHENTICATED_RECEIVE_WINDOW
        )
    finally:
        protocol.close()


@contextlib.asynccontextmanager
async def stranger_at(
    transports: Starter,
) -> AsyncIterator[tuple[RunningTransport, QuicConnection, QuicConnectionProtocol]]:
    """A node (the second of two) and a stranger at 127.0.0.2 that completed the QUIC
    handshake with it; on exit, the node must hold no more connections than before."""
    _, nodes = await transports(2, transport=QUIET)
    _, b = nodes
    assert b.node._endpoint is not None
    before = len(b.node._endpoint.connections)
    quic, protocol = await stranger(b.node.quic_address, "127.0.0.2")
    try:
        await asyncio.wait_for(protocol.wait_connected(), 5)
        yield b, quic, protocol
        assert len(b.node._endpoint.connections) == before  # closed, nothing kept
    finally:
        protocol.close()


def send_every_second_byte(sender: Any, count: int) -> None:
    """Queue ``count`` one-byte frames on ``sender``, each after a one-byte gap."""
    base = sender._buffer_stop
    sender.write(b"\x00" * (2 * count))
    pending = RangeSet()
    for i in range(count):
        pending.add(base + 2 * i + 1, base + 2 * i + 2)
    sender._pending = pending


async def test_a_stranger_that_leaves_gaps_in_its_stream_is_closed(transports: Starter) -> None:
    """One-byte frames with a gap before each, within the 64-KiB window: aioquic kept them
    in a list it scanned from the front at every insertion (32,767 of them took 33 s of
    the event loop). More than 16 gaps before authentication is a fault: closed and
    counted, nothing kept."""
    async with stranger_at(transports) as (b, quic, protocol):
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, b"")
        send_every_second_byte(quic._streams[stream_id].sender, 40)
        protocol.transmit()
        await eventually(lambda: _has(b, "protocol_errors.stream_fragmented"), what="closed")


async def test_a_stranger_sending_an_ack_frame_of_many_ranges_is_closed_before_it_is_parsed(
    transports: Starter,
) -> None:
    """aioquic parsed an ACK frame's ranges into a list it inserted each at the front of:
    the 32,000 ranges of a 64-KB datagram cost 205 ms of CPU, and Initial packets, whose
    keys anyone can derive, may carry ACKs. More than MAX_ACK_RANGES close the
    connection before it is parsed, counted; fewer (aioquic's own ACKs) go on."""
    from aioquic.quic.packet import QuicFrameType
    from aioquic.tls import Epoch

    from services.transport.bounded_quic import MAX_ACK_RANGES

    async with stranger_at(transports) as (b, quic, protocol):
        ranges = MAX_ACK_RANGES + 1

        def crafted(builder: Any, space: Any, now: float) -> None:
            """An ACK frame of ``ranges`` one-packet ranges, one packet apart."""
            del quic._write_ack_frame  # once
            buf = builder.start_frame(QuicFrameType.ACK, capacity=2 * ranges + 16)
            buf.push_uint_var(4 * ranges)  # largest acknowledged
            buf.push_uint_var(0)  # ACK delay
            buf.push_uint_var(ranges - 1)  # ranges after the first
            buf.push_uint_var(0)  # the first range: one packet
            for _ in range(ranges - 1):
                buf.push_uint_var(0)  # gap: one packet
                buf.push_uint_var(0)  # range: one packet
            space.ack_at = None

        quic._write_ack_frame = crafted  # type: ignore[method-assign]
        quic._spaces[Epoch.ONE_RTT].ack_at = 0.0  # an ACK is due: ours goes out
        protocol.transmit()
        await eventually(lambda: _has(b, "protocol_errors.ack_ranges"), what="closed")


def send_pings(quic: QuicConnection, protocol: QuicConnectionProtocol, count: int) -> int:
    """Send one 1-RTT packet carrying ``count`` PING frames (one byte each); its number."""
    from aioquic.quic.packet import QuicFrameType

    write_ack = quic._write_ack_frame

    def crafted(builder: Any, space: Any, now: float) -> None:
        quic._write_ack_frame = write_ack  # type: ignore[method-assign]
        for _ in range(count):
            builder.start_frame(QuicFrameType.PING, capacity=1)
        space.ack_at = None

    quic._write_ack_frame = crafted  # type: ignore[method-assign]
    quic._spaces[Epoch.ONE_RTT].ack_at = 0.0  # an ACK is due: the crafted one goes out
    number = quic._packet_number
    protocol.transmit()
    return number


async def test_a_stranger_sending_a_packet_of_many_frames_is_closed(transports: Starter) -> None:
    """aioquic handles each frame with a Python call: one-byte PING frames cost it 1.2 ms
    of CPU per 1,350-byte packet (29.5 ms per 60,000-byte one), ten to twenty times what
    the same bytes cost as stream data, from anyone past the QUIC handshake. A packet of
    more than MAX_FRAMES_PER_PACKET frames closes the connection, counted; one of that
    many does not."""
    from services.transport.bounded_quic import MAX_FRAMES_PER_PACKET

    async with stranger_at(transports) as (b, quic, protocol):
        space = quic._spaces[Epoch.ONE_RTT]
        number = send_pings(quic, protocol, MAX_FRAMES_PER_PACKET - 1)  # and the ACK

        async def acknowledged() -> bool:
            return bool(space.largest_acked_packet >= number)

        await eventually(acknowledged, what="the node's ACK of the packet")
        assert await counter(b, "protocol_errors.frames") == 0
        assert quic._close_event is None
        send_pings(quic, protocol, MAX_FRAMES_PER_PACKET + 1)
        await eventually(lambda: _has(b, "protocol_errors.frames"), what="closed")


def coalesced_initials(packets: int, to: tuple[str, int] = ("127.0.0.1", 4433)) -> bytes:
    """One datagram of ``packets`` tiny Initial packets (a PING each) from a new client
    to ``to``: anyone can build them, since Initial keys derive from public values."""
    from aioquic.quic.packet import PACKET_TYPE_INITIAL, QuicFrameType
    from aioquic.quic.packet_builder import QuicPacketBuilder

    client = QuicConnection(configuration=stranger_config())
    client.connect(to, now=time.monotonic())
    assert client._version is not None
    builder = QuicPacketBuilder(
        host_cid=client.host_cid,
        peer_cid=client._peer_cid.cid,
        version=client._version,
        is_client=True,
        max_datagram_size=16_000,
    )
    for _ in range(packets):
        builder.start_packet(PACKET_TYPE_INITIAL, client._cryptos[Epoch.INITIAL])
        builder.start_frame(QuicFrameType.PING, capacity=1)
    [datagram], _ = builder.flush()
    return bytes(datagram)


async def test_a_datagram_of_many_coalesced_packets_is_dropped_before_decryption(
    transports: Starter,
) -> None:
    """Each long-header packet costs aioquic a header unprotection and a decryption, and
    anyone can build Initial packets: 200 tiny ones coalesced in a 16,000-byte datagram
    cost it 4 ms of CPU. More than MAX_COALESCED_PACKETS in one datagram are dropped
    unread, counted, and make no connection; an honest handshake coalesces at most four."""

    from services.transport.endpoint import MAX_COALESCED_PACKETS

    _, nodes = await transports(2, transport=QUIET)
    _, b = nodes
    assert b.node._endpoint is not None
    before = len(b.node._endpoint.connections)
    datagram = coalesced_initials(MAX_COALESCED_PACKETS + 1, to=b.node.quic_address)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.2", 0))
        sock.sendto(datagram, b.node.quic_address)
        await eventually(lambda: _has(b, "protocol_errors.coalesced_packets"), what="dropped")
    finally:
        sock.close()
    assert len(b.node._endpoint.connections) == before


def test_coalesced_packets_are_counted_from_their_headers() -> None:
    """MAX_COALESCED_PACKETS long-header packets pass, one more does not; a datagram that
    is not a sequence of long headers is left to aioquic."""

    from services.transport.endpoint import MAX_COALESCED_PACKETS, coalesces_too_many

    assert not coalesces_too_many(coalesced_initials(1), 8)
    assert not coalesces_too_many(coalesced_initials(MAX_COALESCED_PACKETS), 8)
    assert coalesces_too_many(coalesced_initials(MAX_COALESCED_PACKETS + 1), 8)
    assert not coalesces_too_many(b"\x40" + os.urandom(1300), 8)  # a short header
    assert not coalesces_too_many(coalesced_initials(2)[:60], 8)  # truncated: aioquic's to drop


async def test_a_stranger_that_leaves_gaps_in_its_tls_stream_is_closed(
    transports: Starter,
) -> None:
    """The TLS handshake's CRYPTO streams were kept in aioquic's front-scanned ranges too,
    up to 512 KiB of them, and Initial packets (keys anyone can derive) carry them. Their
    gaps count as a stream's: more than 16 before authentication close the connection."""
    from aioquic.tls import Epoch

    async with stranger_at(transports) as (b, quic, protocol):
        send_every_second_byte(quic._crypto_streams[Epoch.ONE_RTT].sender, 40)
        protocol.transmit()
        await eventually(lambda: _has(b, "protocol_errors.stream_fragmented"), what="closed")


async def test_a_stranger_cannot_make_a_tls_stream_buffer_past_its_bound(
    transports: Starter,
) -> None:
    """aioquic let a CRYPTO stream hold 512 KiB ahead of what TLS read: one byte at a high
    offset (one gap) allocated that much per connection, 32 MiB over the pending slots.
    A CRYPTO frame past MAX_PENDING_CRYPTO closes the connection, counted."""
    from aioquic.quic.rangeset import RangeSet
    from aioquic.tls import Epoch

    from services.transport.bounded_quic import MAX_PENDING_CRYPTO

    async with stranger_at(transports) as (b, quic, protocol):
        sender = quic._crypto_streams[Epoch.ONE_RTT].sender
        base = sender._buffer_stop
        sender.write(b"\x00" * (MAX_PENDING_CRYPTO + 1))
        pending = RangeSet()
        pending.add(base + MAX_PENDING_CRYPTO, base + MAX_PENDING_CRYPTO + 1)  # its last byte
        sender._pending = pending
        protocol.transmit()
        await eventually(lambda: _has(b, "protocol_errors.crypto_buffering"), what="closed")


async def test_a_datagram_larger_than_any_node_sends_is_dropped_unread(
    transports: Starter,
) -> None:
    """Up to 64 KiB were read and handed to aioquic; no node sends more than
    LARGE_LOOPBACK_DATAGRAM_BYTES on loopback (MAX_DATAGRAM_BYTES elsewhere), and the work
    of a larger one (its frames) only serves an attacker."""
    from services.transport.bounded_quic import LARGE_LOOPBACK_DATAGRAM_BYTES

    _, nodes = await transports(2, transport=QUIET)
    _, b = nodes
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.2", 0))
        sock.sendto(b"\xc0" + os.urandom(LARGE_LOOPBACK_DATAGRAM_BYTES), b.node.quic_address)
        await eventually(lambda: _has(b, "protocol_errors.oversized_datagram"), what="dropped")
        assert await counter(b, "protocol_errors.bad_initial") == 0  # never parsed
    finally:
        sock.close()
