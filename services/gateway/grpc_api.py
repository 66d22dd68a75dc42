"""The public gRPC API (``cretoai.v1.Gateway``): the REST operations over gRPC.

An :class:`~services.gateway.errors.ApiError` becomes the status given by
:data:`services.gateway.errors.CODES`, with details ``"<code>: <message>"``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from cretoai.v1 import consensus_pb2, gateway_pb2, gateway_pb2_grpc, vertex_pb2
from cretoai.vertex import HASH_SIZE
from services.gateway import metrics
from services.gateway.codec import Draft
from services.gateway.core import Gateway
from services.gateway.errors import ApiError
from services.gateway.finality import SlowConsumer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self", bound="GatewayServicer")


async def _abort(context: Context, exc: ApiError) -> NoReturn:
    await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
    raise AssertionError("unreachable")  # abort raises


def _unary(
    fn: Callable[[Self, Req, Context], Awaitable[Resp]],
) -> Callable[[Self, Req, Context], Awaitable[Resp]]:
    @functools.wraps(fn)
    async def call(self: Self, request: Req, context: Context) -> Resp:
        try:
            return await fn(self, request, context)
        except ApiError as exc:
            await _abort(context, exc)

    return call


def draft_of(vertex: vertex_pb2.Vertex) -> Draft:
    """A vertex with ``creator`` and ``signature`` is client-signed; with neither, node-signed."""
    parents = list(vertex.parents)
    if not vertex.creator and not vertex.signature:
        if vertex.timestamp_ms:
            raise ApiError(
                "partial_signature",
                "timestamp_ms is chosen by the node for a vertex it signs; "
                "set creator and signature too, or leave all three unset",
            )
        return Draft(payload=vertex.payload, parents=parents)
    if not vertex.creator or not vertex.signature:
        raise ApiError(
            "partial_signature",
            "a client-signed vertex needs creator and signature; leave both unset "
            "to have the node sign it",
        )
    return Draft(
        payload=vertex.payload,
        parents=parents,
        creator=vertex.creator,
        signature=vertex.signature,
        timestamp_ms=vertex.timestamp_ms,
        signed=True,
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    @_unary
    async def SubmitVertex(
        self, request: gateway_pb2.GatewaySubmitRequest, context: Context
    ) -> gateway_pb2.GatewaySubmitResponse:
        result = await self._gw.submit(draft_of(request.vertex), wait=request.wait, api="grpc")
        reply = gateway_pb2.GatewaySubmitResponse(hash=result.hash, status=result.status)
        if result.record is not None:
            reply.record.CopyFrom(result.record)
        return reply

    @_unary
    async def GetVertex(
        self, request: gateway_pb2.GatewayGetVertexRequest, context: Context
    ) -> vertex_pb2.VertexRecord:
        if len(request.hash) != HASH_SIZE:
            raise ApiError(
                "bad_request", f"hash: {len(request.hash)} bytes; a vertex hash is {HASH_SIZE}"
            )
        return await self._gw.vertex(request.hash)

    @_unary
    async def GetStatus(
        self, request: consensus_pb2.GetStatusRequest, context: Context
    ) -> consensus_pb2.NodeStatus:
        return await self._gw.status()

    async def WatchFinalized(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        """Finalized batches with seq >= from_seq (0 reads as 1), then each new one."""
        try:
            stream = self._gw.hub.open_stream(request.from_seq, complete=False, api="grpc")
        except ApiError as exc:
            await _abort(context, exc)
        try:
            async with contextlib.aclosing(stream.entries()) as entries:
                async for entry in entries:
                    yield entry.entry.batch
        except SlowConsumer as exc:
            metrics.STREAM_CLOSED.labels("slow_consumer").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ApiError as exc:
            metrics.STREAM_CLOSED.labels(exc.code).inc()
            await _abort(context, exc)
        finally:
            stream.close()
