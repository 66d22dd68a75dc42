"""Harness of the gateway tests: the real gateway and storage services, a stand-in consensus.

The consensus service is built in parallel with the gateway, so these tests run
:class:`FakeConsensus`, a minimal servicer of ``consensus.proto`` over real gRPC,
in its place. Like the real one it verifies client signatures (answering
``bad_signature`` in the trailing metadata) and checks parents (finalized in
storage or pending here, else FAILED_PRECONDITION). It records submissions, holds them
pending, and finalizes them on demand the way the real one does: one atomic
``CommitBatch`` to the REAL storage service (RocksDB in the test's temp dir)
first, then the batch on every ``WatchFinalized`` stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2_grpc

from cretoai.config import NodeConfig, load_config
from cretoai.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, NodeKey, get_backend, load_private_key
from cretoai.errors import ERROR_CODE_KEY
from cretoai.serving import GrpcService
from cretoai.v1 import (
    consensus_pb2,
    consensus_pb2_grpc,
    gateway_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vertex_pb2,
)
from cretoai.vertex import (
    BAD_SIGNATURE_MESSAGE,
    make_vertex,
    signed_digest,
    verify_vertex,
    vertex_hash,
)
from services.consensus.core.codec import encode_body
from services.consensus.core.crypto import MlDsaSigner, batch_digest
from services.consensus.core.messages import Commit
from services.consensus.servicer import OVERLOADED_MESSAGE
from services.gateway.service import GatewayService
from services.gateway.service import build as build_gateway
from services.storage.service import build as build_storage

PENDING = vertex_pb2.VERTEX_STATUS_PENDING
FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED

#: Every wait in these tests is bounded by this (seconds).
TIMEOUT = 15.0


T = TypeVar("T")


def client_key() -> NodeKey:
    """A fresh ML-DSA-87 key for a client that signs its own vertices."""
    private = get_backend("cryptography").private_key_from_seed(os.urandom(32))
    return NodeKey(private=private, path=Path("<client>"))


def signed_body(
    key: NodeKey, payload: bytes, parents: Iterable[bytes] = (), timestamp_ms: int | None = None
) -> tuple[dict[str, Any], vertex_pb2.Vertex]:
    """A client-signed submission body and its vertex."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    vertex = make_vertex(key, payload, list(parents), ts)
    body = {
        "payload": base64.b64encode(payload).decode(),
        "parents": [p.hex() for p in vertex.parents],
        "public_key": vertex.creator.hex(),
        "signature": vertex.signature.hex(),
        "timestamp_ms": ts,
    }
    return body, vertex


def raw_vertex(payload: bytes) -> vertex_pb2.Vertex:
    """A unique vertex as consensus would execute it (storage does not check signatures)."""
    return vertex_pb2.Vertex(
        payload=payload,
        creator=os.urandom(PUBLIC_KEY_SIZE),
        timestamp_ms=1,
        signature=os.urandom(SIGNATURE_SIZE),
    )


@dataclass(frozen=True)
class Refusal:
    """Why the fake consensus refuses a vertex: the status SubmitVertex ends with."""

    code: grpc.StatusCode
    message: str
    error_code: str = ""


class FakeConsensus(consensus_pb2_grpc.ConsensusServicer):
    """The tests' stand-in for the consensus service (see the module docstring)."""

    def __init__(self, storage: storage_pb2_grpc.StorageStub, validator: NodeKey) -> None:
        self._storage = storage
        #: The node's validator key: it signs the COMMIT of each batch (a one-node cluster's
        #: quorum), since storage stores a batch only with a valid finality certificate.
        self._signer = MlDsaSigner(validator.private)
        self._backend = get_backend("cryptography")
        self.submissions: list[vertex_pb2.Vertex] = []
        self.submit_metadata: list[dict[str, str]] = []
        self.pending: dict[bytes, vertex_pb2.Vertex] = {}
        self.executed: dict[bytes, vertex_pb2.VertexStatus] = {}
        self.batches: list[vertex_pb2.FinalizedBatch] = []
        #: Each batch's notice (WatchFinalizedNotices), as the real one builds it.
        self.notices: list[consensus_pb2.FinalizedNotice] = []
        #: Whether notices name their copies (the real one's do not when read back from
        #: storage, after the gateway subscribed again).
        self.notice_copies = True
        #: Answer WatchFinalizedNotices UNIMPLEMENTED, as a consensus service older than it.
        self.notices_unimplemented = False
        self.watch_requests: list[int] = []
        self.submit_error: grpc.StatusCode | None = None
        #: Vertices per submitting call (SubmitVertex: 1), and each SubmitVertices call's
        #: traceparents.
        self.submit_calls: list[int] = []
        self.submit_traceparents: list[list[str]] = []
        #: Each SubmitVertices call's ``admitted`` (the gateway admitted its vertices).
        self.submit_admitted: list[bool] = []
        #: While set (and not yet fired), submitting calls wait for it.
        self.hold: asyncio.Event | None = None
        #: Answer SubmitVertices with UNIMPLEMENTED, as an older consensus service.
        self.batch_unimplemented = False
        self.ready = True
        #: Peers (of 3) this node reports connected: 2 or more make a quorum with it.
        self.connected_peers = 3
        #: Report waiting for a view the peers are not in.
        self.alone_in_view = False
        #: Of the peers not connected, how many refuse this node (ban it).
        self.refusing_peers = 0
        #: Answer WatchAdmission with UNIMPLEMENTED, as a consensus service older than it
        #: (the default here: the gateway then leaves admission to consensus's answers,
        #: which most tests script; tests of the stream turn it off and restart the watch).
        self.admission_unimplemented = True
        #: What WatchAdmission says: whether new submissions would be refused (overloaded).
        self.overloaded = False
        self._admission_watchers: set[asyncio.Queue[bool | None]] = set()
        self._watchers: set[asyncio.Queue[bool]] = set()
        self._changed = asyncio.Condition()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Until ``predicate()`` holds (checked at every change of this fake), bounded."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    # ------------------------------------------------------------------ RPCs

    async def _call_started(self, context: Any, vertices: int, *, admitted: bool = False) -> None:
        self.submit_metadata.append(
            {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        )
        self.submit_calls.append(vertices)
        await self._notify()
        if self.overloaded and not admitted:  # as the real one: at the door, at once
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED_MESSAGE)
        if self.hold is not None:
            await self.hold.wait()

    async def SubmitVertex(
        self, request: consensus_pb2.SubmitVertexRequest, context: Any
    ) -> consensus_pb2.SubmitVertexResponse:
        await self._call_started(context, 1)
        if self.submit_error is not None:
            await context.abort(self.submit_error, "set by the test")
        outcome = await self._admit(request.vertex)
        if isinstance(outcome, Refusal):
            await context.abort(
                outcome.code,
                outcome.message,
                trailing_metadata=((ERROR_CODE_KEY, outcome.error_code),)
                if outcome.error_code
                else (),
            )
        assert isinstance(outcome, consensus_pb2.SubmitVertexResponse)
        return outcome

    async def SubmitVertices(
        self, request: consensus_pb2.SubmitVerticesRequest, context: Any
    ) -> consensus_pb2.SubmitVerticesResponse:
        """As the real one: each vertex as SubmitVertex, in order, answered on its own."""
        self.submit_admitted.append(request.admitted)
        await self._call_started(context, len(request.vertices), admitted=request.admitted)
        self.submit_traceparents.append(list(request.traceparents))
        if self.batch_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if self.submit_error is not None:
            await context.abort(self.submit_error, "set by the test")
        response = consensus_pb2.SubmitVerticesResponse()
        for vertex in request.vertices:
            outcome = await self._admit(vertex)
            result = response.results.add()
            if isinstance(outcome, Refusal):
                result.error.code = outcome.code.value[0]
                result.error.message = outcome.message
                result.error.error_code = outcome.error_code
            else:
                result.accepted.CopyFrom(outcome)
        return response

    async def _admit(
        self, vertex: vertex_pb2.Vertex
    ) -> consensus_pb2.SubmitVertexResponse | Refusal:
        if not verify_vertex(vertex, self._backend):  # as the real one: once per node
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, BAD_SIGNATURE_MESSAGE, "bad_signature")
        h = vertex_hash(vertex)
        if h in self.executed:
            return consensus_pb2.SubmitVertexResponse(
                hash=h, status=self.executed[h], duplicate=True
            )
        if vertex.parents:  # as the real one: finalized (storage) or pending here
            try:
                reply = await self._storage.GetVertexStatuses(
                    storage_pb2.GetVertexStatusesRequest(hashes=list(vertex.parents))
                )
            except grpc.aio.AioRpcError as exc:
                return Refusal(
                    grpc.StatusCode.UNAVAILABLE,
                    f"storage is unavailable: {exc.details()}",
                    "storage_unavailable",
                )
            for parent, record in zip(vertex.parents, reply.records, strict=True):
                if record.status == vertex_pb2.VERTEX_STATUS_REJECTED:
                    return Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"parent {parent.hex()} was rejected at execution ({record.reject_reason})",
                    )
                if (
                    record.status != vertex_pb2.VERTEX_STATUS_FINALIZED
                    and parent not in self.pending
                ):
                    return Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"parent {parent.hex()} is neither finalized nor pending at this node",
                    )
        duplicate = h in self.pending
        self.pending[h] = vertex
        self.submissions.append(vertex)
        await self._notify()
        return consensus_pb2.SubmitVertexResponse(
            hash=h, status=PENDING, duplicate=duplicate, copy=signed_digest(vertex)
        )

    async def GetPending(
        self, request: consensus_pb2.GetPendingRequest, context: Any
    ) -> consensus_pb2.GetPendingResponse:
        vertex = self.pending.get(request.hash)
        if vertex is None:
            return consensus_pb2.GetPendingResponse(found=False)
        return consensus_pb2.GetPendingResponse(found=True, vertex=vertex)

    async def GetStatus(
        self, request: consensus_pb2.GetStatusRequest, context: Any
    ) -> consensus_pb2.NodeStatus:
        return consensus_pb2.NodeStatus(
            node_id="fake-node-id",
            node_name="node1",
            replica=0,
            view=3,
            primary=3 % 4,
            last_executed_seq=len(self.batches),
            pool_size=len(self.pending),
            n=4,
            f=1,
            ready=self.ready,
            evidence=2,
            alone_in_view=self.alone_in_view,
            peers=[
                consensus_pb2.PeerStatus(
                    name=f"node{i + 2}",
                    node_id=f"peer{i + 1}",
                    replica=i + 1,
                    connected=i < self.connected_peers,
                    refuses_this_node=i >= 3 - self.refusing_peers,
                    rtt_ms=0.5,
                )
                for i in range(3)
            ],
        )

    async def WatchFinalized(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Any
    ) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        async for batch in self._watch(request, context, self.batches):
            yield batch

    async def WatchFinalizedNotices(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Any
    ) -> AsyncIterator[consensus_pb2.FinalizedNotice]:
        if self.notices_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        async for notice in self._watch(request, context, self.notices):
            yield notice

    async def _watch(
        self, request: consensus_pb2.WatchFinalizedRequest, context: Any, items: list[T]
    ) -> AsyncIterator[T]:
        self.watch_requests.append(request.from_seq)
        wake: asyncio.Queue[bool] = asyncio.Queue()
        self._watchers.add(wake)
        await self._notify()
        try:
            seq = max(request.from_seq, 1)
            while True:
                while seq <= len(items):
                    yield items[seq - 1]
                    seq += 1
                if not await wake.get():
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "dropped by the test")
        finally:
            self._watchers.discard(wake)
            await self._notify()

    async def WatchAdmission(
        self, request: consensus_pb2.WatchAdmissionRequest, context: Any
    ) -> AsyncIterator[consensus_pb2.AdmissionState]:
        if self.admission_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        changes: asyncio.Queue[bool | None] = asyncio.Queue()
        self._admission_watchers.add(changes)
        await self._notify()
        try:
            state: bool | None = self.overloaded
            while state is not None:
                yield consensus_pb2.AdmissionState(overloaded=state)
                state = await changes.get()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "dropped by the test")
        finally:
            self._admission_watchers.discard(changes)
            await self._notify()

    # ------------------------------------------------------------------ test controls

    @property
    def admission_watchers(self) -> int:
        return len(self._admission_watchers)

    def set_overloaded(self, overloaded: bool) -> None:
        """Say on every WatchAdmission stream that consensus is (no longer) overloaded."""
        self.overloaded = overloaded
        for changes in self._admission_watchers:
            changes.put_nowait(overloaded)

    def drop_admission_watchers(self) -> None:
        """Fail every WatchAdmission stream (UNAVAILABLE)."""
        for changes in self._admission_watchers:
            changes.put_nowait(None)

    def drop_watchers(self) -> None:
        """Fail every WatchFinalized stream (UNAVAILABLE)."""
        for wake in self._watchers:
            wake.put_nowait(False)

    async def finalize(
        self, vertices: list[vertex_pb2.Vertex], *, rejected: Iterable[bytes] = ()
    ) -> vertex_pb2.FinalizedBatch:
        """Execute ``vertices`` as the next batch: commit to storage, then publish."""
        rejected = set(rejected)
        seq = len(self.batches) + 1
        hashes = [vertex_hash(v) for v in vertices]
        digest = batch_digest(signed_digest(v) for v in vertices)
        commit = encode_body(Commit(view=0, seq=seq, digest=digest))
        certificate = vertex_pb2.FinalityCertificate(
            view=0,
            seq=seq,
            batch_digest=digest,
            commits=[
                vertex_pb2.SignedMessage(body=commit, signature=self._signer.sign(commit), signer=0)
            ],
        )
        batch = vertex_pb2.FinalizedBatch(
            seq=seq,
            batch_digest=digest,
            vertices=vertices,
            rejected=[h for h in hashes if h in rejected],
            certificate=certificate,
            state_digest=hashlib.sha3_256(b"state" + digest).digest(),
        )
        results = [
            storage_pb2.ExecutionResult(
                hash=h,
                rejected=h in rejected,
                reject_reason="test: rejected" if h in rejected else "",
            )
            for h in hashes
        ]
        committed = await self._storage.CommitBatch(
            storage_pb2.CommitBatchRequest(batch=batch, results=results), timeout=TIMEOUT
        )
        for h in hashes:
            self.pending.pop(h, None)
            self.executed[h] = REJECTED if h in rejected else FINALIZED
        self.batches.append(batch)
        header = vertex_pb2.FinalizedBatch()
        header.CopyFrom(batch)
        header.ClearField("vertices")
        self.notices.append(
            consensus_pb2.FinalizedNotice(
                batch=header,
                results=[
                    vertex_pb2.VertexRecord(
                        hash=h,
                        status=REJECTED if h in rejected else FINALIZED,
                        seq=seq,
                        height=height,
                        reject_reason=r.reject_reason,
                    )
                    for h, r, height in zip(hashes, results, committed.heights, strict=True)
                ],
                copies=[signed_digest(v) for v in vertices] if self.notice_copies else [],
            )
        )
        for wake in self._watchers:
            wake.put_nowait(True)
        await self._notify()
        return batch

    async def finalize_pending(self, **kwargs: Any) -> vertex_pb2.FinalizedBatch:
        return await self.finalize(list(self.pending.values()), **kwargs)


@dataclass
class Node:
    """One node under test: real storage and gateway, the fake consensus, clients."""

    cfg: NodeConfig
    storage: GrpcService
    consensus: FakeConsensus
    consensus_server: grpc.aio.Server
    gateway: GatewayService
    http: aiohttp.ClientSession
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.GatewayStub

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def submitter_key(self) -> NodeKey:
        """The gateway's key for unsigned submissions (cluster init makes one per node)."""
        from cretoai.crypto import load_private_key

        path = self.cfg.submitter_key_path
        assert path is not None
        return load_private_key(path, "cryptography")

    async def request(
        self, method: str, path: str, *, body: Any = None, data: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of one HTTP request; bounded."""
        async with self.http.request(
            method,
            self.url + path,
            json=body,
            data=data,
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            **kwargs,
        ) as resp:
            body = await resp.read()
            parsed = json.loads(body) if body else None
            return resp.status, parsed

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return await self.request("POST", path, body=body, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.request("GET", path, **kwargs)

    async def post_from(self, source: str, path: str, body: Any) -> tuple[int, Any]:
        """POST from another loopback source address (another client, to the gateway's
        per-address limits)."""
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as resp,
        ):
            raw = await resp.read()
            return resp.status, json.loads(raw) if raw else None

    async def stop_consensus(self) -> None:
        await self.consensus_server.stop(0)


def node_config(path: Any, **gateway: Any) -> NodeConfig:
    """The cluster config of node 1, with metrics off and ``gateway`` settings applied.

    Internal TLS is off: these tests run the gateway against a fake consensus on
    loopback (tests/test_internal_tls.py covers TLS).
    """
    cfg = load_config(path, environ={})
    return dataclasses.replace(
        cfg,
        gateway=dataclasses.replace(cfg.gateway, **{"metrics": "", **gateway}),
        storage=dataclasses.replace(cfg.storage, metrics=""),
        tls=dataclasses.replace(cfg.tls, ca="", cert="", key=""),
    )


def with_listen(cfg: NodeConfig, section: str, address: str) -> NodeConfig:
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), listen=address)}
    )


@contextlib.asynccontextmanager
async def start_node(cfg: NodeConfig) -> AsyncIterator[Node]:
    """Storage, the fake consensus and the gateway, each on a port picked by the OS.

    The transport address is a bound socket that does not listen: nothing answers there.
    """
    stack = contextlib.AsyncExitStack()
    try:
        silent = stack.enter_context(socket.socket())
        silent.bind(("127.0.0.1", 0))
        cfg = with_listen(cfg, "transport", f"127.0.0.1:{silent.getsockname()[1]}")
        cfg = dataclasses.replace(
            cfg,
            gateway=dataclasses.replace(cfg.gateway, http="127.0.0.1:0", grpc="127.0.0.1:0"),
        )
        storage = await build_storage(with_listen(cfg, "storage", "127.0.0.1:0"))
        storage.grace = 0.5
        await storage.start()
        stack.push_async_callback(storage.stop)
        cfg = with_listen(cfg, "storage", f"127.0.0.1:{storage.port}")
        storage_channel = grpc.aio.insecure_channel(cfg.storage.listen)
        stack.push_async_callback(storage_channel.close)
        fake = FakeConsensus(
            storage_pb2_grpc.StorageStub(storage_channel),
            load_private_key(cfg.key_path, "cryptography"),
        )
        server = grpc.aio.server()
        consensus_pb2_grpc.add_ConsensusServicer_to_server(fake, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stack.push_async_callback(server.stop, 0)
        cfg = with_listen(cfg, "consensus", f"127.0.0.1:{port}")
        gateway = await build_gateway(cfg)
        gateway.grace = 0.5
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        stack.push_async_callback(channel.close)
        node = Node(
            cfg=cfg,
            storage=storage,
            consensus=fake,
            consensus_server=server,
            gateway=gateway,
            http=http,
            channel=channel,
            stub=gateway_pb2_grpc.GatewayStub(channel),
        )
        await fake.wait_for(lambda: fake.watchers == 1)  # the gateway subscribed
        yield node
    finally:
        await stack.aclose()


def small_rcvbuf_connector() -> aiohttp.TCPConnector:
    """A client whose sockets have a tiny receive buffer (a slow reader fills up fast)."""

    def make(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    return aiohttp.TCPConnector(socket_factory=make)


# ---------------------------------------------------------------- holding the coalescer


def patient(node: Node, monkeypatch: Any) -> None:
    """The gateway waits for a consensus call held by the test however long it takes (it
    would otherwise refuse new submissions once the call is slow)."""
    gateway = node.gateway.gateway
    monkeypatch.setattr(
        gateway, "_limits", dataclasses.replace(gateway._limits, slow_call_s=3600.0)
    )
    monkeypatch.setattr(gateway._coalescer, "_max_queue_wait_s", 3600.0)


async def hold_both_calls(
    node: Node,
) -> tuple[list[asyncio.Task[tuple[int, Any]]], asyncio.Event]:
    """Two submissions whose calls consensus holds until the event returned is set: both
    calls in flight."""
    fake = node.consensus
    hold = fake.hold = asyncio.Event()
    calls = len(fake.submit_calls)
    held: list[asyncio.Task[tuple[int, Any]]] = []
    for i in range(2):
        payload = base64.b64encode(b"held %d" % i).decode()
        held.append(asyncio.create_task(node.post("/v1/vertices", {"payload": payload})))
        await fake.wait_for(lambda: len(fake.submit_calls) == calls + len(held))
    return held, hold


async def queue_behind_the_calls(
    node: Node, monkeypatch: Any, payload: bytes
) -> asyncio.Task[tuple[int, Any]]:
    """A submission of ``payload``, returned once it waits in the coalescer's queue (both
    calls in flight: :func:`hold_both_calls`)."""
    coalescer = node.gateway.gateway._coalescer
    queued_here = asyncio.Event()
    schedule = coalescer._schedule

    def noting_the_queue() -> None:  # the coalescer schedules right after it queues
        schedule()
        if coalescer._queue:
            queued_here.set()

    monkeypatch.setattr(coalescer, "_schedule", noting_the_queue)
    body = {"payload": base64.b64encode(payload).decode()}
    queued = asyncio.create_task(node.post("/v1/vertices", body))
    await asyncio.wait_for(queued_here.wait(), TIMEOUT)
    return queued
