"""The Consensus gRPC service (submit, pending lookup, status, finalized stream).

A refused call raises a :mod:`cretoai.errors` class; :mod:`cretoai.serving` turns
it into the status (and the ``bad_signature`` / ``storage_unavailable`` error code
the gateway reports)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cretoai.config import NodeConfig
from cretoai.crypto.keys import node_id
from cretoai.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from cretoai.v1 import (
    consensus_pb2,
    consensus_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    transport_pb2,
    vertex_pb2,
)
from cretoai.vertex import (
    BAD_SIGNATURE_MESSAGE,
    HASH_SIZE,
    PROTOCOL_MAX_PAYLOAD_BYTES,
    shape_error,
    vertex_hash,
)
from services.consensus.core.replica import ProposeResult
from services.consensus.driver import Driver
from services.consensus.feed import WatcherTooSlow

Context = grpc.aio.ServicerContext[Any, Any]

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
PENDING = vertex_pb2.VERTEX_STATUS_PENDING
OVERLOADED_MESSAGE = (
    "this node is behind its offered load (a pending vertex waited longer than "
    "consensus.admission_max_wait_ms); retry later"
)


class ConsensusServicer(consensus_pb2_grpc.ConsensusServicer):
    def __init__(
        self, cfg: NodeConfig, driver: Driver, storage: storage_pb2_grpc.StorageStub
    ) -> None:
        self._cfg = cfg
        self._driver = driver
        self._storage = storage
        self._own_id = node_id(cfg.validator_public_keys[cfg.replica_index])

    async def SubmitVertex(
        self, request: consensus_pb2.SubmitVertexRequest, context: Context
    ) -> consensus_pb2.SubmitVertexResponse:
        vertex = request.vertex
        problem = shape_error(vertex, max_payload_bytes=PROTOCOL_MAX_PAYLOAD_BYTES)
        if problem is not None:
            raise InvalidArgument(f"malformed vertex: {problem}")
        if not self._driver.ready:
            raise Unavailable("consensus is not ready")
        if self._driver.replica.overloaded():  # before any work: shedding must be cheap
            raise ResourceExhausted(OVERLOADED_MESSAGE)
        digest = vertex_hash(vertex)
        if not await self._driver.verify_vertex(vertex, digest):
            raise InvalidArgument(BAD_SIGNATURE_MESSAGE, error_code="bad_signature")
        lookup = [digest, *vertex.parents]
        try:
            statuses = await self._storage.GetVertexStatuses(
                storage_pb2.GetVertexStatusesRequest(hashes=lookup), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"storage is unavailable: {exc.details()}", error_code="storage_unavailable"
            ) from None
        records = {r.hash: r for r in statuses.records}
        own = records.get(digest)
        if own is not None and own.status == FINALIZED:
            return consensus_pb2.SubmitVertexResponse(
                hash=digest, status=own.status, duplicate=True
            )
        # A REJECTED record does not answer for this copy: validity is a function of
        # the exact signed bytes, and another copy of the content may have been the one
        # rejected (a bad signature), so this one is ordered and decided on its own.
        for parent in vertex.parents:
            record = records.get(parent)
            if record is not None and record.status == REJECTED:
                raise FailedPrecondition(
                    f"parent {parent.hex()} was rejected at execution ({record.reject_reason}); "
                    "a parent must be finalized or pending"
                )
            finalized = record is not None and record.status == FINALIZED
            if not finalized and parent not in self._driver.pending:
                raise FailedPrecondition(
                    f"parent {parent.hex()} is neither finalized nor pending at this node"
                )
        result = await self._driver.propose(vertex, digest)
        if result == ProposeResult.POOL_FULL:
            raise ResourceExhausted("the request pool is full")
        if result == ProposeResult.OVERLOADED:
            raise ResourceExhausted(OVERLOADED_MESSAGE)
        if result == ProposeResult.TOO_LARGE:
            raise InvalidArgument("vertex exceeds the batch size")
        return consensus_pb2.SubmitVertexResponse(
            hash=digest, status=PENDING, duplicate=result == ProposeResult.DUPLICATE
        )

    async def GetPending(
        self, request: consensus_pb2.GetPendingRequest, context: Context
    ) -> consensus_pb2.GetPendingResponse:
        if len(request.hash) != HASH_SIZE:
            raise InvalidArgument(f"hash must be {HASH_SIZE} bytes")
        vertex = self._driver.pending.get(request.hash)
        if vertex is None:
            return consensus_pb2.GetPendingResponse(found=False)
        return consensus_pb2.GetPendingResponse(found=True, vertex=vertex)

    async def GetStatus(
        self, request: consensus_pb2.GetStatusRequest, context: Context
    ) -> consensus_pb2.NodeStatus:
        replica = self._driver.replica
        status = replica.status()
        names = {
            node_id(v.public_key_bytes): (i, v.name) for i, v in enumerate(self._cfg.validators)
        }
        peers = []
        try:
            listed = await self._driver.link.stub.ListPeers(
                transport_pb2.ListPeersRequest(), timeout=2
            )
            transport_peers = {p.node_id: p for p in listed.peers}
        except grpc.aio.AioRpcError:
            transport_peers = {}
        for nid, (index, name) in names.items():
            if index == replica.id:
                continue
            tp = transport_peers.get(nid)
            peers.append(
                consensus_pb2.PeerStatus(
                    name=name,
                    node_id=nid,
                    replica=index,
                    connected=bool(tp and tp.connected),
                    banned=index in status.banned or bool(tp and tp.banned),
                    reputation=replica.reputation(index),
                    rtt_ms=tp.rtt_ms if tp else 0.0,
                )
            )
        try:
            stats = await self._storage.GetStats(storage_pb2.GetStatsRequest(), timeout=2)
            evidence = stats.evidence
        except grpc.aio.AioRpcError:
            evidence = 0
        return consensus_pb2.NodeStatus(
            evidence=evidence,
            node_id=self._own_id,
            node_name=self._cfg.node.name,
            replica=replica.id,
            view=status.view,
            primary=status.primary,
            last_executed_seq=status.last_executed,
            stable_checkpoint=status.stable_seq,
            pool_size=status.pool_size,
            banned=[self._driver.node_ids[i] for i in sorted(status.banned)],
            n=replica.config.n,
            f=replica.config.f,
            ready=self._driver.ready,
            view_changes=self._driver.view_changes,
            peers=peers,
            view_changing=not status.active,
        )

    async def WatchFinalized(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        try:
            async for batch in self._driver.feed.watch(request.from_seq):
                yield batch
        except WatcherTooSlow as exc:
            raise ResourceExhausted(f"{exc}; resume from your last seq") from None
