"""An envelope's request bodies parsed once: what the driver's checks take from decoding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cretoai.crypto import load_private_key, write_keypair
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import pbft_pb2, vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from services.consensus.core.codec import DecodeError, envelope_from_pb
from services.consensus.core.messages import RequestsEnvelope
from services.consensus.driver import _Bodies, request_hash


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> NodeKey:
    path, _ = write_keypair(Path(tmp_path_factory.mktemp("key")))
    return load_private_key(path)


def test_each_request_keeps_its_own_vertex_and_content_hash(key: NodeKey) -> None:
    # two copies of one content (signed twice: ML-DSA is randomized) and another vertex
    first = make_vertex(key, b"one", [os.urandom(32)], 1000)
    resigned = make_vertex(key, b"one", list(first.parents), 1000)
    other = make_vertex(key, b"two", [], 1001)
    assert first.signature != resigned.signature
    pb = pbft_pb2.ConsensusEnvelope(
        requests=pbft_pb2.Requests(
            bodies=[v.SerializeToString() for v in (first, resigned, other, first)]
        )
    )
    bodies = _Bodies()
    env = envelope_from_pb(pb, request_hash=bodies.request_hash)
    assert isinstance(env, RequestsEnvelope)
    expected = [first, resigned, other, first]
    assert [r.hash for r in env.requests] == [signed_digest(v) for v in expected]
    assert [r.hash for r in env.requests] == [request_hash(r.body) for r in env.requests]
    # in any order and any subset, each request gets its own copy's vertex and content
    picked = [env.requests[2], env.requests[1], env.requests[0]]
    vertices, contents = bodies.vertices_and_contents(picked)
    assert vertices == [other, resigned, first]
    assert [v.signature for v in vertices] == [other.signature, resigned.signature, first.signature]
    assert contents == [vertex_hash(other), vertex_hash(first), vertex_hash(first)]
    assert contents[0] != contents[1]


def test_a_body_that_is_not_its_vertexs_canonical_encoding_is_refused(key: NodeKey) -> None:
    vertex = make_vertex(key, b"payload", [], 1000)
    padded = vertex.SerializeToString() + vertex_pb2.Vertex(timestamp_ms=1000).SerializeToString()
    pb = pbft_pb2.ConsensusEnvelope(requests=pbft_pb2.Requests(bodies=[padded]))
    bodies = _Bodies()
    with pytest.raises(DecodeError, match="canonical encoding"):
        envelope_from_pb(pb, request_hash=bodies.request_hash)
    with pytest.raises(ValueError, match="not a vertex"):
        bodies.request_hash(b"\xff\xff")
