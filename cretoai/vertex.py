"""Vertices: canonical encoding, hash, signature and shape checks.

Canonical encoding (big-endian), over which the hash and the signature are made::

    u32 len(payload) ‖ payload
    ‖ u32 count(parents) ‖ parent_1 ‖ … ‖ parent_k      (32 bytes each, in order)
    ‖ u32 len(creator) ‖ creator                        (ML-DSA-87 public key)
    ‖ u64 timestamp_ms

hash = SHA3-256("cretoai.v1.vertex\\0" ‖ canonical). The signature is
ML-DSA-87 over ``canonical`` with context string ``cretoai.v1.vertex``. The
signature is not part of the hash, so re-signing the same content cannot make a
second vertex (the DAG deduplicates by content). Height is derived, not signed: one
more than the highest parent's, 0 without parents.

Consensus orders *signed copies*, not contents: a copy is identified by
:func:`signed_digest`, which covers the signature too. Two copies of one content
with different signatures are two requests; whether a copy is valid is a function
of its exact bytes, never of another copy's verdict (docs/security.md).
"""

from __future__ import annotations

import hashlib
import struct

from cretoai.crypto.backend import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Backend
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import vertex_pb2

CONTEXT = b"cretoai.v1.vertex"
_HASH_DOMAIN = CONTEXT + b"\x00"
_SIGNED_DOMAIN = b"cretoai.v1.signed-vertex\x00"
HASH_SIZE = 32
#: What a client is told when a vertex's signature does not verify.
BAD_SIGNATURE_MESSAGE = (
    "the signature does not verify: ML-DSA-87 by public_key over the vertex's "
    "canonical encoding, context 'cretoai.v1.vertex'"
)
MAX_PARENTS = 64
#: The largest payload any node accepts in a vertex (a protocol constant, the same on
#: every node, so that validity at execution is deterministic; gateways may accept less).
PROTOCOL_MAX_PAYLOAD_BYTES = 1_048_576


_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def canonical_bytes(vertex: vertex_pb2.Vertex) -> bytes:
    # each field read once: a protobuf bytes field is copied out at every read
    payload, parents, creator = vertex.payload, vertex.parents, vertex.creator
    return b"".join(
        (
            _U32.pack(len(payload)),
            payload,
            _U32.pack(len(parents)),
            *parents,
            _U32.pack(len(creator)),
            creator,
            _U64.pack(vertex.timestamp_ms),
        )
    )


def vertex_hash(vertex: vertex_pb2.Vertex) -> bytes:
    return hash_of_canonical(canonical_bytes(vertex))


def hash_of_canonical(canonical: bytes) -> bytes:
    """:func:`vertex_hash` of the vertex whose canonical encoding is ``canonical``."""
    return hashlib.sha3_256(_HASH_DOMAIN + canonical).digest()


def signed_digest_of_canonical(canonical: bytes, signature: bytes) -> bytes:
    """:func:`signed_digest` of the copy whose canonical encoding is ``canonical``.

    One concatenation, then one hash: measured faster than feeding the hash the parts
    (each ``update`` of a few KB releases and takes back the GIL)."""
    return hashlib.sha3_256(
        _SIGNED_DOMAIN + canonical + struct.pack(">I", len(signature)) + signature
    ).digest()


def signed_digest(vertex: vertex_pb2.Vertex) -> bytes:
    """The identity of one signed copy of a vertex: its content and its signature.

    SHA3-256("cretoai.v1.signed-vertex\\0" ‖ canonical ‖ u32 len(signature) ‖ signature).
    Consensus batches and signature verdicts are keyed by it.
    """
    return signed_digest_of_canonical(canonical_bytes(vertex), vertex.signature)


def hash_and_signed_digest(vertex: vertex_pb2.Vertex) -> tuple[bytes, bytes]:
    """``(vertex_hash(vertex), signed_digest(vertex))`` with the canonical encoding built
    once: where both are needed (storage checks each executed copy against both)."""
    canonical = canonical_bytes(vertex)
    return hash_of_canonical(canonical), signed_digest_of_canonical(canonical, vertex.signature)


def make_vertex(
    key: NodeKey, payload: bytes, parents: list[bytes], timestamp_ms: int
) -> vertex_pb2.Vertex:
    """A vertex signed by ``key``."""
    vertex = vertex_pb2.Vertex(
        payload=payload, parents=parents, creator=key.public_key, timestamp_ms=timestamp_ms
    )
    vertex.signature = key.sign(canonical_bytes(vertex), context=CONTEXT)
    return vertex


def shape_error(vertex: vertex_pb2.Vertex, *, max_payload_bytes: int) -> str | None:
    """Why ``vertex`` is malformed (a stateless check), or None when its shape is fine."""
    if len(vertex.payload) > max_payload_bytes:
        return f"payload is {len(vertex.payload)} bytes; the limit is {max_payload_bytes}"
    if len(vertex.parents) > MAX_PARENTS:
        return f"{len(vertex.parents)} parents; the limit is {MAX_PARENTS}"
    for i, parent in enumerate(vertex.parents):
        if len(parent) != HASH_SIZE:
            return f"parents[{i}] is {len(parent)} bytes; a vertex hash is {HASH_SIZE}"
    if len(set(vertex.parents)) != len(vertex.parents):
        return "duplicate parent"
    if len(vertex.creator) != PUBLIC_KEY_SIZE:
        return f"creator is {len(vertex.creator)} bytes; an ML-DSA-87 key is {PUBLIC_KEY_SIZE}"
    if len(vertex.signature) != SIGNATURE_SIZE:
        return f"signature is {len(vertex.signature)} bytes; ML-DSA-87 is {SIGNATURE_SIZE}"
    return None


def verify_vertex(vertex: vertex_pb2.Vertex, backend: Backend) -> bool:
    return backend.verify(
        vertex.creator, canonical_bytes(vertex), vertex.signature, context=CONTEXT
    )
