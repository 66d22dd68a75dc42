"""The Consensus gRPC service (submit, pending lookup, status, finalized stream).

A refused call raises a :mod:`cretoai.errors` class; :mod:`cretoai.serving` turns
it into the status (and the ``bad_signature`` / ``storage_unavailable`` error code
the gateway reports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar, cast

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, Span
from prometheus_client import Counter

from cretoai.config import NodeConfig
from cretoai.crypto.keys import node_id
from cretoai.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from cretoai.telemetry import parse_traceparent
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
    canonical_bytes,
    hash_of_canonical,
    shape_error,
    signed_digest_of_canonical,
)
from services.consensus.core.replica import ProposeResult
from services.consensus.driver import Driver
from services.consensus.feed import WatcherTooSlow

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
PENDING = vertex_pb2.VERTEX_STATUS_PENDING
#: Most vertices, and bytes of vertices, in one SubmitVertices call.
MAX_SUBMIT_VERTICES = 256
MAX_SUBMIT_BYTES = 8 * 1024 * 1024
#: Most hashes storage's GetVertexStatuses takes in one request.
STATUS_LOOKUP = 1024

ADMISSION_LOOKUPS = Counter(
    "cretoai_consensus_admission_lookups_total",
    "Vertices whose finalized status (and their parents') admission took from what this "
    "process finalized lately (source=recent) or read from storage (source=storage)",
    ["source"],
)
OVERLOADED_MESSAGE = (
    "this node is behind its offered load (a pending vertex waited longer than "
    "consensus.admission_max_wait_ms); retry later"
)


Outcome = consensus_pb2.SubmitVertexResponse | ServiceError


def _done(outcomes: list[Outcome | None]) -> list[Outcome]:
    assert all(o is not None for o in outcomes)
    return cast(list[Outcome], outcomes)


def _is_finalized(record: vertex_pb2.VertexRecord | None) -> bool:
    return record is not None and record.status == FINALIZED


def _is_settled(record: vertex_pb2.VertexRecord | None) -> bool:
    """Executed: finalized or rejected (storage knows no other status for good)."""
    return record is not None and record.status in (FINALIZED, REJECTED)


def _proposed(digest: bytes, copy: bytes, result: ProposeResult) -> Outcome:
    if result == ProposeResult.POOL_FULL:
        return ResourceExhausted("the request pool is full")
    if result == ProposeResult.OVERLOADED:
        return ResourceExhausted(OVERLOADED_MESSAGE)
    if result == ProposeResult.TOO_LARGE:
        return InvalidArgument("vertex exceeds the batch size")
    return consensus_pb2.SubmitVertexResponse(
        hash=digest, status=PENDING, duplicate=result == ProposeResult.DUPLICATE, copy=copy
    )


async def _all_of(works: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every one of ``works`` at once, in order (a lone one awaited in place: no task)."""
    if len(works) == 1:
        return [await works[0]]
    return list(await asyncio.gather(*works))


async def _resumable(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """A finalized stream whose watcher fell too far behind ends RESOURCE_EXHAUSTED."""
    try:
        async for item in items:
            yield item
    except WatcherTooSlow as exc:
        raise ResourceExhausted(f"{exc}; resume from your last seq") from None


def _span_of(traceparent: str) -> Span:
    """The submitter's span of one vertex (the driver keeps it when sampled); a span
    that is not recording and not sampled when there is none, so that the call's own
    context (another vertex's) is not taken for this one's."""
    span_context = parse_traceparent(traceparent) if traceparent else None
    return NonRecordingSpan(span_context if span_context is not None else INVALID_SPAN_CONTEXT)


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
        [outcome] = await self._submit([request.vertex], ())
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome

    async def SubmitVertices(
        self, request: consensus_pb2.SubmitVerticesRequest, context: Context
    ) -> consensus_pb2.SubmitVerticesResponse:
        count = len(request.vertices)
        if count == 0:
            raise InvalidArgument(f"no vertices: send 1 to {MAX_SUBMIT_VERTICES} per call")
        if count > MAX_SUBMIT_VERTICES:
            raise InvalidArgument(
                f"{count} vertices; at most {MAX_SUBMIT_VERTICES} per call: split them"
            )
        size = sum(v.ByteSize() for v in request.vertices)
        if size > MAX_SUBMIT_BYTES:
            raise InvalidArgument(
                f"{size} bytes of vertices; at most {MAX_SUBMIT_BYTES} per call: split them"
            )
        if request.traceparents and len(request.traceparents) != count:
            raise InvalidArgument(
                f"{len(request.traceparents)} traceparents for {count} vertices: "
                "send none or one per vertex"
            )
        outcomes = await self._submit(
            list(request.vertices), request.traceparents, admitted=request.admitted
        )
        response = consensus_pb2.SubmitVerticesResponse()
        for outcome in outcomes:
            result = response.results.add()
            if isinstance(outcome, ServiceError):
                result.error.code = outcome.grpc_status.value[0]
                result.error.message = outcome.grpc_details()
                result.error.error_code = outcome.error_code or ""
            else:
                result.accepted.CopyFrom(outcome)
        return response

    async def _submit(
        self,
        vertices: list[vertex_pb2.Vertex],
        traceparents: Sequence[str],
        *,
        admitted: bool = False,
    ) -> list[Outcome]:
        """Each vertex checked and admitted as SubmitVertex does, in order.

        A refusal that is the same for every vertex and comes before any work on them
        (not ready, overloaded, storage unavailable) is raised for the whole call; the
        others are each vertex's outcome. ``admitted``: the gateway admitted them as they
        arrived (``SubmitVerticesRequest.admitted``), so they are not refused as
        overloaded here.
        """
        outcomes: list[Outcome | None] = [None] * len(vertices)
        for i, vertex in enumerate(vertices):
            vertex.DiscardUnknownFields()  # the body ordered is its canonical encoding
            problem = shape_error(vertex, max_payload_bytes=PROTOCOL_MAX_PAYLOAD_BYTES)
            if problem is not None:
                outcomes[i] = InvalidArgument(f"malformed vertex: {problem}")
        live = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if not live:
            return _done(outcomes)
        if not self._driver.ready:
            raise Unavailable("consensus is not ready")
        # Admission, for the whole call, before any work on it (shedding must be cheap);
        # it binds: what is admitted here is not refused later for overload (the checks
        # below take a while on a busy node; see Driver._admit). What the gateway admitted
        # as it arrived is not judged again by the same line: it may have waited for the
        # calls ahead of it since, and a refusal now would come after that wait. Only
        # when the pool is twice as far behind is it refused all the same, so that the
        # pool's requests stay well within request_timeout.
        if admitted:
            if self._driver.too_far_behind_for_admitted():
                raise ResourceExhausted(OVERLOADED_MESSAGE)
        elif self._driver.overloaded():
            raise ResourceExhausted(OVERLOADED_MESSAGE)
        canonicals = {i: canonical_bytes(vertices[i]) for i in live}  # encoded once
        digests = {i: hash_of_canonical(canonicals[i]) for i in live}
        # What this process finalized lately decides most vertices (recent.py); storage is
        # asked about the others
        recent = self._driver.recent
        records: dict[bytes, vertex_pb2.VertexRecord] = {}
        asked = []
        for i in live:
            parents = vertices[i].parents
            if recent.decides(digests[i], parents):
                for parent in parents:
                    records[parent] = vertex_pb2.VertexRecord(hash=parent, status=FINALIZED)
            else:
                asked.append(i)
        if len(asked) < len(live):
            ADMISSION_LOOKUPS.labels("recent").inc(len(live) - len(asked))
        if asked:
            ADMISSION_LOOKUPS.labels("storage").inc(len(asked))
            records.update(
                await self._statuses(
                    dict.fromkeys(h for i in asked for h in (digests[i], *vertices[i].parents))
                )
            )
        # A finalized copy sent again is answered without verifying it again: its bytes
        # were verified at execution. Anyone can replay finalized copies (they are public),
        # at no cost to them, so each once cost every node a verification for nothing.
        replayed = await self._finalized_copies(
            [i for i in live if _is_finalized(records.get(digests[i]))], vertices, digests
        )
        for i in replayed:
            outcomes[i] = consensus_pb2.SubmitVertexResponse(
                hash=digests[i], status=FINALIZED, duplicate=True
            )
        live = [i for i in live if i not in replayed]
        # Each signed copy verified once, all of them at once (the verifier's threads).
        copies = {i: signed_digest_of_canonical(canonicals[i], vertices[i].signature) for i in live}
        verdicts = await self._driver.verify_vertices(
            [vertices[i] for i in live], [copies[i] for i in live], [digests[i] for i in live]
        )
        verified = []
        for i, ok in zip(live, verdicts, strict=True):
            if ok:
                verified.append(i)
            else:
                outcomes[i] = InvalidArgument(BAD_SIGNATURE_MESSAGE, error_code="bad_signature")
        # The statuses were read before verifying, which takes a while on a busy node: a
        # parent pending then may have been executed since (and left the pending set
        # only once storage had it). Those parents are read again.
        ours = {digests[i] for i in verified}
        since = {
            p
            for i in verified
            for p in vertices[i].parents
            if not _is_settled(records.get(p)) and p not in self._driver.pending and p not in ours
        }
        if since:
            records.update(await self._statuses(dict.fromkeys(since)))
        proposals: list[tuple[int, Coroutine[Any, Any, ProposeResult]]] = []
        proposed: set[bytes] = set()  # earlier vertices of this call: pending once proposed
        for i in verified:
            vertex, digest = vertices[i], digests[i]
            if _is_finalized(records.get(digest)):
                outcomes[i] = consensus_pb2.SubmitVertexResponse(
                    hash=digest, status=FINALIZED, duplicate=True
                )
                continue
            # A REJECTED record does not answer for this copy: validity is a function of
            # the exact signed bytes, and another copy of the content may have been the one
            # rejected (a bad signature), so this one is ordered and decided on its own.
            refusal = self._parent_refusal(vertex, records, proposed)
            if refusal is not None:
                outcomes[i] = refusal
                continue
            span = _span_of(traceparents[i]) if traceparents else None
            proposals.append((i, self._propose(vertex, digest, copies[i], span)))
            proposed.add(digest)
        # All at once; each reaches the driver's inbox in this order (tasks start in the
        # order they are created).
        results = await _all_of([proposal for _, proposal in proposals])
        for (i, _), result in zip(proposals, results, strict=True):
            outcomes[i] = _proposed(digests[i], copies[i], result)
        return _done(outcomes)

    async def _propose(
        self, vertex: vertex_pb2.Vertex, digest: bytes, copy: bytes, span: Span | None
    ) -> ProposeResult:
        """The driver's ``propose``, under the submitter's span when the call carries one
        per vertex (the driver keeps a sampled one with the pending vertex)."""
        if span is None:
            return await self._driver.propose(vertex, digest, copy, admitted=True)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await self._driver.propose(vertex, digest, copy, admitted=True)
        finally:
            otel_context.detach(token)

    async def _finalized_copies(
        self, indexes: list[int], vertices: list[vertex_pb2.Vertex], digests: dict[int, bytes]
    ) -> set[int]:
        """Which of ``indexes`` (vertices whose content is finalized) are the very copy
        storage finalized: the same content and the same signature, so the same bytes.

        Another copy of a finalized content (another signature, valid or not) is verified
        as any copy is, and answered as before. A copy storage cannot show is verified."""
        if not indexes:
            return set()
        replies = await asyncio.gather(
            *(
                self._storage.GetVertex(storage_pb2.GetVertexRequest(hash=digests[i]), timeout=10)
                for i in indexes
            ),
            return_exceptions=True,
        )
        same = set()
        for i, reply in zip(indexes, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, grpc.aio.AioRpcError):
                    raise reply
                continue
            if (
                reply.found
                and _is_finalized(reply.record)
                and reply.record.vertex.signature == vertices[i].signature
            ):
                same.add(i)
        return same

    async def _statuses(self, hashes: dict[bytes, None]) -> dict[bytes, vertex_pb2.VertexRecord]:
        """Storage's records of ``hashes`` (in requests of at most STATUS_LOOKUP hashes)."""
        lookup = list(hashes)
        chunks = [lookup[i : i + STATUS_LOOKUP] for i in range(0, len(lookup), STATUS_LOOKUP)]
        try:
            replies = await asyncio.gather(
                *(
                    self._storage.GetVertexStatuses(
                        storage_pb2.GetVertexStatusesRequest(hashes=chunk), timeout=10
                    )
                    for chunk in chunks
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(
                f"storage is unavailable: {exc.details()}", error_code="storage_unavailable"
            ) from None
        return {r.hash: r for reply in replies for r in reply.records}

    def _parent_refusal(
        self,
        vertex: vertex_pb2.Vertex,
        records: dict[bytes, vertex_pb2.VertexRecord],
        proposed: set[bytes],
    ) -> ServiceError | None:
        for parent in vertex.parents:
            record = records.get(parent)
            if record is not None and record.status == REJECTED:
                return FailedPrecondition(
                    f"parent {parent.hex()} was rejected at execution ({record.reject_reason}); "
                    "a parent must be finalized or pending"
                )
            finalized = record is not None and record.status == FINALIZED
            if not finalized and parent not in self._driver.pending and parent not in proposed:
                return FailedPrecondition(
                    f"parent {parent.hex()} is neither finalized nor pending at this node"
                )
        return None

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
                    refuses_this_node=bool(tp and tp.refuses_us),
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
            alone_in_view=status.alone_in_view,
        )

    async def WatchAdmission(
        self, request: consensus_pb2.WatchAdmissionRequest, context: Context
    ) -> AsyncIterator[consensus_pb2.AdmissionState]:
        async for overloaded in self._driver.watch_admission():
            yield consensus_pb2.AdmissionState(overloaded=overloaded)

    async def WatchFinalized(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        async for batch in _resumable(self._driver.feed.watch(request.from_seq)):
            yield batch

    async def WatchFinalizedNotices(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Context
    ) -> AsyncIterator[consensus_pb2.FinalizedNotice]:
        async for notice in _resumable(self._driver.feed.watch_notices(request.from_seq)):
            yield notice
