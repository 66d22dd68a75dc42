"""Stateless checks of requests; each failure is an :class:`InvalidArgument` with a clear message.

What needs the database (a seq gap, an unknown parent) is checked by the store.
"""

from __future__ import annotations

from collections.abc import Sequence

from cretoai.v1 import pbft_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import vertex_hash
from services.storage.errors import InvalidArgument
from services.storage.keys import HASH_SIZE

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_KEYS = 1024
MAX_STATE_KEY_BYTES = 1024
MAX_STATE_OPS = 10_000
MAX_REASON_BYTES = 1024
MAX_KIND_BYTES = 128


def check_hash(value: bytes, what: str) -> bytes:
    if len(value) != HASH_SIZE:
        raise InvalidArgument(f"{what}: {len(value)} bytes; a vertex hash is {HASH_SIZE} bytes")
    return value


def check_optional_hash(value: bytes, what: str) -> bytes | None:
    return check_hash(value, what) if value else None


def limit_of(value: int, what: str = "limit") -> int:
    """``0`` means the default; more than the maximum is refused (not silently capped)."""
    if value == 0:
        return DEFAULT_LIMIT
    if value > MAX_LIMIT:
        raise InvalidArgument(f"{what}: {value} exceeds the maximum {MAX_LIMIT}")
    return value


def check_commit(request: storage_pb2.CommitBatchRequest) -> None:
    """The shape of a CommitBatch request and each result's hash (the vertex hash of its
    vertex), on one thread: :func:`check_commit_shape` and :func:`check_result_hashes`.
    The service runs the second on :class:`services.storage.certify.Certifier`'s threads,
    with the proof of finality."""
    check_commit_shape(request)
    check_result_hashes(request.results, request.batch.vertices)


def check_result_hashes(
    results: Sequence[storage_pb2.ExecutionResult], vertices: Sequence[vertex_pb2.Vertex]
) -> None:
    """Each result names its vertex by the vertex's hash (``results[i]`` for ``vertices[i]``)."""
    for i, (result, vertex) in enumerate(zip(results, vertices, strict=True)):
        if vertex_hash(vertex) != result.hash:
            raise InvalidArgument(hash_mismatch(i))


def hash_mismatch(index: int) -> str:
    return f"results[{index}].hash: not the hash of batch.vertices[{index}]"


def check_commit_shape(request: storage_pb2.CommitBatchRequest) -> None:
    """The shape of a CommitBatch request, without hashing anything. The results' hashes
    and the proof of finality (the certificate, and the digest of the vertices) are
    checked next, by :mod:`services.storage.certify`."""
    if not request.HasField("batch"):
        raise InvalidArgument("batch: missing")
    batch = request.batch
    if batch.seq == 0:
        raise InvalidArgument("batch.seq: 0; sequence numbers start at 1")
    if len(batch.batch_digest) != HASH_SIZE:
        raise InvalidArgument(
            f"batch.batch_digest: {len(batch.batch_digest)} bytes; a digest is {HASH_SIZE} bytes"
        )
    if len(request.results) != len(batch.vertices):
        raise InvalidArgument(
            f"results: {len(request.results)} for {len(batch.vertices)} vertices; "
            "one result per vertex, in order"
        )
    rejected = []
    for i, (result, vertex) in enumerate(zip(request.results, batch.vertices, strict=True)):
        check_hash(result.hash, f"results[{i}].hash")
        if result.rejected:
            rejected.append(result.hash)
            if len(result.reject_reason.encode()) > MAX_REASON_BYTES:
                raise InvalidArgument(
                    f"results[{i}].reject_reason: longer than {MAX_REASON_BYTES} bytes"
                )
        else:
            if result.reject_reason:
                raise InvalidArgument(f"results[{i}].reject_reason: set on an accepted vertex")
            for j, parent in enumerate(vertex.parents):
                check_hash(parent, f"batch.vertices[{i}].parents[{j}]")
    if rejected != list(batch.rejected):
        raise InvalidArgument(
            "batch.rejected: must list the hashes of the rejected results, in batch order"
        )


def _check_state_key(key: bytes, what: str) -> None:
    if not key:
        raise InvalidArgument(f"{what}: empty key")
    if len(key) > MAX_STATE_KEY_BYTES:
        raise InvalidArgument(f"{what}: {len(key)} bytes; the limit is {MAX_STATE_KEY_BYTES}")


def check_write_state(request: storage_pb2.WriteStateRequest) -> None:
    ops = (
        len(request.puts)
        + len(request.deletes)
        + len(request.delete_prefixes)
        + len(request.delete_ranges)
    )
    if ops == 0:
        raise InvalidArgument("empty write: no puts, deletes or ranges")
    if ops > MAX_STATE_OPS:
        raise InvalidArgument(f"{ops} operations; the limit is {MAX_STATE_OPS} per request")
    for i, entry in enumerate(request.puts):
        _check_state_key(entry.key, f"puts[{i}].key")
    for i, key in enumerate(request.deletes):
        _check_state_key(key, f"deletes[{i}]")
    for i, prefix in enumerate(request.delete_prefixes):
        _check_state_key(prefix, f"delete_prefixes[{i}]")
    for i, key_range in enumerate(request.delete_ranges):
        _check_state_key(key_range.start, f"delete_ranges[{i}].start")
        if key_range.end and key_range.end <= key_range.start:
            raise InvalidArgument(f"delete_ranges[{i}]: end must be greater than start")
        if len(key_range.end) > MAX_STATE_KEY_BYTES:
            raise InvalidArgument(f"delete_ranges[{i}].end: longer than {MAX_STATE_KEY_BYTES}")


def check_keys(keys: list[bytes], what: str) -> None:
    if len(keys) > MAX_KEYS:
        raise InvalidArgument(f"{what}: {len(keys)} keys; the limit is {MAX_KEYS}")


def check_evidence(request: storage_pb2.AppendEvidenceRequest) -> pbft_pb2.Evidence:
    if not request.HasField("evidence"):
        raise InvalidArgument("evidence: missing")
    evidence = request.evidence
    for name in ("first", "second"):
        if not evidence.HasField(name):
            raise InvalidArgument(f"evidence.{name}: missing")
        message = getattr(evidence, name)
        if not message.body or not message.signature:
            raise InvalidArgument(f"evidence.{name}: body and signature are required")
    if evidence.first.signer != evidence.second.signer:
        raise InvalidArgument(
            f"evidence: signed by {evidence.first.signer} and {evidence.second.signer}; "
            "evidence is two messages of one replica"
        )
    if evidence.first.body == evidence.second.body:
        raise InvalidArgument("evidence: both messages have the same body; nothing conflicts")
    if not request.kind:
        raise InvalidArgument("kind: missing")
    if len(request.kind.encode()) > MAX_KIND_BYTES:
        raise InvalidArgument(f"kind: longer than {MAX_KIND_BYTES} bytes")
    return evidence
