"""The executor commits a batch it voted for by reference to its VotedBatch record, and
falls back to sending the vertices when storage refuses the reference.

Real components: the real storage service (gRPC on port 0, RocksDB in a temp dir, the
test validator set), the real executor and signature verifier, real ML-DSA-87
signatures on the vertices and on the certificates' COMMITs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from prometheus_client import REGISTRY

from cretoai.crypto import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from devkit.storage import certificate, make_config
from services.consensus.core import durable
from services.consensus.core.codec import certificate_from_pb
from services.consensus.core.crypto import batch_digest
from services.consensus.core.durable import ExecutedState
from services.consensus.core.messages import Request
from services.consensus.core.ready import Committed
from services.consensus.executor import Executed, Executor
from services.consensus.retry import StorageCallFailed
from services.consensus.verify import Verifier
from tests.storage.support import Running, collect, start_service

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED

_BACKEND = get_backend("cryptography")
CLIENT = NodeKey(
    private=_BACKEND.private_key_from_seed(hashlib.sha3_256(b"executor test client").digest()),
    path=Path("client.key"),
)


def commits() -> dict[str, float]:
    """The executor's count of commits by form."""
    out = {}
    for form in ("reference", "full", "fallback"):
        value = REGISTRY.get_sample_value("cretoai_consensus_storage_commits_total", {"form": form})
        out[form] = 0.0 if value is None else value
    return out


def refusals() -> dict[str, float]:
    out = {}
    for check in ("reference", "digest"):
        value = REGISTRY.get_sample_value("cretoai_storage_commit_refusals_total", {"check": check})
        out[check] = 0.0 if value is None else value
    return out


class Calls:
    """The real storage stub, remembering each CommitBatch the executor makes and how it
    ended: "reference" or "full", and the status code (OK or the refusal)."""

    def __init__(self, stub: storage_pb2_grpc.StorageStub) -> None:
        self._stub = stub
        self.commits: list[tuple[str, str]] = []
        self.status_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def CommitBatch(self, request: storage_pb2.CommitBatchRequest, **kwargs: Any) -> Any:
        form = "reference" if request.voted_batch_key else "full"
        if form == "reference":
            assert not request.batch.vertices
        call = self._stub.CommitBatch(request, **kwargs)

        async def recorded() -> storage_pb2.CommitBatchResponse:
            try:
                reply: storage_pb2.CommitBatchResponse = await call
            except grpc.aio.AioRpcError as exc:
                self.commits.append((form, exc.code().name))
                raise
            self.commits.append((form, "OK"))
            return reply

        return recorded()

    def take(self) -> list[tuple[str, str]]:
        out, self.commits = self.commits, []
        return out

    def GetVertexStatuses(
        self, request: storage_pb2.GetVertexStatusesRequest, **kwargs: Any
    ) -> Any:
        self.status_reads += 1
        return self._stub.GetVertexStatuses(request, **kwargs)


@dataclass
class Node:
    """The executor of one node and that node's storage service."""

    storage: Running
    executor: Executor
    verifier: Verifier
    calls: Calls

    async def vote(self, committed: Committed) -> None:
        """What the replica persists before its first vote (the driver's WriteState)."""
        await self.write(durable.batch_key(committed.digest), committed.requests)

    async def write(self, key: str, requests: Sequence[Request]) -> None:
        value = durable.encode_batch(tuple(requests))
        await self.storage.stub.WriteState(
            storage_pb2.WriteStateRequest(
                puts=[storage_pb2.StateEntry(key=key.encode(), value=value)]
            )
        )

    async def record(self, h: bytes) -> vertex_pb2.VertexRecord:
        reply = await self.storage.stub.GetVertex(storage_pb2.GetVertexRequest(hash=h))
        assert reply.found
        record: vertex_pb2.VertexRecord = reply.record
        return record


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    storage = await start_service(make_config(tmp_path))
    verifier = Verifier(_BACKEND, threads=2)
    calls = Calls(storage.stub)
    executor = Executor(cast(Any, calls), verifier, executed=ExecutedState())
    try:
        yield Node(storage, executor, verifier, calls)
    finally:
        verifier.close()
        await storage.stop()


class Chain:
    """Committed batches of signed vertices, each vertex a child of the previous batch's
    first vertex; certificates are real quorums of the test validator set."""

    def __init__(self) -> None:
        self.seq = 0
        self.tip: list[bytes] = []

    def vertices(self, count: int) -> list[vertex_pb2.Vertex]:
        now = int(time.time() * 1000)
        out = [
            make_vertex(CLIENT, f"payload {self.seq} {i}".encode() * 50, self.tip, now)
            for i in range(count)
        ]
        if out:
            self.tip = [vertex_hash(out[0])]
        return out

    def committed(self, vertices: Sequence[vertex_pb2.Vertex]) -> Committed:
        self.seq += 1
        requests = tuple(
            Request(hash=signed_digest(v), body=v.SerializeToString()) for v in vertices
        )
        digest = batch_digest(r.hash for r in requests)
        cert = certificate_from_pb(certificate(self.seq, digest))
        return Committed(seq=self.seq, digest=digest, requests=requests, certificate=cert)

    def next(self, count: int = 3) -> Committed:
        return self.committed(self.vertices(count))


async def check_stored(node: Node, committed: Committed, executed: Executed) -> None:
    """The batch as executed is in storage: every vertex finalized at its seq, the log
    entry with the exact copies."""
    vertices = [vertex_pb2.Vertex.FromString(r.body) for r in committed.requests]
    assert list(executed.batch.vertices) == vertices
    assert executed.batch.seq == committed.seq
    for vertex in vertices:
        record = await node.record(vertex_hash(vertex))
        assert (record.status, record.seq) == (FINALIZED, committed.seq)
        assert record.vertex == vertex
    [entry] = await collect(
        node.storage.stub.GetFinalized(
            storage_pb2.GetFinalizedRequest(from_seq=committed.seq, to_seq=committed.seq + 1)
        )
    )
    assert entry.batch == executed.batch


async def test_a_batch_the_replica_voted_for_is_committed_by_reference(node: Node) -> None:
    chain = Chain()
    for _ in range(3):
        committed = chain.next(4)
        await node.vote(committed)
        before, counted = refusals(), commits()
        executed = await node.executor.execute(committed)
        assert node.calls.take() == [("reference", "OK")]
        assert refusals() == before
        assert commits() == {**counted, "reference": counted["reference"] + 1}
        await check_stored(node, committed, executed)
        assert not executed.batch.rejected
    assert node.executor.seq == 3


async def test_a_batch_without_a_voted_record_is_sent_with_its_vertices(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """State transfer, or a replica that committed without voting: no record, storage
    refuses the reference, and the executor sends the vertices."""
    chain = Chain()
    voted = chain.next()
    await node.vote(voted)
    await node.executor.execute(voted)
    not_voted = chain.next()
    node.calls.take()
    before = refusals()
    with caplog.at_level(logging.DEBUG, logger="services.consensus.executor"):
        executed = await node.executor.execute(not_voted)
    assert node.calls.take() == [("reference", "FAILED_PRECONDITION"), ("full", "OK")]
    assert refusals() == {**before, "reference": before["reference"] + 1}
    await check_stored(node, not_voted, executed)
    [line] = [r for r in caplog.records if r.name == "services.consensus.executor"]
    assert line.levelno == logging.DEBUG
    assert line.fields["code"] == "FAILED_PRECONDITION"  # type: ignore[attr-defined]
    assert "no voted batch" in line.fields["error"]  # type: ignore[attr-defined]
    # the state digest chain goes on as after a full commit; the next voted batch by reference
    after = chain.next()
    await node.vote(after)
    await node.executor.execute(after)
    assert node.calls.take() == [("reference", "OK")]
    assert node.executor.seq == 3


async def test_a_record_deleted_by_garbage_collection_before_execution_falls_back(
    node: Node,
) -> None:
    """A stable checkpoint in the same Ready as the execution deletes ``batch/`` records
    (persisted before the Ready executes): the reference finds nothing, the bodies go."""
    chain = Chain()
    committed = chain.next()
    await node.vote(committed)
    await node.storage.stub.WriteState(
        storage_pb2.WriteStateRequest(deletes=[durable.batch_key(committed.digest).encode()])
    )
    before, counted = refusals(), commits()
    executed = await node.executor.execute(committed)
    assert node.calls.take() == [("reference", "FAILED_PRECONDITION"), ("full", "OK")]
    assert refusals() == {**before, "reference": before["reference"] + 1}
    assert commits() == {**counted, "fallback": counted["fallback"] + 1}
    await check_stored(node, committed, executed)


async def test_a_record_that_does_not_match_the_batch_falls_back_with_a_warning(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """Another local process wrote other requests under the batch's key (storage's port is
    reachable): storage refuses them by the digest, and the executor sends the vertices."""
    chain = Chain()
    committed = chain.next(2)
    # another copy of the same contents (signed again: ML-DSA signatures are randomized)
    copies = [
        make_vertex(CLIENT, v.payload, list(v.parents), v.timestamp_ms)
        for v in (vertex_pb2.Vertex.FromString(r.body) for r in committed.requests)
    ]
    forged = [Request(hash=signed_digest(v), body=v.SerializeToString()) for v in copies]
    assert [r.hash for r in forged] != [r.hash for r in committed.requests]
    await node.write(durable.batch_key(committed.digest), forged)
    before = refusals()
    with caplog.at_level(logging.WARNING, logger="services.consensus.executor"):
        executed = await node.executor.execute(committed)
    assert node.calls.take() == [("reference", "INVALID_ARGUMENT"), ("full", "OK")]
    assert refusals() == {**before, "digest": before["digest"] + 1}
    await check_stored(node, committed, executed)
    [line] = [r for r in caplog.records if r.name == "services.consensus.executor"]
    assert line.levelno == logging.WARNING
    assert "not the digest of the voted batch" in line.fields["error"]  # type: ignore[attr-defined]


async def test_an_empty_batch_is_sent_in_full(node: Node) -> None:
    chain = Chain()
    counted = commits()
    executed = await node.executor.execute(chain.committed([]))
    assert node.calls.take() == [("full", "OK")]
    assert commits() == {**counted, "full": counted["full"] + 1}
    assert executed.batch.seq == 1 and not executed.batch.vertices


async def test_a_refusal_the_vertices_cannot_cure_is_not_masked(tmp_path: Path) -> None:
    """The executor believes it executed seq 1, storage is empty: by reference and in full,
    FAILED_PRECONDITION (a gap); the full form's answer is raised."""
    storage = await start_service(make_config(tmp_path))
    verifier = Verifier(_BACKEND, threads=1)
    try:
        calls = Calls(storage.stub)
        executor = Executor(cast(Any, calls), verifier, executed=ExecutedState(seq=1))
        chain = Chain()
        chain.seq = 1
        committed = chain.next()
        node = Node(storage, executor, verifier, calls)
        await node.vote(committed)
        with pytest.raises(StorageCallFailed) as info:
            await executor.execute(committed)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not follow last_seq 0" in info.value.details
        assert calls.take() == [
            ("reference", "FAILED_PRECONDITION"),
            ("full", "FAILED_PRECONDITION"),
        ]
        assert executor.seq == 1
    finally:
        verifier.close()
        await storage.stop()


async def test_contents_noted_on_arrival_are_used_once_and_bounded(node: Node) -> None:
    """The driver notes each arriving copy's vertex hash: execution takes it instead of
    hashing the copy again (and drops it), and the notes are bounded."""
    chain = Chain()
    committed = chain.next(3)
    for request in committed.requests:
        vertex = vertex_pb2.Vertex.FromString(request.body)
        node.executor.note_content(request.hash, vertex_hash(vertex))
    assert len(node.executor._contents) == 3
    await node.vote(committed)
    executed = await node.executor.execute(committed)
    assert node.executor._contents == {}
    assert executed.contents == tuple(
        vertex_hash(vertex_pb2.Vertex.FromString(r.body)) for r in committed.requests
    )
    await check_stored(node, committed, executed)
    bounded = Executor(
        cast(Any, node.calls), node.verifier, executed=ExecutedState(), contents_max=2
    )
    for i in range(3):
        bounded.note_content(bytes([i]) * 32, bytes([i]) * 32)
    assert list(bounded._contents) == [bytes([1]) * 32, bytes([2]) * 32]


def cache_hits() -> float:
    return REGISTRY.get_sample_value("cretoai_consensus_vertex_verify_cache_hits_total") or 0.0


async def test_verdicts_of_executed_copies_leave_the_cache(node: Node) -> None:
    """Copies verified on arrival are served from the cache at their execution, then
    dropped from it: the cache holds what is in flight, not every finalized copy."""
    chain = Chain()
    committed = chain.next(5)
    vertices = [vertex_pb2.Vertex.FromString(r.body) for r in committed.requests]
    copies = [r.hash for r in committed.requests]
    contents = [vertex_hash(v) for v in vertices]
    assert await node.verifier.verify_vertices(vertices, copies, contents) == [True] * 5
    assert node.verifier.cached == 5
    await node.vote(committed)
    hits = cache_hits()
    executed = await node.executor.execute(committed)
    assert cache_hits() - hits == 5  # none verified again at execution
    assert not executed.batch.rejected
    assert node.verifier.cached == 0


def executed_vertices() -> dict[str, float]:
    out = {}
    for outcome in ("finalized", "rejected"):
        value = REGISTRY.get_sample_value(
            "cretoai_consensus_vertices_executed_total", {"outcome": outcome}
        )
        out[outcome] = 0.0 if value is None else value
    return out


async def test_executed_vertices_are_counted_by_outcome(node: Node) -> None:
    """The counters move by the batch's vertices, finalized and rejected (counted once per
    batch, not once per vertex)."""
    chain = Chain()
    vertices = chain.vertices(5)
    forged = vertex_pb2.Vertex()
    forged.CopyFrom(vertices[2])
    forged.signature = bytes(len(forged.signature))  # its creator never signed this
    vertices[2] = forged
    committed = chain.committed(vertices)
    await node.vote(committed)
    before = executed_vertices()
    executed = await node.executor.execute(committed)
    assert list(executed.batch.rejected) == [vertex_hash(forged)]
    after = executed_vertices()
    assert after["finalized"] - before["finalized"] == 4
    assert after["rejected"] - before["rejected"] == 1


def status_lookups() -> dict[str, float]:
    out = {}
    for source in ("recent", "storage"):
        value = REGISTRY.get_sample_value(
            "cretoai_consensus_execution_lookups_total", {"source": source}
        )
        out[source] = 0.0 if value is None else value
    mismatches = REGISTRY.get_sample_value("cretoai_consensus_recent_mismatches_total")
    out["mismatches"] = 0.0 if mismatches is None else mismatches
    return out


async def execute(node: Node, committed: Committed) -> tuple[Executed, int, dict[str, float]]:
    """Execute a voted batch: what came out, the storage status reads it made, and how the
    lookup counters moved."""
    await node.vote(committed)
    before, reads = status_lookups(), node.calls.status_reads
    executed = await node.executor.execute(committed)
    after = status_lookups()
    return executed, node.calls.status_reads - reads, {k: after[k] - before[k] for k in after}


async def test_a_batch_on_vertices_finalized_here_is_executed_without_a_status_read(
    node: Node, tmp_path: Path
) -> None:
    """Roots read storage; their children, a replay and a child of the replayed vertex are
    decided from what the executor finalized; an unknown parent, and after a restart a
    parent older than the watermark, read storage again. Every outcome is stored."""
    chain = Chain()
    roots = chain.next(3)  # no parents: nothing bounds their seq
    executed, reads, moved = await execute(node, roots)
    assert (reads, moved["storage"], moved["recent"]) == (1, 1, 0)
    await check_stored(node, roots, executed)

    children = chain.vertices(3)
    executed, reads, moved = await execute(node, chain.committed(children))
    assert (reads, moved["storage"], moved["recent"]) == (0, 0, 1)
    assert not executed.batch.rejected

    # the same copy again, and a new vertex on it: a duplicate and a finalized vertex
    grandchild = make_vertex(CLIENT, b"on a replayed parent", [vertex_hash(children[1])], 1)
    replay = chain.committed([children[1], grandchild])
    executed, reads, moved = await execute(node, replay)
    assert (reads, moved["recent"]) == (0, 1)
    assert list(executed.batch.rejected) == [vertex_hash(children[1])]
    assert executed.results[0].reject_reason == "duplicate: already finalized"
    assert (await node.record(vertex_hash(grandchild))).status == FINALIZED

    unknown = make_vertex(CLIENT, b"an orphan", [vertex_hash(grandchild), bytes(32)], 2)
    executed, reads, moved = await execute(node, chain.committed([unknown]))
    assert (reads, moved["storage"]) == (1, 1)
    assert executed.results[0].reject_reason == f"unknown parent {bytes(32).hex()}"

    # a restarted executor knows nothing it finalized before: its watermark is seq 4
    restarted = Executor(
        cast(Any, node.calls),
        node.verifier,
        executed=ExecutedState(seq=node.executor.seq, state_digest=node.executor.state_digest),
    )
    node.executor = restarted
    late = make_vertex(CLIENT, b"on an older parent", [vertex_hash(grandchild)], 3)
    executed, reads, moved = await execute(node, chain.committed([late]))
    assert (reads, moved["storage"]) == (1, 1)
    assert not executed.batch.rejected
    sibling = make_vertex(CLIENT, b"on the new one", [vertex_hash(late)], 4)
    executed, reads, moved = await execute(node, chain.committed([sibling]))
    assert (reads, moved["recent"]) == (0, 1)
    assert not executed.batch.rejected


async def test_the_cross_check_counts_a_difference_and_executes_by_storage(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """With cross_check_recent, storage is read even when the executor's memory decides;
    a memory that is wrong (here: made wrong on purpose) is logged and counted, and
    storage's answer is what executes."""
    node.executor = Executor(
        cast(Any, node.calls), node.verifier, executed=ExecutedState(), cross_check_recent=True
    )
    chain = Chain()
    executed, reads, moved = await execute(node, chain.next(2))
    children = chain.vertices(2)
    executed, reads, moved = await execute(node, chain.committed(children))
    assert (reads, moved["recent"], moved["mismatches"]) == (1, 1, 0)
    assert not executed.batch.rejected

    never = b"\x07" * 32  # finalized nowhere, but "remembered" here
    node.executor.recent.add(node.executor.seq, [never])
    child = make_vertex(CLIENT, b"on a vertex storage never had", [never], 5)
    with caplog.at_level(logging.ERROR, logger="services.consensus.executor"):
        executed, reads, moved = await execute(node, chain.committed([child]))
    assert (reads, moved["recent"], moved["mismatches"]) == (1, 1, 1)
    assert executed.results[0].reject_reason == f"unknown parent {never.hex()}"
    [line] = [r for r in caplog.records if r.name == "services.consensus.executor"]
    assert line.fields["recent_only"] == never.hex()  # type: ignore[attr-defined]
