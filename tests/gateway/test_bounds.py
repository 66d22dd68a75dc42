"""Submissions counted before they are parsed (services/gateway/bounds.py).

An audit (2026-12-04): a 4-MiB SubmitVertices of 2.1 million empty vertices was
parsed whole before the 256-vertex check (four at once took the gateway from 93 to
838 MB), and a 4-MiB REST batch of 1.4 million ``{}`` held the event loop 339 ms.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cretoai.serving import RequestRefused
from cretoai.v1 import gateway_pb2, vertex_pb2
from cretoai.vertex import MAX_PARENTS
from devkit.wire import varint
from services.gateway import bounds
from services.gateway.core import MAX_BATCH_VERTICES
from tests.gateway.support import TIMEOUT, Node

#: Just under the gateway's request limit: 2 bytes an (empty) vertex or parent.
BOMB_BYTES = 3 * 1024 * 1024


def batch(vertices: int, parents: int = 1) -> gateway_pb2.GatewaySubmitBatchRequest:
    return gateway_pb2.GatewaySubmitBatchRequest(
        vertices=[
            vertex_pb2.Vertex(payload=b"p%d" % i, parents=[bytes(32)] * parents)
            for i in range(vertices)
        ],
        wait=True,
    )


def test_requests_within_the_bounds_parse_as_protobuf_parses_them() -> None:
    for request in (batch(3, parents=2), batch(MAX_BATCH_VERTICES), batch(1, MAX_PARENTS)):
        raw = request.SerializeToString()
        assert bounds.submit_batch_request(raw, MAX_BATCH_VERTICES) == request
    single = gateway_pb2.GatewaySubmitRequest(vertex=batch(1, MAX_PARENTS).vertices[0])
    assert bounds.submit_request(single.SerializeToString()) == single
    with pytest.raises(RequestRefused, match="truncated"):  # not protobuf: refused too
        bounds.submit_batch_request(b"\x0a\xff", MAX_BATCH_VERTICES)


def test_a_group_cannot_hide_a_bomb_from_the_walk() -> None:
    """A review (2026-12-04): an empty group (field 15, wire types 3 and 4) in front of
    2 million empty vertices made the walk hand the whole request to the parser, which
    skips groups as unknown fields and built them all; inside a vertex, the same let
    1,000 parents through."""
    group = b"\x7b\x7c"
    with pytest.raises(RequestRefused, match="wire type 3"):
        bounds.submit_batch_request(group + b"\x0a\x00" * 100_000, MAX_BATCH_VERTICES)
    vertex = group + b"\x12\x00" * 1_000
    with pytest.raises(RequestRefused, match="wire type 3"):
        bounds.submit_request(b"\x0a" + varint(len(vertex)) + vertex)


def test_too_many_vertices_or_parents_are_refused_before_they_are_built() -> None:
    with pytest.raises(RequestRefused, match="257 of them or more; at most 256"):
        bounds.submit_batch_request(batch(257).SerializeToString(), MAX_BATCH_VERTICES)
    with pytest.raises(RequestRefused, match=r"vertices\[0\]: 65 parents; the limit is 64"):
        bounds.submit_batch_request(batch(1, 65).SerializeToString(), MAX_BATCH_VERTICES)
    with pytest.raises(RequestRefused, match="more than 272 fields"):
        bounds.submit_batch_request(b"\x0a\x00" * (BOMB_BYTES // 2), MAX_BATCH_VERTICES)
    parents_bomb = b"\x0a" + varint(BOMB_BYTES) + b"\x12\x00" * (BOMB_BYTES // 2)
    with pytest.raises(RequestRefused, match="vertex: more than 81 fields"):
        bounds.submit_request(parents_bomb)
    twice = gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"x"))
    with pytest.raises(RequestRefused, match="vertex: sent 2 times"):
        bounds.submit_request(twice.SerializeToString() * 2)


def assert_bad_request(status: int, reply: dict[str, Any], needle: str) -> None:
    assert (status, reply["error"]["code"]) == (400, "bad_request"), reply
    assert needle in reply["error"]["message"], reply


async def test_a_grpc_batch_of_millions_of_empty_vertices_is_refused_as_invalid(
    node: Node,
) -> None:
    call = node.channel.unary_unary(
        "/cretoai.v1.Gateway/SubmitVertices",
        request_serializer=None,
        response_deserializer=gateway_pb2.GatewaySubmitBatchResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\x0a\x00" * (BOMB_BYTES // 2), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request (at most 256 vertices): more than 272 fields" in str(refused.value.details())
    single = node.channel.unary_unary(
        "/cretoai.v1.Gateway/SubmitVertex",
        request_serializer=None,
        response_deserializer=gateway_pb2.GatewaySubmitResponse.FromString,
    )
    parents_bomb = b"\x0a" + varint(BOMB_BYTES) + b"\x12\x00" * (BOMB_BYTES // 2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await single(parents_bomb, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "vertex: more than 81 fields" in str(refused.value.details())
    assert node.consensus.submissions == []
    # an honest batch still goes through the bounded parser
    reply = await node.stub.SubmitVertices(batch(2, parents=0), timeout=TIMEOUT)
    assert len(reply.results) == 2 and all(r.hash for r in reply.results)


async def test_a_rest_batch_of_millions_of_json_values_is_refused_before_it_is_parsed(
    node: Node,
) -> None:
    bomb = b'{"vertices": [' + b",".join([b"{}"] * (BOMB_BYTES // 3)) + b"]}"
    status, reply = await node.post(
        "/v1/vertices:batch", data=bomb, headers={"Content-Type": "application/json"}
    )
    assert_bad_request(status, reply, "the body holds more JSON values than 256 vertices can")
    parents = b'{"payload": "", "parents": [' + b",".join([b'""'] * 1_000_000) + b"]}"
    status, reply = await node.post(
        "/v1/vertices:batch",
        data=b'{"vertices": [' + parents + b"]}",
        headers={"Content-Type": "application/json"},
    )
    assert_bad_request(status, reply, "(1000000 commas, at most 20496)")
    single = b'{"payload": "", "parents": [' + b",".join([b"{}"] * 300_000) + b"]}"
    status, reply = await node.post(
        "/v1/vertices", data=single, headers={"Content-Type": "application/json"}
    )
    assert_bad_request(status, reply, "the body holds 300001 JSON objects; a vertex is one")
    assert node.consensus.submissions == []
