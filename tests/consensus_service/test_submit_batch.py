"""Consensus ``SubmitVertices``: several vertices in one call, each answered on its own.

Real processes (storage, transport, consensus of a one-validator node, which orders
alone), real RocksDB, real gRPC with the node's internal TLS.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.trace import SpanContext, TraceFlags
from prometheus_client.parser import text_string_to_metric_families

from cretoai import registry
from cretoai.config import NodeConfig, load_config
from cretoai.errors import ERROR_CODE_KEY
from cretoai.telemetry import METRICS_CACHE_S, format_traceparent
from cretoai.v1 import consensus_pb2, consensus_pb2_grpc, storage_pb2, vertex_pb2
from cretoai.vertex import BAD_SIGNATURE_MESSAGE, signed_digest, vertex_hash
from devkit.ports import free_base_port
from node.clusterinit import init_cluster
from services.consensus.core.replica import ProposeResult
from services.consensus.recent import RecentFinalized
from services.consensus.servicer import MAX_SUBMIT_BYTES, MAX_SUBMIT_VERTICES, ConsensusServicer
from tests.consensus_service.support import NothingStored
from tests.consensus_service.test_failure import channel_to, start_service
from tests.gateway.support import client_key, signed_body
from tests.support.processes import Process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.asyncio(loop_scope="module"),
]

PENDING = vertex_pb2.VERTEX_STATUS_PENDING
FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
UNKNOWN = vertex_pb2.VERTEX_STATUS_UNSPECIFIED
KEY = client_key()


def vertex(payload: bytes, parents: list[bytes] | None = None) -> vertex_pb2.Vertex:
    _, v = signed_body(KEY, payload, parents or [])
    return v


def unique(label: bytes) -> bytes:
    return label + b" " + os.urandom(8).hex().encode()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NodeConfig]:
    """A one-validator node's config file and config."""
    directory: Path = tmp_path_factory.mktemp("submit-batch")
    base = free_base_port(40)
    layout = init_cluster(directory / "cluster", 1, http_port=base + 20, base_port=base)
    config = layout.nodes[0].config
    return config, load_config(config)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def consensus(
    node: tuple[Path, NodeConfig],
) -> AsyncIterator[consensus_pb2_grpc.ConsensusStub]:
    """The consensus of a one-validator node (with its storage and transport), ready."""
    config, cfg = node
    started: list[Process] = []
    try:
        for service in registry.NAMES[:-1]:  # storage, transport, consensus (no gateway)
            started.append(await start_service(config, cfg, service))
        async with channel_to(cfg, "consensus") as channel:
            stub = consensus_pb2_grpc.ConsensusStub(channel)
            deadline = time.monotonic() + 60
            while not (await stub.GetStatus(consensus_pb2.GetStatusRequest(), timeout=5)).ready:
                assert time.monotonic() < deadline, "consensus not ready within 60s"
                await asyncio.sleep(0.1)  # no event tells readiness; GetStatus is polled
            yield stub
    finally:
        for proc in reversed(started):
            await proc.stop()


async def submit(
    stub: consensus_pb2_grpc.ConsensusStub, vertices: list[vertex_pb2.Vertex], **kwargs: object
) -> list[consensus_pb2.SubmitVertexResult]:
    reply = await stub.SubmitVertices(
        consensus_pb2.SubmitVerticesRequest(vertices=vertices, **kwargs),  # type: ignore[arg-type]
        timeout=30,
    )
    assert len(reply.results) == len(vertices)
    return list(reply.results)


def accepted(result: consensus_pb2.SubmitVertexResult) -> consensus_pb2.SubmitVertexResponse:
    assert result.WhichOneof("outcome") == "accepted", result
    return result.accepted


def refused(result: consensus_pb2.SubmitVertexResult) -> consensus_pb2.SubmitVertexError:
    assert result.WhichOneof("outcome") == "error", result
    return result.error


async def finalized(
    stub: consensus_pb2_grpc.ConsensusStub, hashes: set[bytes]
) -> dict[bytes, tuple[int, bool]]:
    """(seq, rejected) of each of ``hashes`` once executed (the finalized stream from seq 1)."""
    seen: dict[bytes, tuple[int, bool]] = {}
    call = stub.WatchFinalized(consensus_pb2.WatchFinalizedRequest(from_seq=1), timeout=60)
    try:
        async for batch in call:
            rejected = set(batch.rejected)
            for v in batch.vertices:
                h = vertex_hash(v)
                if h in hashes:
                    seen[h] = (batch.seq, h in rejected)
            if set(seen) == hashes:
                return seen
    finally:
        call.cancel()
    raise AssertionError("the finalized stream ended")


async def test_a_batch_is_admitted_in_order_with_a_parent_earlier_in_it(
    consensus: consensus_pb2_grpc.ConsensusStub,
) -> None:
    root = vertex(unique(b"root"))
    child = vertex(unique(b"child"), [vertex_hash(root)])
    grandchild = vertex(unique(b"grandchild"), [vertex_hash(child), vertex_hash(root)])
    batch = [root, child, grandchild]
    results = await submit(consensus, batch)
    for v, result in zip(batch, results, strict=True):
        reply = accepted(result)
        assert reply.hash == vertex_hash(v) and reply.status == PENDING and not reply.duplicate
    # the same again: each is a duplicate (pending, or finalized by now)
    for result in await submit(consensus, batch):
        assert accepted(result).duplicate
    outcomes = await finalized(consensus, {vertex_hash(v) for v in batch})
    assert not any(rejected for _, rejected in outcomes.values()), outcomes
    order = [outcomes[vertex_hash(v)] for v in batch]
    assert order == sorted(order), order  # executed parent first


async def test_one_bad_vertex_never_fails_the_others(
    consensus: consensus_pb2_grpc.ConsensusStub,
) -> None:
    good = vertex(unique(b"good"))
    forged = vertex(unique(b"forged"))
    forged.signature = bytes([forged.signature[0] ^ 1]) + forged.signature[1:]
    orphan = vertex(unique(b"orphan"), [os.urandom(32)])
    malformed = vertex(unique(b"malformed"))
    malformed.creator = b"short"
    last = vertex(unique(b"last"), [vertex_hash(good)])
    results = await submit(consensus, [good, forged, orphan, malformed, last])

    assert accepted(results[0]).hash == vertex_hash(good)
    error = refused(results[1])
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error.error_code == "bad_signature" and error.message == BAD_SIGNATURE_MESSAGE
    error = refused(results[2])
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and not error.error_code
    assert "is neither finalized nor pending at this node" in error.message
    error = refused(results[3])
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error.message.startswith("malformed vertex: ")
    assert accepted(results[4]).status == PENDING

    # SubmitVertex (the batch of one) refuses the same way, as before
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await consensus.SubmitVertex(consensus_pb2.SubmitVertexRequest(vertex=forged), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == BAD_SIGNATURE_MESSAGE
    assert (ERROR_CODE_KEY, "bad_signature") in tuple(raised.value.trailing_metadata() or ())


async def test_notices_carry_each_vertexs_result_and_copy_without_bodies(
    consensus: consensus_pb2_grpc.ConsensusStub,
) -> None:
    """WatchFinalizedNotices, what the gateway follows: a live notice has the batch's
    header, each vertex's result (hash, status, height) and the signed digest of the copy
    ordered, and no bodies; the same batch read back from storage has the same results
    and no copies. SubmitVertices names the copy it accepted."""
    status = await consensus.GetStatus(consensus_pb2.GetStatusRequest(), timeout=10)
    start = status.last_executed_seq + 1
    live = consensus.WatchFinalizedNotices(
        consensus_pb2.WatchFinalizedRequest(from_seq=start), timeout=60
    )
    root = vertex(unique(b"noticed root"))
    child = vertex(unique(b"noticed child"), [vertex_hash(root)])
    results = await submit(consensus, [root, child])
    assert [accepted(r).copy for r in results] == [signed_digest(root), signed_digest(child)]
    wanted = {vertex_hash(root): root, vertex_hash(child): child}
    notices: list[consensus_pb2.FinalizedNotice] = []
    try:
        async for notice in live:
            notices.append(notice)
            if wanted.keys() <= {r.hash for n in notices for r in n.results}:
                break
    finally:
        live.cancel()
    heights = {}
    for notice in notices:
        assert not notice.batch.vertices and notice.batch.certificate.seq == notice.batch.seq
        assert len(notice.copies) == len(notice.results)
        for result, copy in zip(notice.results, notice.copies, strict=True):
            assert result.status == FINALIZED and result.seq == notice.batch.seq
            if result.hash in wanted:
                assert copy == signed_digest(wanted[result.hash])
                heights[result.hash] = result.height
    assert heights == {vertex_hash(root): 0, vertex_hash(child): 1}
    # read back from storage: the same results, no copies
    again = consensus.WatchFinalizedNotices(
        consensus_pb2.WatchFinalizedRequest(from_seq=start), timeout=60
    )
    try:
        stored = [await anext(aiter(again)) for _ in notices]
    finally:
        again.cancel()
    for notice, read in zip(notices, stored, strict=True):
        assert list(read.results) == list(notice.results) and not read.copies
        assert read.batch.batch_digest == notice.batch.batch_digest


def vertex_verifications(cfg: NodeConfig) -> float:
    """The consensus process's count of vertex signature verifications (its metrics)."""
    with urllib.request.urlopen(f"http://{cfg.consensus.metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cretoai_consensus_signature_verifications_total"
        and sample.labels.get("kind") == "vertex"
    )


async def test_a_finalized_copy_sent_again_is_not_verified_again(
    consensus: consensus_pb2_grpc.ConsensusStub, node: tuple[Path, NodeConfig]
) -> None:
    """Finalized copies are public; replaying them must not cost a verification each.
    Another copy of the same content (another signature) is still verified on its own."""
    _, cfg = node
    batch = [vertex(unique(b"replayed")) for _ in range(3)]
    for result in await submit(consensus, batch):
        assert not accepted(result).duplicate
    await finalized(consensus, {vertex_hash(v) for v in batch})

    before = vertex_verifications(cfg)
    for v, result in zip(batch, await submit(consensus, batch), strict=True):
        reply = accepted(result)
        assert (reply.hash, reply.status, reply.duplicate) == (vertex_hash(v), FINALIZED, True)

    forged = vertex_pb2.Vertex()
    forged.CopyFrom(batch[0])
    forged.signature = bytes([forged.signature[0] ^ 1]) + forged.signature[1:]
    error = refused((await submit(consensus, [forged]))[0])
    assert error.error_code == "bad_signature"
    # The endpoint serves a render for up to METRICS_CACHE_S: wait for one made after
    # both calls. One verification in all, the forged copy's; none for the replay.
    deadline = time.monotonic() + 10
    while (after := vertex_verifications(cfg)) == before:
        assert time.monotonic() < deadline, "no fresh render of the metrics within 10 s"
        await asyncio.sleep(METRICS_CACHE_S)
    assert after == before + 1


def admission_lookups(cfg: NodeConfig) -> dict[str, float]:
    """The consensus process's admission lookups by source (recent, storage)."""
    with urllib.request.urlopen(f"http://{cfg.consensus.metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cretoai_consensus_admission_lookups_total"
    }


async def test_a_child_of_vertices_finalized_here_is_admitted_without_asking_storage(
    consensus: consensus_pb2_grpc.ConsensusStub, node: tuple[Path, NodeConfig]
) -> None:
    """Admission asks storage whether a vertex is finalized and whether its parents are;
    for a vertex whose parents this process finalized lately it need not (recent.py): it
    is admitted from what the executor finalized. A replay of a finalized copy and a vertex
    with a parent nobody knows are still asked about, and answered as before."""
    _, cfg = node
    before = admission_lookups(cfg)  # a render from before any of this test's calls
    root = vertex(unique(b"recent root"))
    assert not accepted((await submit(consensus, [root]))[0]).duplicate
    await finalized(consensus, {vertex_hash(root)})

    child = vertex(unique(b"recent child"), [vertex_hash(root)])
    orphan = vertex(unique(b"recent orphan"), [vertex_hash(root), os.urandom(32)])
    results = await submit(consensus, [child, orphan, root])
    reply = accepted(results[0])
    assert (reply.status, reply.duplicate) == (PENDING, False)
    error = refused(results[1])
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "is neither finalized nor pending at this node" in error.message
    reply = accepted(results[2])
    assert (reply.status, reply.duplicate) == (FINALIZED, True)
    # The endpoint serves a render for up to METRICS_CACHE_S: wait for one made after
    # the second call (its lookups are counted together). The root (no parents), the
    # orphan and the replay from storage; the child from what was finalized here.
    deadline = time.monotonic() + 10
    while (after := admission_lookups(cfg)).get("recent", 0) == before.get("recent", 0):
        assert time.monotonic() < deadline, "no fresh render of the metrics within 10 s"
        await asyncio.sleep(METRICS_CACHE_S)
    assert after.get("recent", 0) - before.get("recent", 0) == 1
    assert after.get("storage", 0) - before.get("storage", 0) == 3
    outcome = await finalized(consensus, {vertex_hash(child)})
    assert outcome[vertex_hash(child)][1] is False  # executed and finalized, not rejected
    # the child, finalized here since: a replay, which storage answers copy by copy
    reply = accepted((await submit(consensus, [child]))[0])
    assert (reply.status, reply.duplicate) == (FINALIZED, True)


async def test_a_malformed_call_is_refused_whole(
    consensus: consensus_pb2_grpc.ConsensusStub,
) -> None:
    one = vertex(unique(b"one"))
    too_many = [one] * (MAX_SUBMIT_VERTICES + 1)
    big = [
        vertex(unique(b"big %d" % i) + bytes(1_000_000))
        for i in range(MAX_SUBMIT_BYTES // 1_000_000 + 1)
    ]
    for vertices, traceparents, needle in [
        ([], [], "no vertices"),
        (too_many, [], f"at most {MAX_SUBMIT_VERTICES} per call"),
        (big, [], f"at most {MAX_SUBMIT_BYTES} per call"),
        ([one], ["", ""], "2 traceparents for 1 vertices"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await submit(consensus, vertices, traceparents=traceparents)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (raised.value.details() or ""), raised.value.details()
    # nothing of them was admitted
    reply = await consensus.GetPending(
        consensus_pb2.GetPendingRequest(hash=vertex_hash(one)), timeout=10
    )
    assert not reply.found


class _Driver:
    """Just what ConsensusServicer's submit path uses of the driver; records each
    proposal with the span context current when it reached the driver."""

    ready = True

    def __init__(self) -> None:
        self.pending: dict[bytes, vertex_pb2.Vertex] = {}
        self.proposed: list[tuple[bytes, SpanContext]] = []
        self.replica = self
        self.recent = RecentFinalized(watermark=0)  # knows nothing: storage is asked

    def overloaded(self) -> bool:
        return False

    async def verify_vertices(
        self, vertices: list[vertex_pb2.Vertex], copies: list[bytes], contents: list[bytes]
    ) -> list[bool]:
        return [True] * len(vertices)

    async def propose(
        self,
        vertex: vertex_pb2.Vertex,
        content: bytes,
        copy: bytes | None = None,
        *,
        admitted: bool = False,
    ) -> ProposeResult:
        assert admitted  # the servicer decided admission when the call arrived
        self.proposed.append((content, trace.get_current_span().get_span_context()))
        self.pending[content] = vertex
        await asyncio.sleep(0)
        return ProposeResult.ACCEPTED


async def test_each_vertex_is_proposed_under_its_own_trace_context(
    cluster_factory: Any,
) -> None:
    """A call carrying several submitters' vertices: the driver sees each one's sampled
    context (kept with the pending vertex), and none for a vertex without one."""
    cfg = load_config(cluster_factory(1).nodes[0].config)
    driver = _Driver()
    servicer = ConsensusServicer(cfg, cast(Any, driver), cast(Any, NothingStored()))
    sampled = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    first, second, third = (vertex(unique(b"traced %d" % i)) for i in range(3))
    request = consensus_pb2.SubmitVerticesRequest(
        vertices=[first, second, third], traceparents=[format_traceparent(sampled), "", "garbage"]
    )
    reply = await servicer.SubmitVertices(request, cast(Any, None))
    assert all(r.WhichOneof("outcome") == "accepted" for r in reply.results)
    assert [h for h, _ in driver.proposed] == [vertex_hash(v) for v in (first, second, third)]
    contexts = [context for _, context in driver.proposed]
    assert contexts[0].trace_id == sampled.trace_id and contexts[0].trace_flags.sampled
    assert not contexts[1].is_valid and not contexts[2].is_valid


class _Storage(NothingStored):
    """Storage's status lookups: whatever ``finalized`` holds is FINALIZED."""

    def __init__(self) -> None:
        self.finalized: set[bytes] = set()
        self.lookups = 0

    async def GetVertexStatuses(
        self, request: storage_pb2.GetVertexStatusesRequest, timeout: float
    ) -> storage_pb2.GetVertexStatusesResponse:
        self.lookups += 1
        return storage_pb2.GetVertexStatusesResponse(
            records=[
                vertex_pb2.VertexRecord(
                    hash=h, status=FINALIZED if h in self.finalized else UNKNOWN
                )
                for h in request.hashes
            ]
        )


class _ExecutingDriver(_Driver):
    """While the servicer verifies, the parent pending at the call's arrival is executed:
    storage has it finalized, then it leaves the pending set (the driver's order)."""

    def __init__(self, storage: _Storage, parent: bytes) -> None:
        super().__init__()
        self.storage, self.parent = storage, parent

    async def verify_vertices(
        self, vertices: list[vertex_pb2.Vertex], copies: list[bytes], contents: list[bytes]
    ) -> list[bool]:
        self.storage.finalized.add(self.parent)
        self.pending.pop(self.parent, None)
        return [True] * len(vertices)


async def test_a_parent_executed_while_its_child_is_verified_is_found(
    cluster_factory: Any,
) -> None:
    """The statuses are read before verifying (a replayed finalized copy is answered
    without a verification); a parent pending then and executed during the verification
    is neither pending nor, in that first answer, finalized: it is read again."""
    cfg = load_config(cluster_factory(1).nodes[0].config)
    parent = vertex(unique(b"parent"))
    child = vertex(unique(b"child"), [vertex_hash(parent)])
    storage = _Storage()
    driver = _ExecutingDriver(storage, vertex_hash(parent))
    driver.pending[vertex_hash(parent)] = parent
    servicer = ConsensusServicer(cfg, cast(Any, driver), cast(Any, storage))
    reply = await servicer.SubmitVertices(
        consensus_pb2.SubmitVerticesRequest(vertices=[child]), cast(Any, None)
    )
    (result,) = reply.results
    assert result.WhichOneof("outcome") == "accepted", result
    assert [h for h, _ in driver.proposed] == [vertex_hash(child)]
    assert storage.lookups == 2  # the first, and the parent's again
