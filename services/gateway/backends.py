"""Clients of this node's consensus and storage services.

Every call has a deadline, and every gRPC failure becomes an
:class:`~services.gateway.errors.ApiError` through
:func:`~services.gateway.errors.from_backend` (the one mapping).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cretoai.v1 import (
    consensus_pb2,
    consensus_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vertex_pb2,
)
from services.gateway.errors import ApiError, from_backend, from_status, status_of

#: Deadline of one call to consensus or storage.
CALL_TIMEOUT_S = 5.0
#: Deadline of a health or readiness probe.
PROBE_TIMEOUT_S = 1.0

WatchCall = grpc.aio.UnaryStreamCall[
    consensus_pb2.WatchFinalizedRequest, consensus_pb2.FinalizedNotice
]
BatchWatchCall = grpc.aio.UnaryStreamCall[
    consensus_pb2.WatchFinalizedRequest, vertex_pb2.FinalizedBatch
]
AdmissionCall = grpc.aio.UnaryStreamCall[
    consensus_pb2.WatchAdmissionRequest, consensus_pb2.AdmissionState
]


class BatchUnsupported(Exception):
    """The consensus service has no ``SubmitVertices`` (an older one): submit one by one."""


class ConsensusClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = consensus_pb2_grpc.ConsensusStub(channel)

    async def submit(self, vertex: vertex_pb2.Vertex) -> consensus_pb2.SubmitVertexResponse:
        try:
            reply: consensus_pb2.SubmitVertexResponse = await self._stub.SubmitVertex(
                consensus_pb2.SubmitVertexRequest(vertex=vertex), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise from_backend(exc, "consensus") from None
        return reply

    async def submit_many(
        self,
        vertices: Sequence[vertex_pb2.Vertex],
        traceparents: Sequence[str] = (),
        *,
        admitted: bool = False,
    ) -> list[consensus_pb2.SubmitVertexResponse | ApiError]:
        """One ``SubmitVertices`` call: each vertex's answer or refusal, in order
        (``admitted``: this gateway admitted them as they arrived, following consensus's
        admission stream; ``SubmitVerticesRequest.admitted``).

        Raises :class:`BatchUnsupported` when consensus does not have the call, and an
        ApiError when it refused the call as a whole.
        """
        request = consensus_pb2.SubmitVerticesRequest(
            vertices=vertices, traceparents=traceparents, admitted=admitted
        )
        try:
            reply: consensus_pb2.SubmitVerticesResponse = await self._stub.SubmitVertices(
                request, timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise BatchUnsupported(exc.details() or "UNIMPLEMENTED") from None
            raise from_backend(exc, "consensus") from None
        if len(reply.results) != len(vertices):
            raise ApiError(
                "backend_error",
                f"consensus answered {len(reply.results)} results for {len(vertices)} vertices",
            )
        answers: list[consensus_pb2.SubmitVertexResponse | ApiError] = []
        for result in reply.results:
            kind = result.WhichOneof("outcome")
            if kind == "accepted":
                answers.append(result.accepted)
            elif kind == "error":
                error = result.error
                code = status_of(error.code)
                answers.append(
                    from_status(code, error.message or code.name, error.error_code, "consensus")
                )
            else:
                answers.append(ApiError("backend_error", "consensus answered an empty result"))
        return answers

    async def pending(self, h: bytes) -> vertex_pb2.Vertex | None:
        """The vertex if this node holds it and has not finalized it yet."""
        try:
            reply: consensus_pb2.GetPendingResponse = await self._stub.GetPending(
                consensus_pb2.GetPendingRequest(hash=h), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise from_backend(exc, "consensus") from None
        return reply.vertex if reply.found else None

    async def status(self, timeout: float = CALL_TIMEOUT_S) -> consensus_pb2.NodeStatus:
        try:
            reply: consensus_pb2.NodeStatus = await self._stub.GetStatus(
                consensus_pb2.GetStatusRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise from_backend(exc, "consensus") from None
        return reply

    def watch_admission(self) -> AdmissionCall:
        """Consensus's admission state, then each change (the caller handles errors)."""
        call: AdmissionCall = self._stub.WatchAdmission(consensus_pb2.WatchAdmissionRequest())
        return call

    def watch(self, from_seq: int) -> BatchWatchCall:
        """The finalized stream, whole batches (what a consensus without
        ``WatchFinalizedNotices`` offers; the caller handles its errors)."""
        call: BatchWatchCall = self._stub.WatchFinalized(
            consensus_pb2.WatchFinalizedRequest(from_seq=from_seq)
        )
        return call

    def watch_notices(self, from_seq: int) -> WatchCall:
        """The finalized stream, as notices without the vertex bodies (the caller handles
        its errors: it reconnects)."""
        call: WatchCall = self._stub.WatchFinalizedNotices(
            consensus_pb2.WatchFinalizedRequest(from_seq=from_seq)
        )
        return call


class StorageClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = storage_pb2_grpc.StorageStub(channel)

    async def vertex(self, h: bytes) -> vertex_pb2.VertexRecord | None:
        """A finalized or rejected vertex with its certificate; None when not stored."""
        try:
            reply: storage_pb2.GetVertexResponse = await self._stub.GetVertex(
                storage_pb2.GetVertexRequest(hash=h), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise from_backend(exc, "storage") from None
        return reply.record if reply.found else None

    async def finalized(
        self, from_seq: int, *, limit: int, to_seq: int = 0, omit_vertices: bool = False
    ) -> list[storage_pb2.FinalizedEntry]:
        """Up to ``limit`` consecutive finalized entries from ``from_seq`` (before ``to_seq``)."""
        request = storage_pb2.GetFinalizedRequest(
            from_seq=from_seq, to_seq=to_seq, limit=limit, omit_vertices=omit_vertices
        )
        try:
            return [e async for e in self._stub.GetFinalized(request, timeout=CALL_TIMEOUT_S)]
        except grpc.aio.AioRpcError as exc:
            raise from_backend(exc, "storage") from None


async def probe(channel: grpc.aio.Channel, service: str = "") -> str:
    """A service's gRPC health: ``serving``, ``not_serving`` or ``unreachable``."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=PROBE_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        down = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return "unreachable" if exc.code() in down else "not_serving"
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    return "serving" if serving else "not_serving"
