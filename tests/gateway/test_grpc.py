"""The public gRPC API (cretoai.v1.Gateway) over real gRPC, and its reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from cretoai.config import NodeConfig
from cretoai.serving import PerClientLimitInterceptor
from cretoai.v1 import consensus_pb2, gateway_pb2, vertex_pb2
from cretoai.vertex import vertex_hash
from services.gateway.grpc_api import client_address
from tests.gateway.support import (
    FINALIZED,
    PENDING,
    TIMEOUT,
    Node,
    client_key,
    raw_vertex,
    signed_body,
    start_node,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def grpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_submit_and_get_vertex(node: Node) -> None:
    reply = await node.stub.SubmitVertex(
        gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"g")), timeout=TIMEOUT
    )
    assert reply.status == PENDING and not reply.HasField("record")
    [vertex] = node.consensus.submissions
    assert reply.hash == vertex_hash(vertex) and vertex.creator == node.submitter_key.public_key
    record = await node.stub.GetVertex(
        gateway_pb2.GatewayGetVertexRequest(hash=reply.hash), timeout=TIMEOUT
    )
    assert record.status == PENDING and record.vertex == vertex
    await node.consensus.finalize_pending()
    record = await node.stub.GetVertex(
        gateway_pb2.GatewayGetVertexRequest(hash=reply.hash), timeout=TIMEOUT
    )
    assert (record.status, record.seq, record.certificate.seq) == (FINALIZED, 1, 1)


async def test_submit_client_signed_and_wait(node: Node) -> None:
    _, vertex = signed_body(client_key(), b"signed")
    call = node.stub.SubmitVertex(
        gateway_pb2.GatewaySubmitRequest(vertex=vertex, wait=True), timeout=TIMEOUT
    )
    waiting = asyncio.ensure_future(call)
    await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
    assert node.consensus.submissions == [vertex]
    await node.consensus.finalize_pending()
    reply = await waiting
    assert reply.status == FINALIZED and reply.record.seq == 1
    assert reply.record.vertex == vertex and reply.hash == vertex_hash(vertex)


async def test_errors_have_grpc_status_codes(node: Node) -> None:
    _, vertex = signed_body(client_key(), b"signed")
    vertex.payload = b"tampered"
    cases = [
        (vertex, INVALID, "bad_signature: "),
        (vertex_pb2.Vertex(creator=b"k"), INVALID, "partial_signature: "),
        (vertex_pb2.Vertex(timestamp_ms=5), INVALID, "partial_signature: "),
        (vertex_pb2.Vertex(parents=[b"\x01" * 32]), PRECONDITION, "unknown_parent: "),
        (vertex_pb2.Vertex(parents=[b"\x01"]), INVALID, "invalid_vertex: "),
    ]
    for bad, code, prefix in cases:
        exc = await grpc_error(
            node.stub.SubmitVertex(gateway_pb2.GatewaySubmitRequest(vertex=bad), timeout=TIMEOUT)
        )
        assert exc.code() == code and (exc.details() or "").startswith(prefix), exc
    # no vertex at all is a client's bug, not an empty node-signed vertex (that is vertex {})
    exc = await grpc_error(
        node.stub.SubmitVertex(gateway_pb2.GatewaySubmitRequest(), timeout=TIMEOUT)
    )
    assert exc.code() == INVALID and (exc.details() or "").startswith("bad_request: vertex"), exc
    assert node.consensus.submissions == []
    node.consensus.submit_error = grpc.StatusCode.RESOURCE_EXHAUSTED
    exc = await grpc_error(
        node.stub.SubmitVertex(
            gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex()), timeout=TIMEOUT
        )
    )
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for h, code in (
        (b"\x02" * 32, grpc.StatusCode.NOT_FOUND),
        (b"x", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        exc = await grpc_error(
            node.stub.GetVertex(gateway_pb2.GatewayGetVertexRequest(hash=h), timeout=TIMEOUT)
        )
        assert exc.code() == code


async def test_wait_deadline(make_config: Callable[..., NodeConfig]) -> None:
    async with start_node(make_config(wait_timeout_ms=200)) as node:
        exc = await grpc_error(
            node.stub.SubmitVertex(
                gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(), wait=True),
                timeout=TIMEOUT,
            )
        )
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (exc.details() or "").startswith("wait_timeout: ")


async def test_get_status(node: Node) -> None:
    status = await node.stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=TIMEOUT)
    assert (status.node_id, status.view, status.ready) == ("fake-node-id", 3, True)
    await node.stop_consensus()
    exc = await grpc_error(node.stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=TIMEOUT))
    assert exc.code() == grpc.StatusCode.UNAVAILABLE


async def test_watch_finalized_replays_then_follows(node: Node) -> None:
    first = await node.consensus.finalize([vertex_pb2.Vertex(payload=b"a")])
    call = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=0))
    try:
        got = await asyncio.wait_for(call.read(), TIMEOUT)
        assert got == first
        second = await node.consensus.finalize([vertex_pb2.Vertex(payload=b"b")])
        assert await asyncio.wait_for(call.read(), TIMEOUT) == second
    finally:
        call.cancel()


async def test_reflection_lists_the_gateway_service(node: Node) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)
    [reply] = [r async for r in call]
    names = {s.name for s in reply.list_services_response.service}
    assert {"cretoai.v1.Gateway", "grpc.health.v1.Health"} <= names
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="cretoai.v1.Gateway")
    [reply] = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)]
    assert reply.file_descriptor_response.file_descriptor_proto


def overflows(api: str) -> float:
    value = REGISTRY.get_sample_value("cretoai_gateway_stream_overflows_total", {"api": api})
    return value or 0.0


async def test_slow_watcher_gets_resource_exhausted(make_config: Callable[..., NodeConfig]) -> None:
    async with start_node(make_config(stream_buffer_bytes=256 * 1024)) as node:
        before = overflows("grpc")
        call = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1))
        await node.consensus.finalize([vertex_pb2.Vertex(payload=b"first")])
        assert (await asyncio.wait_for(call.read(), TIMEOUT)).seq == 1  # then it stops reading
        payload = os.urandom(200_000)
        for _ in range(300):  # HTTP/2 flow control, then the subscriber's buffer fill up
            await node.consensus.finalize([raw_vertex(payload)])
            if overflows("grpc") > before:
                break
        assert overflows("grpc") == before + 1
        seqs = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                batch = await asyncio.wait_for(call.read(), TIMEOUT)
                seqs.append(batch.seq)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = caught.value.details() or ""
        assert details.startswith("slow consumer; resume with from_seq=")
        assert seqs == list(range(2, len(seqs) + 2))
        assert int(details.rsplit("=", 1)[1]) == len(seqs) + 2


async def test_waiting_submissions_hold_a_bounded_number_of_bytes(
    make_config: Callable[..., NodeConfig],
) -> None:
    """A submission waiting for finality holds its message's bytes against
    ``gateway.max_request_bytes_in_progress`` (shared with REST): one more that would
    exceed it gets RESOURCE_EXHAUSTED at once, and the bytes come back with the answer."""
    async with start_node(make_config(max_request_bytes_in_progress=150_000)) as node:
        big = gateway_pb2.GatewaySubmitRequest(
            vertex=vertex_pb2.Vertex(payload=os.urandom(100_000)), wait=True
        )
        waiting = asyncio.ensure_future(node.stub.SubmitVertex(big, timeout=TIMEOUT))
        await node.consensus.wait_for(lambda: len(node.consensus.pending) == 1)
        held = REGISTRY.get_sample_value("cretoai_gateway_request_bytes_in_progress")
        assert held == big.ByteSize()
        another = gateway_pb2.GatewaySubmitBatchRequest(
            vertices=[vertex_pb2.Vertex(payload=os.urandom(60_000))]
        )
        error = await grpc_error(node.stub.SubmitVertices(another, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_request_bytes_in_progress" in (error.details() or "")
        # this client used its share (a quarter): even a small one is refused; another
        # client's (REST, another address: the budget is shared) still fits beside it
        small = gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"small"))
        error = await grpc_error(node.stub.SubmitVertex(small, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "from your address" in (error.details() or "")
        status, _ = await node.post_from("127.0.0.2", "/v1/vertices", {"payload": "c21hbGw="})
        assert status == 202
        await node.consensus.finalize_pending()
        assert (await waiting).status == FINALIZED
        assert REGISTRY.get_sample_value("cretoai_gateway_request_bytes_in_progress") == 0
        assert len(node.consensus.submissions) == 2  # the refused ones never reached consensus
        reply = await node.stub.SubmitVertices(another, timeout=TIMEOUT)
        assert reply.results[0].status == PENDING


async def test_a_request_over_the_limit_is_refused_before_any_handler(
    make_config: Callable[..., NodeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC reads a whole message before a handler runs: the server's receive limit is
    the API's (a batch body), not the 16 MiB of the internal services. The handler,
    which runs on the call's arrival (ArrivalInterceptor), finds no message and logs
    nothing: a review (2026-12-04) saw an error with a traceback per such call."""
    async with start_node(make_config(max_body_bytes=16_384)) as node:
        limit = node.gateway.rest.max_batch_body
        assert limit == 65_536
        fits = gateway_pb2.GatewaySubmitBatchRequest(
            vertices=[vertex_pb2.Vertex(payload=os.urandom(8_000)) for _ in range(7)]
        )
        assert fits.ByteSize() <= limit
        reply = await node.stub.SubmitVertices(fits, timeout=TIMEOUT)
        assert [r.status for r in reply.results] == [PENDING] * 7
        over = gateway_pb2.GatewaySubmitBatchRequest(
            vertices=[vertex_pb2.Vertex(payload=os.urandom(8_000)) for _ in range(9)]
        )
        assert over.ByteSize() > limit
        error = await grpc_error(node.stub.SubmitVertices(over, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (error.details() or "")
        assert len(node.consensus.submissions) == 7  # the refused one never got further
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_calls_beyond_the_concurrency_bound_are_refused_at_once(
    make_config: Callable[..., NodeConfig],
) -> None:
    """``gateway.grpc_max_concurrent_rpcs`` calls are handled at once (waiting ones
    included); one more gets RESOURCE_EXHAUSTED before its message is read, and a slot
    is free again once a call is answered."""
    async with start_node(make_config(grpc_max_concurrent_rpcs=2)) as node:
        waiting = [
            asyncio.ensure_future(
                node.stub.SubmitVertex(
                    gateway_pb2.GatewaySubmitRequest(
                        vertex=vertex_pb2.Vertex(payload=b"wait %d" % i), wait=True
                    ),
                    timeout=TIMEOUT,
                )
            )
            for i in range(2)
        ]
        await node.consensus.wait_for(lambda: len(node.consensus.pending) == 2)
        third = gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"third"))
        error = await grpc_error(node.stub.SubmitVertex(third, timeout=TIMEOUT))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(node.consensus.submissions) == 2
        await node.consensus.finalize_pending()
        assert [(await call).status for call in waiting] == [FINALIZED, FINALIZED]
        assert (await node.stub.SubmitVertex(third, timeout=TIMEOUT)).status == PENDING


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::/64"),
        ("ipv6:%5B::1%5D:5000", "::/64"),
        # one host can hold a whole /64: its addresses count as one client
        ("ipv6:[2001:db8:1:2::1]:5000", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]:5000", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:3::1]:5000", "2001:db8:1:3::/64"),
        ("ipv6:[::ffff:127.0.0.2]:5000", "127.0.0.2"),  # an IPv4 client on a dual stack
        ("unix:/run/gateway.sock", "unix:/run/gateway.sock"),
    ],
)
def test_per_client_limits_count_by_the_peer_address(peer: str, client: str) -> None:
    """The address gRPC reports a call's peer by, as the REST side counts it."""
    assert client_address(peer) == client


def calls_refused() -> float:
    value = REGISTRY.get_sample_value(
        "cretoai_gateway_grpc_calls_refused_total", {"limit": "per_client"}
    )
    return value or 0.0


async def test_one_client_cannot_hold_every_call_slot(
    make_config: Callable[..., NodeConfig],
) -> None:
    """The server takes ``grpc_max_concurrent_rpcs`` calls at once (32), and calls that
    wait (streams, submissions waiting for finality) could all be one client's: then no
    other client got in. One client's calls in progress are bounded at
    ``grpc_max_concurrent_rpcs_per_client``; one more is RESOURCE_EXHAUSTED at once,
    counted, and once one of its calls ends it is served again. Health counts apart."""
    cfg = make_config(grpc_max_concurrent_rpcs_per_client=3, max_streams_per_client=4)
    async with start_node(cfg) as node:
        first = await node.consensus.finalize([vertex_pb2.Vertex(payload=b"a")])
        streams = []
        for _ in range(3):  # in progress: each has answered its first batch
            call = node.stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=0))
            streams.append(call)
            assert await asyncio.wait_for(call.read(), TIMEOUT) == first
        try:
            before = calls_refused()
            error = await grpc_error(
                node.stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=TIMEOUT)
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "this client has 3 calls in progress" in (error.details() or "")
            assert "gateway.grpc_max_concurrent_rpcs_per_client" in (error.details() or "")
            assert calls_refused() == before + 1
            health = health_pb2_grpc.HealthStub(node.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # health counts apart, and at most PLUMBING_PER_CLIENT of it at once: 40
            # Watch streams from one client took every call slot (audit, 2026-12-04)
            watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(4)]
            for watch in watches:
                assert (await asyncio.wait_for(watch.read(), TIMEOUT)).status == (
                    health_pb2.HealthCheckResponse.SERVING
                )
            error = await grpc_error(health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "4 health or reflection calls in progress" in (error.details() or "")
            watches.pop().cancel()
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while True:  # the cancelled Watch gives its place back
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert asyncio.get_running_loop().time() < deadline, "the Watch kept it"
                    await asyncio.sleep(0.02)
            for watch in watches:
                watch.cancel()
            streams.pop().cancel()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while True:  # the cancelled stream's handler ends soon after: then a slot is free
                try:
                    await node.stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=TIMEOUT)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert loop.time() < deadline, "the cancelled stream kept its slot"
                    await asyncio.sleep(0.02)
        finally:
            for call in streams:
                call.cancel()


async def test_a_connection_resetting_streams_as_fast_as_it_opens_them_locks_nobody_out(
    node: Node,
) -> None:
    """HTTP/2 "rapid reset": one anonymous connection opening gRPC streams and cancelling
    each at once (tens of thousands a second) got every other client's calls CANCELLED
    for as long as it went on; the streams never reached the per-client limits (audit,
    2026-12-04). The public server now bounds a connection's concurrent streams."""
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devkit.h2flood",
        "--host",
        "127.0.0.1",
        "--port",
        str(node.gateway.port),
        "--seconds",
        "8",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(1.0)  # the flood is under way
        codes = []
        for _ in range(5):
            try:
                await node.stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=3)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        assert flood.returncode is None  # measured while the flood went on
        assert codes == [grpc.StatusCode.OK] * 5
        out, _ = await asyncio.wait_for(flood.communicate(), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            flood.kill()
    opened = int(out.split()[1])
    assert opened >= 10_000, out  # a flood indeed


async def test_calls_whose_message_never_comes_are_counted_at_once_and_end(
    make_config: Callable[..., NodeConfig],
) -> None:
    """An audit (2026-12-04): calls that send their headers and never their message
    held every call slot of the public server (health checks included) from one
    address, uncounted by its per-client limit (counted in the handler, which ran once
    the message came) and never ended. Now the handler runs at arrival: a client's
    calls past its limit are refused at once, and a missing message ends its call
    (DEADLINE_EXCEEDED) after gateway.body_timeout_ms."""
    async with start_node(
        make_config(grpc_max_concurrent_rpcs_per_client=2, body_timeout_ms=1500)
    ) as node:
        never = asyncio.Event()

        async def no_message() -> Any:
            await never.wait()
            yield gateway_pb2.GatewayGetVertexRequest()  # pragma: no cover

        stall = node.channel.stream_unary(
            "/cretoai.v1.Gateway/GetVertex",
            request_serializer=gateway_pb2.GatewayGetVertexRequest.SerializeToString,
            response_deserializer=vertex_pb2.VertexRecord.FromString,
        )
        held = [stall(no_message(), timeout=TIMEOUT) for _ in range(2)]
        [limiter] = [
            i for i in node.gateway.interceptors if isinstance(i, PerClientLimitInterceptor)
        ]
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while sum(limiter.in_progress.values()) < 2:  # both counted, before any message
            assert asyncio.get_running_loop().time() < deadline, "never counted"
            await asyncio.sleep(0.01)
        third = await grpc_error(stall(no_message(), timeout=TIMEOUT))
        assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # counted on arrival
        health = health_pb2_grpc.HealthStub(node.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for call in held:
            error = await grpc_error(call)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "did not arrive within 1.5 s" in (error.details() or "")
        status = await node.stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=TIMEOUT)
        assert status.node_id  # the slots are free again
