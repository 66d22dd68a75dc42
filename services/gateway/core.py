"""What the gateway does, shared by its REST, WebSocket and gRPC APIs.

A submission is checked in this order, cheapest first: payload size (413),
shape (422; an unsigned vertex is then signed by the gateway's submitter key,
never a validator key, in a thread pool), and only then handed to consensus,
which verifies the client's signature once for the node (422 ``bad_signature``)
and its parents (each finalized or pending at this node, else 422
``unknown_parent``); its refusals are mapped by
:func:`services.gateway.errors.from_backend`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc

from cretoai.crypto import SIGNATURE_SIZE, NodeKey
from cretoai.v1 import consensus_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import make_vertex, shape_error, signed_digest, vertex_hash
from services.gateway import metrics
from services.gateway.backends import PROBE_TIMEOUT_S, ConsensusClient, StorageClient, probe
from services.gateway.codec import Draft
from services.gateway.errors import ApiError
from services.gateway.finality import FinalityHub, Outcome

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
PENDING = vertex_pb2.VERTEX_STATUS_PENDING

#: Most finalized batches in one page of ``GET /v1/finalized``.
MAX_PAGE = 100
#: A page stops early once its batches reach this many bytes (at least one batch).
PAGE_BYTES = 4 * 1024 * 1024
#: Batches read from storage per request while filling a page.
READ_CHUNK = 16


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_payload_bytes: int
    wait_timeout_s: float
    #: Submissions prepared at once (shape, node signature); more get 429 overloaded.
    max_in_progress: int = 256
    #: After consensus refused a vertex as overloaded, new submissions are refused
    #: here for this long without any work (no signing, no call to consensus).
    shed_hold_s: float = 0.1


@dataclass(frozen=True, kw_only=True)
class Submitted:
    hash: bytes
    status: vertex_pb2.VertexStatus
    duplicate: bool
    #: The stored record when the vertex is executed (waited for, or already final).
    record: vertex_pb2.VertexRecord | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Gateway:
    def __init__(
        self,
        *,
        key: NodeKey | None,
        consensus: ConsensusClient,
        storage: StorageClient,
        hub: FinalityHub,
        pool: Executor,
        limits: Limits,
        probes: dict[str, grpc.aio.Channel],
    ) -> None:
        self._key = key
        self._consensus = consensus
        self._storage = storage
        self._pool = pool
        self._limits = limits
        #: Channels to the node's other services, by name, for health probes.
        self._probes = probes
        self.hub = hub
        self._in_progress = 0
        #: Monotonic time until which submissions are shed (consensus said overloaded).
        self._shed_until = 0.0

    # ------------------------------------------------------------------ submit

    async def submit(self, draft: Draft, *, wait: bool, api: str) -> Submitted:
        """Validate, sign or verify, and hand a vertex to consensus (counted by outcome)."""
        try:
            result = await self._submit(draft, wait=wait)
        except ApiError as exc:
            metrics.SUBMISSIONS.labels(api, exc.code).inc()
            raise
        metrics.SUBMISSIONS.labels(api, "duplicate" if result.duplicate else "accepted").inc()
        return result

    async def _submit(self, draft: Draft, *, wait: bool) -> Submitted:
        limit = self._limits.max_payload_bytes
        if len(draft.payload) > limit:
            raise ApiError(
                "payload_too_large", f"payload is {len(draft.payload)} bytes; the limit is {limit}"
            )
        if time.monotonic() < self._shed_until:
            raise ApiError(
                "overloaded",
                "consensus at this node is behind its offered load; retry with backoff",
            )
        if self._in_progress >= self._limits.max_in_progress:
            raise ApiError(
                "overloaded",
                f"{self._in_progress} submissions are being validated here "
                "(gateway.max_submissions_in_progress); retry with backoff",
            )
        self._in_progress += 1
        try:
            vertex, h = await self._vertex_of(draft)
        finally:
            self._in_progress -= 1
        if not wait:
            reply = await self._submit_to_consensus(vertex)
            record = await self._stored(h) if reply.status in (FINALIZED, REJECTED) else None
            return Submitted(hash=h, status=reply.status, duplicate=reply.duplicate, record=record)
        started = time.perf_counter()
        with self.hub.waiter(h, signed_digest(vertex)) as final:
            reply = await self._submit_to_consensus(vertex)
            if reply.status in (FINALIZED, REJECTED):
                record = await self._stored(h)
            else:
                record = await self._await_final(h, final, started)
        return Submitted(hash=h, status=record.status, duplicate=reply.duplicate, record=record)

    async def _submit_to_consensus(
        self, vertex: vertex_pb2.Vertex
    ) -> consensus_pb2.SubmitVertexResponse:
        try:
            return await self._consensus.submit(vertex)
        except ApiError as exc:
            if exc.code == "overloaded":
                self._shed_until = time.monotonic() + self._limits.shed_hold_s
            raise

    async def _vertex_of(self, draft: Draft) -> tuple[vertex_pb2.Vertex, bytes]:
        loop = asyncio.get_running_loop()
        if draft.signed:
            vertex = vertex_pb2.Vertex(
                payload=draft.payload,
                parents=draft.parents,
                creator=draft.creator,
                timestamp_ms=draft.timestamp_ms,
                signature=draft.signature,
            )
            self._check_shape(vertex)
            # Consensus verifies the signature (once per node, with its cache).
            return vertex, vertex_hash(vertex)
        if self._key is None:
            raise ApiError(
                "signature_required",
                "this gateway does not sign submissions (gateway.submitter_key is unset): "
                "sign the vertex yourself and send public_key, signature and timestamp_ms",
            )
        # Check the shape before spending a signature on it.
        self._check_shape(
            vertex_pb2.Vertex(
                payload=draft.payload,
                parents=draft.parents,
                creator=self._key.public_key,
                signature=bytes(SIGNATURE_SIZE),
            )
        )
        return await loop.run_in_executor(self._pool, self._sign, draft, now_ms())

    def _check_shape(self, vertex: vertex_pb2.Vertex) -> None:
        problem = shape_error(vertex, max_payload_bytes=self._limits.max_payload_bytes)
        if problem is not None:
            raise ApiError("invalid_vertex", problem)

    def _sign(self, draft: Draft, timestamp_ms: int) -> tuple[vertex_pb2.Vertex, bytes]:
        assert self._key is not None
        vertex = make_vertex(self._key, draft.payload, draft.parents, timestamp_ms)
        return vertex, vertex_hash(vertex)

    async def _stored(self, h: bytes) -> vertex_pb2.VertexRecord:
        record = await self._storage.vertex(h)
        if record is None:
            raise ApiError(
                "storage_unavailable", f"vertex {h.hex()} is executed but not readable yet"
            )
        return record

    async def _await_final(
        self, h: bytes, final: asyncio.Future[Outcome], started: float
    ) -> vertex_pb2.VertexRecord:
        timeout = self._limits.wait_timeout_s
        try:
            outcome = await asyncio.wait_for(final, timeout)
        except TimeoutError:
            # A batch executed while the gateway re-subscribed is in storage all the same.
            record = await self._storage.vertex(h)
            if record is None:
                metrics.FINALITY_WAIT.labels("timeout").observe(time.perf_counter() - started)
                raise ApiError(
                    "wait_timeout",
                    f"vertex {h.hex()} was accepted and is pending, not final after "
                    f"{timeout:g}s; poll GET /v1/vertices/{h.hex()}",
                ) from None
        else:
            record = await self._stored(h)
            # A rejected copy says nothing of the content: another copy may be (or have
            # been) finalized, and the stored record tells. A finalized one must match.
            if not outcome.rejected and (record.status != FINALIZED or outcome.seq != record.seq):
                raise ApiError(
                    "backend_error",
                    f"vertex {h.hex()}: finalized at seq {outcome.seq}, stored at {record.seq}",
                )
        label = "rejected" if record.status == REJECTED else "finalized"
        metrics.FINALITY_WAIT.labels(label).observe(time.perf_counter() - started)
        return record

    # ------------------------------------------------------------------ reads

    async def vertex(self, h: bytes) -> vertex_pb2.VertexRecord:
        """A finalized, rejected or pending vertex; ApiError ``not_found`` otherwise."""
        record = await self._storage.vertex(h)
        if record is not None:
            return record
        pending = await self._consensus.pending(h)
        if pending is not None:
            return vertex_pb2.VertexRecord(hash=h, vertex=pending, status=PENDING)
        record = await self._storage.vertex(h)  # executed between the two reads?
        if record is not None:
            return record
        raise ApiError("not_found", f"vertex {h.hex()} is not known to this node")

    async def finalized(self, from_seq: int, limit: int) -> list[storage_pb2.FinalizedEntry]:
        """Up to ``limit`` finalized batches from ``from_seq``, at most about PAGE_BYTES."""
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError("bad_request", f"limit: expected 1 to {MAX_PAGE}, got {limit}")
        entries: list[storage_pb2.FinalizedEntry] = []
        size = 0
        seq = max(from_seq, 1)
        while len(entries) < limit:
            want = min(READ_CHUNK, limit - len(entries))
            chunk = await self._storage.finalized(seq, limit=want)
            for entry in chunk:
                entry_size = entry.ByteSize()
                if entries and size + entry_size > PAGE_BYTES:
                    return entries
                entries.append(entry)
                size += entry_size
            if len(chunk) < want:
                break
            seq = chunk[-1].batch.seq + 1
        return entries

    async def status(self) -> consensus_pb2.NodeStatus:
        return await self._consensus.status()

    async def services(self) -> dict[str, str]:
        """The gRPC health of each service of this node (this one answers, so it serves)."""
        names = list(self._probes)
        states = await asyncio.gather(*(probe(self._probes[name]) for name in names))
        return {"gateway": "serving", **dict(zip(names, states, strict=True))}

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when consensus reports ready and storage serves."""

        async def consensus_state() -> str:
            try:
                status = await self._consensus.status(timeout=PROBE_TIMEOUT_S)
            except ApiError:
                return "unreachable"
            return "ready" if status.ready else "not_ready"

        consensus, storage = await asyncio.gather(consensus_state(), probe(self._probes["storage"]))
        checks = {"consensus": consensus, "storage": storage}
        return consensus == "ready" and storage == "serving", checks
