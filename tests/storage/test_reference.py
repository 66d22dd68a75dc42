"""CommitBatch by reference (``voted_batch_key``): the vertices from the consensus's
VotedBatch record, over real gRPC on a real RocksDB, checked exactly as a full batch."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from cretoai.v1 import pbft_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import signed_digest
from devkit.storage import certificate, commit_request, make_config, vertex_hash
from services.storage import keys
from services.storage.store import decode_vertex
from tests.storage.support import Dag, RawDb, Running, collect, make_vertex, start_service
from tests.storage.test_commit import Forgery, _forgeries, expect, get, stats

#: Every column family but the consensus state (where the by-reference side holds the
#: VotedBatch records the full side never wrote) and the evidence.
BATCH_CFS = (
    keys.DEFAULT,
    *(cf for cf in keys.COLUMN_FAMILIES if cf not in (keys.CONSENSUS_STATE, keys.EVIDENCE)),
)


def voted_key(digest: bytes) -> bytes:
    """The key the consensus writes a VotedBatch under (``core.durable.batch_key``)."""
    return f"batch/{digest.hex()}".encode()


def voted_record(vertices: list[vertex_pb2.Vertex]) -> bytes:
    """A VotedBatch as the consensus writes it (``core.durable.encode_batch``)."""
    return pbft_pb2.VotedBatch(
        request_hashes=[signed_digest(v) for v in vertices],
        request_bodies=[v.SerializeToString() for v in vertices],
    ).SerializeToString()


async def write_voted(
    running: Running, key: bytes, vertices: list[vertex_pb2.Vertex] | None, raw: bytes = b""
) -> None:
    value = voted_record(vertices) if vertices is not None else raw
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=key, value=value)])
    )


def by_reference(
    full: storage_pb2.CommitBatchRequest, key: bytes | None = None
) -> storage_pb2.CommitBatchRequest:
    """``full`` without its vertices, naming them by ``key`` (default: the digest's key)."""
    request = storage_pb2.CommitBatchRequest()
    request.CopyFrom(full)
    del request.batch.vertices[:]
    request.voted_batch_key = key if key is not None else voted_key(full.batch.batch_digest)
    return request


async def vote_and_commit_by_reference(
    running: Running, full: storage_pb2.CommitBatchRequest
) -> storage_pb2.CommitBatchResponse:
    await write_voted(running, voted_key(full.batch.batch_digest), list(full.batch.vertices))
    reply: storage_pb2.CommitBatchResponse = await running.stub.CommitBatch(by_reference(full))
    return reply


def stored_fields(db: RawDb, raw: bytes) -> vertex_pb2.Vertex:
    """A ``vertices`` value as the vertex it stores, read straight from the database."""

    def get(key: bytes) -> bytes:
        value = db.db.get(key)
        assert isinstance(value, bytes), key
        return value

    return decode_vertex(raw, lambda i: get(keys.creator_key(i)), body_of=get)


def refusals(check: str) -> float:
    value = REGISTRY.get_sample_value("cretoai_storage_commit_refusals_total", {"check": check})
    return 0.0 if value is None else value


async def assert_nothing_written(running: Running, request: storage_pb2.CommitBatchRequest) -> None:
    s = await stats(running)
    assert (s.last_seq, s.vertices, s.finalized_vertices, s.rejected_vertices) == (0, 0, 0, 0)
    for result in request.results:
        assert await get(running, result.hash) is None
    assert await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest())) == []


def _batches() -> list[storage_pb2.CommitBatchRequest]:
    """A few batches of a DAG: parents within and across batches, rejected vertices (one a
    duplicate of an accepted one), an accepted vertex that was rejected before."""
    dag = Dag(payload_size=512)
    first = dag.next_batch(5)
    second = dag.next_batch(4)
    late = make_vertex([first.results[0].hash])
    h_late = vertex_hash(late)
    third = commit_request(3, [late, first.batch.vertices[1], make_vertex()], rejected=[0, 1])
    fourth = commit_request(4, [late, make_vertex([h_late, second.results[3].hash])])
    return [first, second, third, fourth]


def _batch_items(db: RawDb, cf: str) -> list[tuple[bytes, bytes]]:
    """The column family's records, the counters without their count of writes (the side
    that commits by reference also wrote the voted batches)."""
    items = db.items(cf)
    for i, (key, value) in enumerate(items):
        if key == keys.COUNTERS_KEY and cf == keys.DEFAULT:
            counters = storage_pb2.StoredCounters.FromString(value)
            counters.ClearField("writes")
            items[i] = (key, counters.SerializeToString())
    return items


async def test_a_batch_by_reference_writes_exactly_what_the_full_form_writes(
    tmp_path: Path,
) -> None:
    batches = _batches()
    full_side = await start_service(make_config(tmp_path / "full"))
    ref_side = await start_service(make_config(tmp_path / "ref"))
    try:
        for request in batches:
            full_reply = await full_side.stub.CommitBatch(request)
            ref_reply = await vote_and_commit_by_reference(ref_side, request)
            assert ref_reply == full_reply
            assert not ref_reply.already_committed
        # read back through the service: the same vertices, statuses, heights, log
        for request in batches:
            for result in request.results:
                record = await get(ref_side, result.hash)
                assert record is not None
                assert record == await get(full_side, result.hash)
        finalized = storage_pb2.GetFinalizedRequest()
        assert await collect(ref_side.stub.GetFinalized(finalized)) == await collect(
            full_side.stub.GetFinalized(finalized)
        )
        entries = await collect(ref_side.stub.GetFinalized(finalized))
        assert [list(e.batch.vertices) for e in entries][:2] == [
            list(batches[0].batch.vertices),
            list(batches[1].batch.vertices),
        ]
        # the same batch again, by reference or in full, is a re-send (idempotent)
        again = await ref_side.stub.CommitBatch(by_reference(batches[1]))
        assert again.already_committed and list(again.heights) == list(
            (await full_side.stub.CommitBatch(batches[1])).heights
        )
        assert (await ref_side.stub.CommitBatch(batches[1])).already_committed
    finally:
        await full_side.stop()
        await ref_side.stop()
    # ... and on disk, key for key, every column family of the batches is the same, but
    # that the side by reference points at the voted bodies instead of copying them
    with RawDb(full_side.cfg.storage_path) as full_db, RawDb(ref_side.cfg.storage_path) as ref_db:
        for cf in BATCH_CFS:
            if cf == keys.VERTICES:
                continue
            # bodies stored once hold their creator keys, the full side's are interned
            apart = (keys.VOTED_PREFIX, keys.CREATOR_PREFIX)
            assert [(k, v) for k, v in _batch_items(ref_db, cf) if not k.startswith(apart)] == [
                (k, v) for k, v in _batch_items(full_db, cf) if not k.startswith(apart)
            ], cf
        full_vertices, ref_vertices = full_db.items(keys.VERTICES), ref_db.items(keys.VERTICES)
        assert [k for k, _ in ref_vertices] == [k for k, _ in full_vertices]
        assert all(storage_pb2.StoredVertex.FromString(v).voted_body for _, v in ref_vertices)
        assert not any(storage_pb2.StoredVertex.FromString(v).voted_body for _, v in full_vertices)
        assert [stored_fields(ref_db, v) for _, v in ref_vertices] == [
            stored_fields(full_db, v) for _, v in full_vertices
        ]
        assert full_db.items("consensus_state") == []
        assert [k for k, _ in ref_db.items("consensus_state")] == sorted(
            voted_key(r.batch.batch_digest) for r in batches
        )


async def test_a_reference_to_no_record_is_refused_and_nothing_is_written(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    genuine = commit_request(1, [make_vertex(), make_vertex()])
    before = refusals("reference")
    with caplog.at_level(logging.DEBUG, logger="services.storage.certify"):
        details = await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            running.stub.CommitBatch(by_reference(genuine)),
            "voted_batch_key: no voted batch at 'batch/" + genuine.batch.batch_digest.hex(),
            "send the batch with its vertices",
        )
    assert refusals("reference") == before + 1
    [line] = [r for r in caplog.records if r.name == "services.storage.certify"]
    assert line.fields == {"seq": 1, "check": "reference", "error": details}  # type: ignore[attr-defined]
    await assert_nothing_written(running, genuine)

    # a record deleted since (a stable checkpoint's garbage collection) is no record
    key = voted_key(genuine.batch.batch_digest)
    await write_voted(running, key, list(genuine.batch.vertices))
    await running.stub.WriteState(storage_pb2.WriteStateRequest(delete_prefixes=[b"batch/"]))
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(by_reference(genuine)),
        "no voted batch",
    )
    assert refusals("reference") == before + 2
    await assert_nothing_written(running, genuine)

    # the caller's fallback: the same batch with its vertices commits
    reply = await running.stub.CommitBatch(genuine)
    assert (reply.last_seq, reply.already_committed) == (1, False)


async def test_a_record_of_other_vertices_is_refused_and_nothing_is_written(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The record under the key is not the certified batch — other vertices, another copy
    (signature) of one of them, the same vertices in another order — and the results
    match the record: refused like a full batch whose vertices are not its digest's."""
    genuine = commit_request(1, [make_vertex(), make_vertex(), make_vertex()])
    key = voted_key(genuine.batch.batch_digest)
    vertices = list(genuine.batch.vertices)
    other_copy = vertex_pb2.Vertex()
    other_copy.CopyFrom(vertices[1])
    other_copy.signature = bytes(reversed(other_copy.signature))
    cases = {
        "other vertices": [make_vertex(), make_vertex(), make_vertex()],
        "other copy": [vertices[0], other_copy, vertices[2]],
        "reordered": [vertices[1], vertices[0], vertices[2]],
    }
    for name, recorded in cases.items():
        await write_voted(running, key, recorded)
        # results for what the record holds; the genuine digest and certificate
        request = commit_request(1, recorded)
        request.batch.batch_digest = genuine.batch.batch_digest
        request.batch.certificate.CopyFrom(genuine.batch.certificate)
        before = refusals("digest")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="services.storage.certify"):
            await expect(
                grpc.StatusCode.INVALID_ARGUMENT,
                running.stub.CommitBatch(by_reference(request, key)),
                "batch.batch_digest: not the digest of the voted batch at voted_batch_key "
                f"'batch/{genuine.batch.batch_digest.hex()}'",
            )
        assert refusals("digest") == before + 1, name
        assert [r.fields["check"] for r in caplog.records] == ["digest"]  # type: ignore[attr-defined]
        await assert_nothing_written(running, genuine)
        await assert_nothing_written(running, request)
    # the genuine results over a record of other contents, or of one vertex fewer: caught
    # before the proof, by the results (one per vertex, each its vertex's hash)
    await write_voted(running, key, cases["other vertices"])
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(by_reference(genuine)),
        "results[0].hash: not the hash of batch.vertices[0]",
    )
    await write_voted(running, key, vertices[:2])
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(by_reference(genuine)),
        "results: 3 for 2 vertices",
    )
    await assert_nothing_written(running, genuine)
    # the genuine record, under any key, commits
    await write_voted(running, b"elsewhere", vertices)
    reply = await running.stub.CommitBatch(by_reference(genuine, b"elsewhere"))
    assert (reply.last_seq, reply.already_committed) == (1, False)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b"\xff\xff\xff", "not a VotedBatch"),
        (
            pbft_pb2.VotedBatch(request_bodies=[b"\x0a\xff"]).SerializeToString(),
            "request_bodies[0] is not a vertex",
        ),
    ],
    ids=["not a VotedBatch", "a body that is not a vertex"],
)
async def test_a_record_that_holds_no_vertices_is_refused(
    running: Running, value: bytes, needle: str
) -> None:
    genuine = commit_request(1, [make_vertex()])
    key = voted_key(genuine.batch.batch_digest)
    await write_voted(running, key, None, value)
    before = refusals("reference")
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT, running.stub.CommitBatch(by_reference(genuine)), needle
    )
    assert refusals("reference") == before + 1
    await assert_nothing_written(running, genuine)


@pytest.mark.parametrize(
    ("name", "forge", "needle", "check"), _forgeries(), ids=[f[0] for f in _forgeries()]
)
async def test_a_forged_finalized_batch_by_reference_is_refused(
    running: Running, name: str, forge: Forgery, needle: str, check: str
) -> None:
    """Every forgery of the full form, with its vertices in a VotedBatch record instead:
    a genuine record proves nothing a certificate does not."""
    genuine = commit_request(1, [make_vertex(), make_vertex(), make_vertex()])
    forged = storage_pb2.CommitBatchRequest()
    forged.CopyFrom(genuine)
    forged = forge(forged) or forged
    key = voted_key(forged.batch.batch_digest)
    await write_voted(running, key, list(forged.batch.vertices))
    before = refusals(check)
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(by_reference(forged)),
        needle.replace("batch.vertices", "the voted batch at voted_batch_key"),
    )
    assert refusals(check) == before + 1
    await assert_nothing_written(running, genuine)
    # the genuine batch by reference (to its own record) still commits at that seq
    reply = await vote_and_commit_by_reference(running, genuine)
    assert (reply.last_seq, reply.already_committed) == (1, False)


async def test_a_reference_without_a_valid_certificate_reads_nothing_into_the_store(
    running: Running,
) -> None:
    """Below-quorum and other-seq certificates over a genuine record: refused, as in full."""
    genuine = commit_request(1, [make_vertex(), make_vertex()])
    await write_voted(running, voted_key(genuine.batch.batch_digest), list(genuine.batch.vertices))
    request = by_reference(genuine)
    request.batch.certificate.CopyFrom(certificate(1, genuine.batch.batch_digest, signers=[0, 1]))
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(request),
        "certificate has 2 COMMITs, need 3",
    )
    request.ClearField("batch")
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT, running.stub.CommitBatch(request), "batch: missing"
    )
    await assert_nothing_written(running, genuine)


async def test_a_malformed_reference_is_an_invalid_argument(running: Running) -> None:
    genuine = commit_request(1, [make_vertex()])
    await write_voted(running, voted_key(genuine.batch.batch_digest), list(genuine.batch.vertices))
    both = by_reference(genuine)
    both.batch.vertices.extend(genuine.batch.vertices)
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(both),
        "batch.vertices: 1 vertices beside voted_batch_key",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(by_reference(genuine, b"k" * 1025)),
        "voted_batch_key: 1025 bytes; the limit is 1024",
    )
    wrong_result = by_reference(genuine)
    wrong_result.results[0].hash = bytes(32)
    wrong_result.batch.ClearField("rejected")
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(wrong_result),
        "results[0].hash: not the hash of batch.vertices[0]",
    )
    await assert_nothing_written(running, genuine)
