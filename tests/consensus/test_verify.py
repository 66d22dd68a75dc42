"""The consensus service's signature verifier (services/consensus/verify.py) with real
ML-DSA-87: a message's vertices verified together keep each copy's own verdict, a copy
that comes twice is verified once, and verdicts are cached by the exact signed copy."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from cretoai.crypto import NodeKey, get_backend
from cretoai.v1 import vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from services.consensus.verify import VERTEX_BAD, VERTEX_OK, VERTEX_VERIFY_CPU, Verifier

_BACKEND = get_backend("cryptography")


def _key() -> NodeKey:
    return NodeKey(_BACKEND.private_key_from_seed(os.urandom(32)), Path("/unused"))


def _forged(vertex: vertex_pb2.Vertex) -> vertex_pb2.Vertex:
    """The same content under another (invalid) signature."""
    bad = vertex_pb2.Vertex()
    bad.CopyFrom(vertex)
    bad.signature = bytes(b ^ 0xFF for b in vertex.signature[:8]) + vertex.signature[8:]
    return bad


def _verify(verifier: Verifier, vertices: list[vertex_pb2.Vertex]) -> list[bool]:
    return asyncio.run(
        verifier.verify_vertices(
            vertices, [signed_digest(v) for v in vertices], [vertex_hash(v) for v in vertices]
        )
    )


def _counted() -> tuple[float, float]:
    return VERTEX_OK._value.get(), VERTEX_BAD._value.get()


def test_each_copy_keeps_its_own_verdict_in_a_batch() -> None:
    key = _key()
    good = [make_vertex(key, os.urandom(100), [], 1_000 + i) for i in range(5)]
    forged = _forged(good[2])  # same content as good[2], another signature
    verifier = Verifier(_BACKEND, threads=2)
    try:
        before = _counted()
        verdicts = _verify(verifier, [*good, forged, good[0]])
        after = _counted()
    finally:
        verifier.close()
    assert verdicts == [True, True, True, True, True, False, True]
    # good[0] came twice and was verified once: 5 good, 1 bad
    assert (after[0] - before[0], after[1] - before[1]) == (5, 1)


def test_verdicts_are_cached_by_the_signed_copy() -> None:
    key = _key()
    vertex = make_vertex(key, b"payload", [], 7)
    verifier = Verifier(_BACKEND, threads=2)
    try:
        assert _verify(verifier, [vertex]) == [True]
        before = _counted()
        # the valid copy is served from the cache; the forged copy of the same content
        # is not (a verdict is a function of the exact signed bytes)
        assert _verify(verifier, [vertex, _forged(vertex)]) == [True, False]
        after = _counted()
    finally:
        verifier.close()
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)


def test_more_vertices_than_threads_all_verified() -> None:
    keys = [_key(), _key()]
    vertices = [make_vertex(keys[i % 2], os.urandom(64), [], i) for i in range(9)]
    vertices[4] = _forged(vertices[4])
    verifier = Verifier(_BACKEND, threads=2)
    try:
        verdicts = _verify(verifier, vertices)
    finally:
        verifier.close()
    assert verdicts == [i != 4 for i in range(9)]


def test_the_cpu_spent_verifying_is_counted_in_every_thread() -> None:
    """The counter grows by the verifying threads' CPU time: more than nothing, no more
    than the whole process spent meanwhile; a cached verdict costs no verification."""
    key = _key()
    vertices = [make_vertex(key, os.urandom(64), [], i) for i in range(12)]
    lone = make_vertex(key, b"alone", [], 99)  # verified on the event loop
    verifier = Verifier(_BACKEND, threads=2)
    try:
        counted, spent = VERTEX_VERIFY_CPU._value.get(), time.process_time()
        assert _verify(verifier, vertices) == [True] * 12
        assert _verify(verifier, [lone]) == [True]
        counted_after, spent_after = VERTEX_VERIFY_CPU._value.get(), time.process_time()
        assert _verify(verifier, [*vertices, lone]) == [True] * 13  # all from the cache
        counted_cached = VERTEX_VERIFY_CPU._value.get()
    finally:
        verifier.close()
    verifying = counted_after - counted
    assert 0 < verifying <= spent_after - spent
    # 13 ML-DSA-87 verifications take well over a millisecond on any CPU this runs on
    assert verifying > 0.001
    assert counted_cached == counted_after
