"""Execution of committed batches: deterministic validity, then one atomic storage write.

Every honest replica executes the same batches in the same order against the
same finalized DAG, so the decisions below are the same everywhere. A vertex
of a committed batch is **rejected** (stored as such, never a parent) when:

- its shape is wrong (``cretoai.vertex.shape_error`` with the protocol limits);
- it is already finalized (an earlier batch, or earlier in this batch);
- its signature does not verify;
- a parent is not finalized (by an earlier batch, or accepted earlier in this batch).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from cretoai.vertex import PROTOCOL_MAX_PAYLOAD_BYTES, shape_error
from services.consensus.core.codec import certificate_to_pb
from services.consensus.core.ready import Committed
from services.consensus.retry import call_until_done
from services.consensus.verify import Verifier

log = logging.getLogger(__name__)

EXECUTED_BATCHES = Counter("cretoai_consensus_batches_executed_total", "Batches executed")
EXECUTED_VERTICES = Counter(
    "cretoai_consensus_vertices_executed_total", "Vertices executed, by outcome", ["outcome"]
)
EXECUTE_SECONDS = Histogram(
    "cretoai_consensus_execute_seconds",
    "Time to execute one batch (validity checks and the storage write)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED


@dataclass(frozen=True)
class Executed:
    """A batch as executed: what the feed publishes and waiting clients learn."""

    batch: vertex_pb2.FinalizedBatch
    heights: tuple[int, ...]


class Executor:
    def __init__(self, storage: storage_pb2_grpc.StorageStub, verifier: Verifier) -> None:
        self._storage = storage
        self._verifier = verifier

    async def execute(self, committed: Committed) -> Executed:
        started = time.perf_counter()
        vertices = [vertex_pb2.Vertex.FromString(r.body) for r in committed.requests]
        hashes = [r.hash for r in committed.requests]
        lookup = sorted(set(hashes) | {p for v in vertices for p in v.parents})
        finalized: set[bytes] = set()
        if lookup:
            reply = await call_until_done(
                lambda: self._storage.GetVertexStatuses(
                    storage_pb2.GetVertexStatusesRequest(hashes=lookup), timeout=30
                ),
                what="read vertex statuses",
            )
            finalized = {r.hash for r in reply.records if r.status == FINALIZED}
        accepted: set[bytes] = set()
        results = []
        rejected = []
        for digest, vertex in zip(hashes, vertices, strict=True):
            reason = await self._reject_reason(digest, vertex, finalized | accepted)
            if reason is None:
                accepted.add(digest)
                EXECUTED_VERTICES.labels("finalized").inc()
            else:
                rejected.append(digest)
                EXECUTED_VERTICES.labels("rejected").inc()
            results.append(
                storage_pb2.ExecutionResult(
                    hash=digest, rejected=reason is not None, reject_reason=reason or ""
                )
            )
        batch = vertex_pb2.FinalizedBatch(
            seq=committed.seq,
            batch_digest=committed.digest,
            vertices=vertices,
            rejected=rejected,
            certificate=certificate_to_pb(committed.certificate),
            state_digest=committed.state_digest,
        )
        request = storage_pb2.CommitBatchRequest(batch=batch, results=results)
        response = await call_until_done(
            lambda: self._storage.CommitBatch(request, timeout=30), what="commit batch"
        )
        EXECUTED_BATCHES.inc()
        EXECUTE_SECONDS.observe(time.perf_counter() - started)
        return Executed(batch=batch, heights=tuple(response.heights))

    async def _reject_reason(
        self, digest: bytes, vertex: vertex_pb2.Vertex, finalized: set[bytes]
    ) -> str | None:
        shape = shape_error(vertex, max_payload_bytes=PROTOCOL_MAX_PAYLOAD_BYTES)
        if shape is not None:
            return f"malformed: {shape}"
        if digest in finalized:
            return "duplicate: already finalized"
        if not await self._verifier.verify_vertex(vertex, digest):
            return "invalid signature"
        for parent in vertex.parents:
            if parent not in finalized:
                return f"unknown parent {parent.hex()}"
        return None
