"""Crash consistency: SIGKILL the storage service in the middle of many writes, many times.

Each round starts the real service process on the same database, streams
CommitBatch calls (and, concurrently, consensus-state writes), and kills it
with SIGKILL at a random moment. Then the database is reopened directly
(RocksDB recovery, read-only) and checked key by key: every batch up to
``last_seq`` is wholly present (finalized entry, every vertex with its
metadata, edges and both index entries), nothing of any later batch exists,
there is no gap, the counters match the contents, and every acknowledged write
is there. The next round restarts the service, which must agree, re-sends a
batch that was lost, and goes on.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cretoai.v1 import storage_pb2, storage_pb2_grpc
from devkit.storage import ServiceProcess
from services.storage import keys
from services.storage.store import Counters, decode_vertex
from tests.storage.support import Dag, RawDb

pytestmark = pytest.mark.slow

KILLS = 24
VERTICES_PER_BATCH = 10  # realistic vertices (1 KB payload, 2592 B key, 4627 B signature)
ROUND_TIMEOUT_S = 30.0


@dataclass
class History:
    """What the client sent and what the service acknowledged."""

    sent: dict[int, storage_pb2.CommitBatchRequest] = field(default_factory=dict)
    acked_seq: int = 0
    acked_state: int = 0


async def drive(
    stub: storage_pb2_grpc.StorageStub, dag: Dag, history: History, start_seq: int
) -> None:
    """Commit batches from ``start_seq`` (re-sending any sent before), forever."""
    seq = start_seq
    while True:
        request = history.sent.get(seq)
        if request is None:
            request = dag.next_batch(VERTICES_PER_BATCH)
            assert request.batch.seq == seq
            history.sent[seq] = request
        reply = await stub.CommitBatch(request, timeout=ROUND_TIMEOUT_S)
        assert reply.last_seq == seq
        history.acked_seq = seq
        seq += 1


async def drive_state(stub: storage_pb2_grpc.StorageStub, history: History) -> None:
    """Consensus-state writes racing the commits: a counter and a growing log under a prefix."""
    n = history.acked_state
    while True:
        n += 1
        await stub.WriteState(
            storage_pb2.WriteStateRequest(
                puts=[
                    storage_pb2.StateEntry(key=b"counter", value=keys.u64(n)),
                    storage_pb2.StateEntry(key=b"log/" + keys.u64(n), value=os.urandom(200)),
                ],
                delete_prefixes=[b"log/" + keys.u64(n - 3)] if n > 3 else [],
            ),
            timeout=ROUND_TIMEOUT_S,
        )
        history.acked_state = n


def check_database(db: Path, history: History, seed: int) -> int:
    """Reopen the killed database and check it key by key; returns its last_seq."""
    why = f"(seed {seed})"
    with RawDb(db, read_only=True) as raw:
        raw_counters = raw.db[keys.COUNTERS_KEY]
        assert isinstance(raw_counters, bytes), why
        counters = Counters.from_bytes(raw_counters)
        last = counters.last_seq
        assert last >= history.acked_seq, f"an acknowledged batch was lost {why}"
        assert last <= max(history.sent, default=0), why

        finalized = raw.items(keys.FINALIZED)
        assert [keys.read_u64(k) for k, _ in finalized] == list(range(1, last + 1)), (
            f"the finalized log has a gap or an extra entry {why}"
        )
        metas = {k: storage_pb2.StoredVertexMeta.FromString(v) for k, v in raw.items(keys.METADATA)}
        bodies = dict(raw.items(keys.VERTICES))
        edges = {k for k, _ in raw.items(keys.EDGES)}
        by_height = dict(raw.items(keys.INDEX_HEIGHT))
        by_time = dict(raw.items(keys.INDEX_TIMESTAMP))

        def creator_of(creator_id: bytes) -> bytes:
            creator = raw.db[keys.creator_key(creator_id)]
            assert isinstance(creator, bytes), f"a creator is missing {why}"
            return creator

        expected_vertices = 0
        expected_edges = set()
        for seq_key, value in finalized:
            seq = keys.read_u64(seq_key)
            request = history.sent[seq]
            stored = storage_pb2.StoredBatch.FromString(value)
            assert stored.header.batch_digest == request.batch.batch_digest, why
            assert stored.header.certificate == request.batch.certificate, why
            assert [r.hash for r in stored.results] == [r.hash for r in request.results], why
            for index, (result, vertex) in enumerate(
                zip(stored.results, request.batch.vertices, strict=True)
            ):
                meta = metas.get(result.hash)
                assert meta is not None, f"seq {seq} is missing a vertex {why}"
                assert (meta.seq, meta.index, meta.height) == (seq, index, result.height), why
                assert decode_vertex(bodies[result.hash], creator_of) == vertex, why
                assert by_height[keys.position_key(meta.height, seq, index)] == result.hash, why
                assert by_time[keys.position_key(vertex.timestamp_ms, seq, index)] == result.hash
                for parent in vertex.parents:
                    expected_edges.add(keys.edge_key(parent, result.hash))
                expected_vertices += 1
        # nothing of a later batch: every key is accounted for by a batch <= last
        assert len(metas) == len(bodies) == expected_vertices, f"partial batch {why}"
        assert len(by_height) == len(by_time) == expected_vertices, f"partial batch {why}"
        assert edges == expected_edges, f"partial batch {why}"
        assert (counters.vertices, counters.finalized_vertices, counters.edges) == (
            expected_vertices,
            expected_vertices,
            len(expected_edges),
        ), why

        state = dict(raw.items(keys.CONSENSUS_STATE))
        counter = keys.read_u64(state[b"counter"]) if b"counter" in state else 0
        assert counter >= history.acked_state, f"an acknowledged state write was lost {why}"
        # the counter and its log entry were one write: both or neither
        logs = sorted(keys.read_u64(k[4:]) for k in state if k.startswith(b"log/"))
        assert logs == list(range(max(1, counter - 2), counter + 1)), why
        history.acked_state = counter
        return last


async def test_sigkill_during_writes_never_leaves_a_partial_batch_or_a_gap(
    tmp_path: Path,
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    db = tmp_path / "db"
    proc = ServiceProcess.create(tmp_path, db=db)
    dag = Dag(payload_size=1024)
    history = History()
    last = 0
    # per kill: was a batch in flight, and did it survive (committed, not yet acknowledged)?
    in_flight: list[str] = []
    started = time.monotonic()
    for _ in range(KILLS):
        proc.spawn()
        try:
            await proc.wait_serving()
            async with proc.channel() as channel:
                stub = storage_pb2_grpc.StorageStub(channel)
                stats = await stub.GetStats(storage_pb2.GetStatsRequest())
                assert stats.last_seq == last, f"the service disagrees (seed {seed})"
                # the client side of the crash: anything in flight is unanswered
                tasks = [
                    asyncio.create_task(drive(stub, dag, history, last + 1)),
                    asyncio.create_task(drive_state(stub, history)),
                ]
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                proc.kill()
                for task in tasks:
                    with pytest.raises(grpc.aio.AioRpcError):
                        await asyncio.wait_for(task, ROUND_TIMEOUT_S)
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()
        acked, sent = history.acked_seq, max(history.sent, default=0)
        last = check_database(db, history, seed)
        if sent > acked:
            in_flight.append("survived" if last == sent else "lost")
        assert history.acked_seq > 0, f"no progress (seed {seed})"
    elapsed = time.monotonic() - started
    assert last >= 5 * KILLS, f"too few batches to mean something: {last} (seed {seed})"
    # the kills landed in the middle of the stream, not between rounds
    assert len(in_flight) >= KILLS // 2, f"{in_flight} (seed {seed})"

    # a last restart: the service serves everything and goes on from last + 1
    proc.spawn()
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            stats = await stub.GetStats(storage_pb2.GetStatsRequest())
            assert stats.last_seq == last
            await drive_once(stub, dag, history, last + 1)
    finally:
        assert proc.terminate() == 0
    print(
        f"crash test: seed {seed}, {KILLS} kills, {last} batches, {elapsed:.1f}s; "
        f"in-flight batch at the kill: {in_flight.count('survived')} survived, "
        f"{in_flight.count('lost')} lost, {KILLS - len(in_flight)} none"
    )


async def drive_once(
    stub: storage_pb2_grpc.StorageStub, dag: Dag, history: History, seq: int
) -> None:
    request = history.sent.get(seq) or dag.next_batch(VERTICES_PER_BATCH)
    reply = await stub.CommitBatch(request, timeout=ROUND_TIMEOUT_S)
    assert (reply.last_seq, reply.already_committed) == (seq, False)
