"""Vertex canonical encoding, hash and signature."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cretoai.crypto import get_backend, load_private_key, write_keypair
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import vertex_pb2
from cretoai.vertex import make_vertex, shape_error, verify_vertex, vertex_hash


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> NodeKey:
    path, _ = write_keypair(Path(tmp_path_factory.mktemp("key")))
    return load_private_key(path)


def test_hash_covers_every_signed_field(key: NodeKey) -> None:
    parent = os.urandom(32)
    base = make_vertex(key, b"payload", [parent], 1000)
    digest = vertex_hash(base)
    assert len(digest) == 32
    variants: list[dict[str, object]] = [
        dict(payload=b"payloaD"),
        dict(parents=[os.urandom(32)]),
        dict(parents=[]),
        dict(timestamp_ms=1001),
        dict(creator=os.urandom(2592)),
    ]
    for change in variants:
        other = vertex_pb2.Vertex()
        other.CopyFrom(base)
        for field, value in change.items():
            if field == "parents":
                del other.parents[:]
                other.parents.extend(value)  # type: ignore[arg-type]
            else:
                setattr(other, field, value)
        assert vertex_hash(other) != digest, change
    resigned = make_vertex(key, b"payload", [parent], 1000)
    assert vertex_hash(resigned) == digest, "the signature is not part of the hash"


def test_signature_verifies_and_detects_tampering(key: NodeKey) -> None:
    backend = get_backend("cryptography")
    vertex = make_vertex(key, b"x" * 1024, [], 5)
    assert verify_vertex(vertex, backend)
    vertex.payload = b"y" * 1024
    assert not verify_vertex(vertex, backend)


def test_shape_errors(key: NodeKey) -> None:
    good = make_vertex(key, b"p", [os.urandom(32)], 1)
    assert shape_error(good, max_payload_bytes=10) is None
    assert "payload" in (shape_error(good, max_payload_bytes=0) or "")
    bad = vertex_pb2.Vertex()
    bad.CopyFrom(good)
    bad.parents.append(b"short")
    assert "parents[1]" in (shape_error(bad, max_payload_bytes=10) or "")
    bad.CopyFrom(good)
    bad.parents.append(good.parents[0])
    assert shape_error(bad, max_payload_bytes=10) == "duplicate parent"
    bad.CopyFrom(good)
    bad.signature = b"s"
    assert "signature" in (shape_error(bad, max_payload_bytes=10) or "")
    bad.CopyFrom(good)
    bad.creator = b"c"
    assert "creator" in (shape_error(bad, max_payload_bytes=10) or "")
