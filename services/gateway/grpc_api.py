"""The public gRPC API (``cretoai.v1.Gateway``): the REST operations over gRPC.

An :class:`~services.gateway.errors.ApiError` raised by a call becomes the status
given by :data:`services.gateway.errors.CODES`, with details ``"<code>: <message>"``
(:mod:`cretoai.serving` does it, as for every service).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cretoai.v1 import consensus_pb2, gateway_pb2, gateway_pb2_grpc, vertex_pb2
from cretoai.vertex import HASH_SIZE
from services.gateway import bounds, metrics
from services.gateway.codec import Draft
from services.gateway.connections import client_key
from services.gateway.core import MAX_BATCH_VERTICES, Gateway, Refused
from services.gateway.errors import ApiError
from services.gateway.finality import SlowConsumer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name

Context = grpc.aio.ServicerContext[Any, Any]


def client_address(peer: str) -> str:
    """What per-client limits count a gRPC peer by (:func:`client_key` of its host):
    ``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``, ``ipv6:[2001:db8::1]:5000`` or its
    %-encoded form -> ``2001:db8::/64``; a peer of another kind as it is."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer
    host = urllib.parse.unquote(rest).rpartition(":")[0]
    return client_key(host.removeprefix("[").removesuffix("]"))


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


class _Handlers:
    """Stands in for a server to catch the method handlers a generated adder makes."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.handlers = dict(handlers)


def register(servicer: GatewayServicer, server: grpc.aio.Server) -> None:
    """Mount ``servicer`` as the generated adder does, with the submissions' requests
    counted on the wire before protobuf builds them (:mod:`services.gateway.bounds`)."""
    caught = _Handlers()
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, caught)
    handlers = caught.handlers
    handlers["SubmitVertex"] = grpc.unary_unary_rpc_method_handler(
        servicer.SubmitVertex,
        request_deserializer=bounds.submit_request,
        response_serializer=gateway_pb2.GatewaySubmitResponse.SerializeToString,
    )
    handlers["SubmitVertices"] = grpc.unary_unary_rpc_method_handler(
        servicer.SubmitVertices,
        request_deserializer=lambda raw: bounds.submit_batch_request(raw, MAX_BATCH_VERTICES),
        response_serializer=gateway_pb2.GatewaySubmitBatchResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        # The largest request (REST's batch body limit) is the server's receive limit:
        # gRPC refuses a larger one (RESOURCE_EXHAUSTED) before it reaches a handler.
        self._gw = gateway

    async def SubmitVertex(
        self, request: gateway_pb2.GatewaySubmitRequest, context: Context
    ) -> gateway_pb2.GatewaySubmitResponse:
        if not request.HasField("vertex"):  # a client's bug, not an empty node-signed vertex
            raise ApiError(
                "bad_request", "vertex: missing (send vertex {} for an empty node-signed one)"
            )
        with self._gw.hold_request_bytes(
            request.ByteSize(), api="grpc", client=client_address(context.peer())
        ):
            draft = draft_of(request.vertex)
            result = await self._gw.submit(
                draft, wait=request.wait, api="grpc", client=client_address(context.peer())
            )
            reply = gateway_pb2.GatewaySubmitResponse(hash=result.hash, status=result.status)
            if result.record is not None:
                reply.record.CopyFrom(result.record)
            return reply

    async def SubmitVertices(
        self, request: gateway_pb2.GatewaySubmitBatchRequest, context: Context
    ) -> gateway_pb2.GatewaySubmitBatchResponse:
        if len(request.vertices) > MAX_BATCH_VERTICES:  # before any work on them
            raise ApiError(
                "bad_request",
                f"vertices: {len(request.vertices)} of them; "
                f"at most {MAX_BATCH_VERTICES} per batch",
            )
        with self._gw.hold_request_bytes(
            request.ByteSize(), api="grpc", client=client_address(context.peer())
        ):
            return await self._submit_batch(request, client_address(context.peer()))

    async def _submit_batch(
        self, request: gateway_pb2.GatewaySubmitBatchRequest, client: str
    ) -> gateway_pb2.GatewaySubmitBatchResponse:
        drafts = []
        for i, vertex in enumerate(request.vertices):
            try:
                drafts.append(draft_of(vertex))
            except ApiError as exc:
                raise ApiError(exc.code, f"vertices[{i}]: {exc.message}") from None
        answers = await self._gw.submit_batch(drafts, wait=request.wait, api="grpc", client=client)
        reply = gateway_pb2.GatewaySubmitBatchResponse()
        for answer in answers:
            result = reply.results.add()
            if isinstance(answer, Refused):
                if answer.hash is not None:
                    result.hash = answer.hash
                error = answer.error
                result.error.code = error.code
                result.error.message = error.message
                result.error.status = error.grpc_status.value[0]
                continue
            result.hash = answer.hash
            result.status = answer.status
            result.duplicate = answer.duplicate
            if answer.record is not None:
                result.record.CopyFrom(answer.record)
        return reply

    async def GetVertex(
        self, request: gateway_pb2.GatewayGetVertexRequest, context: Context
    ) -> vertex_pb2.VertexRecord:
        if len(request.hash) != HASH_SIZE:
            raise ApiError(
                "bad_request", f"hash: {len(request.hash)} bytes; a vertex hash is {HASH_SIZE}"
            )
        return await self._gw.vertex(request.hash)

    async def GetStatus(
        self, request: consensus_pb2.GetStatusRequest, context: Context
    ) -> consensus_pb2.NodeStatus:
        return await self._gw.status()

    async def WatchFinalized(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        """Finalized batches with seq >= from_seq (0 reads as 1), then each new one."""
        stream = self._gw.hub.open_stream(
            request.from_seq, api="grpc", client=client_address(context.peer())
        )
        # the handler's task: cancelled if the gateway ended the stream and this call is
        # still blocked in a write to a client that reads nothing (finality.END_GRACE_S)
        handler = asyncio.current_task()
        stream.abort = handler.cancel if handler is not None else None
        try:
            async with contextlib.aclosing(stream.entries()) as entries:
                async for entry in entries:
                    yield entry.entry.batch
        except SlowConsumer:
            metrics.STREAM_CLOSED.labels("slow_consumer").inc()
            raise
        except ApiError as exc:
            metrics.STREAM_CLOSED.labels(exc.code).inc()
            raise
        finally:
            stream.close()
