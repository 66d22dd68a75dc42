"""The consensus-facing gRPC service (cretoai.v1.Transport).

Local errors are raised as the :mod:`services.transport.errors` family (each a
:mod:`cretoai.errors` class with its status); anything else is a bug and
surfaces as INTERNAL (:mod:`cretoai.serving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cretoai.errors import Aborted
from cretoai.serving import Servicer
from cretoai.v1 import transport_pb2, transport_pb2_grpc
from services.transport.node import Superseded, TransportNode, envelope_batch_bytes

log = logging.getLogger(__name__)

SERVICE_NAME = transport_pb2.DESCRIPTOR.services_by_name["Transport"].full_name
DEFAULT_PING_TIMEOUT = 2.0
SUPERSEDED_MESSAGE = "superseded by a newer Exchange stream"
#: Metadata naming the calling consensus process (services/consensus/link.py).
SESSION_HEADER = "cretoai-consensus-session"


def _session_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The consensus process's session id from the call's metadata ("" if none)."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_HEADER and isinstance(value, str):
            return value[:64]
    return ""


class TransportServicer(transport_pb2_grpc.TransportServicer):
    def __init__(self, node: TransportNode) -> None:
        self._node = node

    async def Exchange(
        self,
        request_iterator: AsyncIterator[transport_pb2.Envelope],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[transport_pb2.Envelope]:
        consumer = self._node.attach_consumer()
        reader = asyncio.create_task(self._read_outbound(request_iterator), name="exchange-in")
        try:
            while True:
                try:
                    batch = await consumer.get_batch()
                except Superseded:
                    raise Aborted(SUPERSEDED_MESSAGE) from None
                for delivery in batch:
                    yield delivery.envelope()
        finally:
            consumer.detach()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_outbound(self, request_iterator: AsyncIterator[transport_pb2.Envelope]) -> None:
        send = self._node.send_quietly
        async for envelope in request_iterator:
            send(envelope)

    async def ExchangeBatches(
        self,
        request_iterator: AsyncIterator[transport_pb2.EnvelopeBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:  # an EnvelopeBatch, encoded
        self._node.consensus_session(_session_of(context))
        consumer = self._node.attach_consumer()
        reader = asyncio.create_task(self._read_batches(request_iterator), name="exchange-in")
        try:
            while True:
                try:
                    batch = await consumer.get_batch()
                except Superseded:
                    raise Aborted(SUPERSEDED_MESSAGE) from None
                # the EnvelopeBatch's bytes, which the server passes on as they are
                # (cretoai.serving): no message built from the peers' bytes
                yield envelope_batch_bytes(batch)
        finally:
            consumer.detach()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_batches(
        self, request_iterator: AsyncIterator[transport_pb2.EnvelopeBatch]
    ) -> None:
        send = self._node.send_quietly
        async for batch in request_iterator:
            for envelope in batch.envelopes:
                send(envelope)

    async def ListPeers(
        self, request: transport_pb2.ListPeersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> transport_pb2.ListPeersResponse:
        return transport_pb2.ListPeersResponse(
            peers=self._node.peers(),
            self_node_id=self._node.node_id,
            advertised_address=self._node.advertised_address,
        )

    async def BanPeer(
        self, request: transport_pb2.BanPeerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> transport_pb2.BanPeerResponse:
        self._node.ban(
            request.node_id,
            duration=request.duration_ms / 1000 if request.duration_ms else None,
            reason=request.reason or "requested by consensus",
            session=_session_of(context),
        )
        return transport_pb2.BanPeerResponse()

    async def PingPeer(
        self, request: transport_pb2.PingPeerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> transport_pb2.PingPeerResponse:
        timeout = request.timeout_ms / 1000 if request.timeout_ms else DEFAULT_PING_TIMEOUT
        rtt = await self._node.ping(request.node_id, timeout)
        return transport_pb2.PingPeerResponse(rtt_ms=rtt * 1000)

    async def GetStats(
        self,
        request: transport_pb2.GetTransportStatsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> transport_pb2.TransportStats:
        return transport_pb2.TransportStats(counters=self._node.counters())

    async def SetFaults(
        self, request: transport_pb2.SetFaultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> transport_pb2.SetFaultsResponse:
        self._node.set_faults(
            request.node_id,
            drop_rate=request.drop_rate,
            delay=request.delay_ms / 1000,
            partitioned=request.partitioned,
        )
        return transport_pb2.SetFaultsResponse()


def transport_servicer(node: TransportNode) -> Servicer:
    servicer = TransportServicer(node)
    return Servicer(
        name=SERVICE_NAME,
        register=lambda server: transport_pb2_grpc.add_TransportServicer_to_server(
            servicer, server
        ),
    )
