"""CommitBatch over real gRPC on a real RocksDB: ordering, heights, idempotency, every refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from cretoai.crypto import get_backend
from cretoai.v1 import storage_pb2, vertex_pb2
from devkit.storage import (
    certificate,
    commit_request,
    make_config,
    outsider_key,
    signed_commit,
    validator_keys,
    validator_public_keys,
    vertex_hash,
)
from services.consensus.core.codec import encode_body
from services.consensus.core.messages import Commit
from services.storage.certify import Certifier
from tests.storage.support import Dag, Running, collect, make_vertex, start_service

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
UNSPECIFIED = vertex_pb2.VERTEX_STATUS_UNSPECIFIED


async def stats(running: Running) -> storage_pb2.StorageStats:
    reply: storage_pb2.StorageStats = await running.stub.GetStats(storage_pb2.GetStatsRequest())
    return reply


async def get(running: Running, h: bytes) -> vertex_pb2.VertexRecord | None:
    reply = await running.stub.GetVertex(storage_pb2.GetVertexRequest(hash=h))
    return reply.record if reply.found else None


async def expect(code: grpc.StatusCode, call: object, *needles: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    for needle in needles:
        assert needle in details, details
    return details


async def test_batches_commit_in_order_with_heights_from_parents(running: Running) -> None:
    a = make_vertex()
    b = make_vertex()
    ha, hb = vertex_hash(a), vertex_hash(b)
    first = await running.stub.CommitBatch(commit_request(1, [a, b]))
    assert (first.last_seq, first.already_committed, list(first.heights)) == (1, False, [0, 0])

    # parents from an earlier batch and from earlier positions of the same batch
    c = make_vertex([ha])
    hc = vertex_hash(c)
    d = make_vertex([hc, hb])
    hd = vertex_hash(d)
    e = make_vertex([hd, ha])
    second = await running.stub.CommitBatch(commit_request(2, [c, d, e]))
    assert second.last_seq == 2
    assert list(second.heights) == [1, 2, 3]

    record = await get(running, hd)
    assert record is not None
    assert (record.status, record.seq, record.height) == (FINALIZED, 2, 2)
    assert record.vertex == d
    assert record.certificate.seq == 2
    assert record.certificate.batch_digest == commit_request(2, [c, d, e]).batch.batch_digest
    s = await stats(running)
    assert (s.last_seq, s.vertices, s.finalized_vertices, s.rejected_vertices) == (2, 5, 5, 0)
    assert s.edges == 5


async def test_an_empty_batch_is_a_valid_null_request(running: Running) -> None:
    reply = await running.stub.CommitBatch(commit_request(1, []))
    assert reply.last_seq == 1 and list(reply.heights) == []
    entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
    assert [e.batch.seq for e in entries] == [1]
    assert list(entries[0].batch.vertices) == []


async def test_a_gap_is_refused_and_nothing_is_written(running: Running) -> None:
    dag = Dag()
    await running.stub.CommitBatch(dag.next_batch(3))
    dag.seq += 1  # skip seq 2
    skipped = dag.next_batch(3)
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(skipped),
        "batch.seq 3 does not follow last_seq 1",
        "expected 2",
    )
    assert (await stats(running)).last_seq == 1
    assert await get(running, skipped.results[0].hash) is None


async def test_a_resent_identical_batch_is_acknowledged_again(running: Running) -> None:
    dag = Dag()
    first = dag.next_batch(4)
    second = dag.next_batch(4)
    reply1 = await running.stub.CommitBatch(first)
    reply2 = await running.stub.CommitBatch(second)
    before = await stats(running)

    again = await running.stub.CommitBatch(first)
    assert again.already_committed
    assert again.last_seq == 2
    assert list(again.heights) == list(reply1.heights)
    assert list((await running.stub.CommitBatch(second)).heights) == list(reply2.heights)
    after = await stats(running)
    assert (after.last_seq, after.vertices, after.edges) == (
        before.last_seq,
        before.vertices,
        before.edges,
    )
    # a different certificate (another quorum) for the same batch is still the same batch
    other_proof = storage_pb2.CommitBatchRequest()
    other_proof.CopyFrom(first)
    other_proof.batch.certificate.CopyFrom(
        certificate(1, first.batch.batch_digest, view=2, signers=[3, 1, 0])
    )
    assert (await running.stub.CommitBatch(other_proof)).already_committed
    # ... but a re-sent batch needs a valid proof too
    del other_proof.batch.certificate.commits[1:]
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(other_proof),
        "certificate has 1 COMMITs, need 3",
    )


async def test_a_different_batch_at_a_committed_seq_is_refused(running: Running) -> None:
    dag = Dag()
    first = dag.next_batch(2)
    await running.stub.CommitBatch(first)
    other = commit_request(1, [make_vertex(), make_vertex()])
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        running.stub.CommitBatch(other),
        "seq 1 already holds batch",
    )
    # the same digest with other execution results is a different batch too
    changed = storage_pb2.CommitBatchRequest()
    changed.CopyFrom(first)
    changed.results[0].rejected = True
    changed.results[0].reject_reason = "invalid signature"
    changed.batch.rejected.append(changed.results[0].hash)
    await expect(grpc.StatusCode.ALREADY_EXISTS, running.stub.CommitBatch(changed))
    assert (await stats(running)).last_seq == 1
    record = await get(running, first.results[0].hash)
    assert record is not None and record.status == FINALIZED


async def test_an_accepted_vertex_with_an_unknown_parent_fails_the_whole_batch(
    running: Running,
) -> None:
    good = make_vertex()
    orphan = make_vertex([os.urandom(32)])
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(commit_request(1, [good, orphan])),
        "is accepted but its parent",
        "is not finalized",
    )
    s = await stats(running)
    assert (s.last_seq, s.vertices) == (0, 0)
    assert await get(running, vertex_hash(good)) is None
    # the executor's rejection of the orphan is what makes the batch valid
    reply = await running.stub.CommitBatch(
        commit_request(1, [good, orphan], rejected=[1], reasons={1: "unknown parent"})
    )
    assert list(reply.heights) == [0, 0]
    record = await get(running, vertex_hash(orphan))
    assert record is not None
    assert (record.status, record.seq, record.reject_reason) == (REJECTED, 1, "unknown parent")


async def test_a_vertex_is_finalized_at_most_once(running: Running) -> None:
    v = make_vertex()
    h = vertex_hash(v)
    await running.stub.CommitBatch(commit_request(1, [v]))
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(commit_request(2, [v])),
        "already finalized (seq 1)",
    )
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(commit_request(2, [make_vertex(), make_vertex([h])] * 2)),
        "a duplicate must be rejected",
    )
    # rejected as a duplicate: the batch is stored, the first record stays
    reply = await running.stub.CommitBatch(
        commit_request(2, [v], rejected=[0], reasons={0: "duplicate"})
    )
    assert reply.last_seq == 2
    record = await get(running, h)
    assert record is not None
    assert (record.status, record.seq) == (FINALIZED, 1)
    entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest(from_seq=2)))
    assert [(r.hash, r.status, r.reject_reason) for r in entries[0].results] == [
        (h, REJECTED, "duplicate")
    ]
    assert list(entries[0].batch.rejected) == [h]
    s = await stats(running)
    assert (s.vertices, s.finalized_vertices, s.rejected_vertices) == (1, 1, 0)


async def test_a_rejected_vertex_can_be_finalized_later(running: Running) -> None:
    parent = make_vertex()
    hp = vertex_hash(parent)
    child = make_vertex([hp])
    hc = vertex_hash(child)
    # the child arrives first and is rejected; its parent is finalized in the same batch after it
    await running.stub.CommitBatch(
        commit_request(1, [child, parent], rejected=[0], reasons={0: "unknown parent"})
    )
    record = await get(running, hc)
    assert record is not None and record.status == REJECTED
    s = await stats(running)
    assert (s.vertices, s.finalized_vertices, s.rejected_vertices, s.edges) == (2, 1, 1, 0)
    children = await collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hp)))
    assert children == []

    reply = await running.stub.CommitBatch(commit_request(2, [child]))
    assert list(reply.heights) == [1]
    record = await get(running, hc)
    assert record is not None
    assert (record.status, record.seq, record.height, record.reject_reason) == (
        FINALIZED,
        2,
        1,
        "",
    )
    s = await stats(running)
    assert (s.vertices, s.finalized_vertices, s.rejected_vertices, s.edges) == (2, 2, 0, 1)
    children = await collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hp)))
    assert [c.hash for c in children] == [hc]


async def test_a_child_of_a_rejected_vertex_cannot_be_accepted(running: Running) -> None:
    bad = make_vertex()
    hb = vertex_hash(bad)
    child = make_vertex([hb])
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(commit_request(1, [bad, child], rejected=[0])),
        f"parent {hb.hex()} is not finalized",
    )
    await running.stub.CommitBatch(commit_request(1, [bad], rejected=[0]))
    await expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        running.stub.CommitBatch(commit_request(2, [child])),
        "is not finalized",
    )


async def test_a_result_hash_must_be_its_vertex_hash(running: Running) -> None:
    """A vertex filed under another hash (e.g. claiming to be its own parent) is refused."""
    v = make_vertex()
    h = vertex_hash(v)
    selfish = make_vertex([h])
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(commit_request(1, [selfish], hashes=[h])),
        "not the hash of batch.vertices[0]",
    )


async def test_a_wrong_result_hash_is_found_in_any_slice_of_a_large_batch(
    running: Running,
) -> None:
    """Results' hashes are checked with the digest, in slices on two threads: a wrong one
    in the last slice is named by its index, the batch is not written, and it is a bad
    request, not a refused proof (its certificate and digest are genuine)."""
    from services.storage.certify import HASH_SLICE

    vertices = [make_vertex() for _ in range(2 * HASH_SLICE + 5)]
    hashes = [vertex_hash(v) for v in vertices]
    wrong = 2 * HASH_SLICE + 3
    hashes[wrong] = os.urandom(32)
    refused_before = {
        check: REGISTRY.get_sample_value("cretoai_storage_commit_refusals_total", {"check": check})
        for check in ("digest", "certificate")
    }
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.CommitBatch(commit_request(1, vertices, hashes=hashes)),
        f"results[{wrong}].hash: not the hash of batch.vertices[{wrong}]",
    )
    assert (await stats(running)).last_seq == 0
    assert await get(running, vertex_hash(vertices[0])) is None
    for check, before in refused_before.items():
        after = REGISTRY.get_sample_value("cretoai_storage_commit_refusals_total", {"check": check})
        assert after == before, check
    # the same batch with its own hashes is written
    assert (await running.stub.CommitBatch(commit_request(1, vertices))).last_seq == 1


def _mutations() -> list[tuple[str, Callable[[storage_pb2.CommitBatchRequest], None], str]]:
    def no_batch(r: storage_pb2.CommitBatchRequest) -> None:
        r.ClearField("batch")

    def seq0(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.seq = 0
        r.batch.certificate.seq = 0

    def short_digest(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.batch_digest = b"x" * 31

    def no_certificate(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.ClearField("certificate")

    def cert_seq(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.certificate.seq = 7

    def cert_digest(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.certificate.batch_digest = b"y" * 32

    def no_commits(r: storage_pb2.CommitBatchRequest) -> None:
        del r.batch.certificate.commits[:]

    def missing_result(r: storage_pb2.CommitBatchRequest) -> None:
        del r.results[-1]

    def short_hash(r: storage_pb2.CommitBatchRequest) -> None:
        r.results[1].hash = b"z" * 33

    def rejected_mismatch(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.rejected.append(r.results[0].hash)

    def reason_on_accepted(r: storage_pb2.CommitBatchRequest) -> None:
        r.results[0].reject_reason = "why?"

    def long_reason(r: storage_pb2.CommitBatchRequest) -> None:
        r.results[0].rejected = True
        r.results[0].reject_reason = "x" * 1025
        r.batch.rejected.append(r.results[0].hash)

    def bad_parent(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.vertices[1].parents.append(b"p" * 20)

    def unlike_its_hash(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.vertices[2].payload += b"!"

    return [
        ("no batch", no_batch, "batch: missing"),
        ("seq 0", seq0, "sequence numbers start at 1"),
        ("short digest", short_digest, "batch.batch_digest: 31 bytes"),
        ("no certificate", no_certificate, "batch.certificate: missing"),
        ("certificate seq", cert_seq, "batch.certificate.seq: 7"),
        ("certificate digest", cert_digest, "batch.certificate.batch_digest"),
        ("no commits", no_commits, "batch.certificate.commits: empty"),
        ("missing result", missing_result, "results: 2 for 3 vertices"),
        ("short hash", short_hash, "results[1].hash: 33 bytes"),
        ("rejected mismatch", rejected_mismatch, "batch.rejected"),
        ("reason on accepted", reason_on_accepted, "results[0].reject_reason"),
        ("long reason", long_reason, "longer than 1024 bytes"),
        ("bad parent", bad_parent, "batch.vertices[1].parents[0]: 20 bytes"),
        ("unlike its hash", unlike_its_hash, "results[2].hash: not the hash"),
    ]


@pytest.mark.parametrize(
    ("name", "mutate", "needle"), _mutations(), ids=[m[0] for m in _mutations()]
)
async def test_malformed_batches_are_invalid_arguments(
    running: Running,
    name: str,
    mutate: Callable[[storage_pb2.CommitBatchRequest], None],
    needle: str,
) -> None:
    request = commit_request(1, [make_vertex(), make_vertex(), make_vertex()])
    mutate(request)
    await expect(grpc.StatusCode.INVALID_ARGUMENT, running.stub.CommitBatch(request), needle)
    assert (await stats(running)).last_seq == 0


# ---------------------------------------------------------------------------- forged batches


def _refusals(check: str) -> float:
    value = REGISTRY.get_sample_value("cretoai_storage_commit_refusals_total", {"check": check})
    return 0.0 if value is None else value


Forgery = Callable[[storage_pb2.CommitBatchRequest], storage_pb2.CommitBatchRequest | None]


def _forgeries() -> list[tuple[str, Forgery, str, str]]:
    """(name, forge the genuine seq-1 request, what the refusal says, the metric's check)."""

    def outsider(r: storage_pb2.CommitBatchRequest) -> None:
        # a real ML-DSA-87 COMMIT for this very batch, by a key of no member, claiming index 2
        r.batch.certificate.commits[2].CopyFrom(
            signed_commit(1, r.batch.batch_digest, signer=2, key=outsider_key())
        )

    def outsiders(r: storage_pb2.CommitBatchRequest) -> None:
        # a whole quorum of non-members, under their own (out-of-set) indexes
        del r.batch.certificate.commits[:]
        r.batch.certificate.commits.extend(
            signed_commit(1, r.batch.batch_digest, signer=i, key=outsider_key()) for i in (4, 5, 6)
        )

    def below_quorum(r: storage_pb2.CommitBatchRequest) -> None:
        del r.batch.certificate.commits[2:]  # 2 valid COMMITs of 4 validators; q = 3

    def duplicate_signer(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.certificate.commits[2].CopyFrom(
            signed_commit(1, r.batch.batch_digest, signer=1)  # replica 1 again, freshly signed
        )

    def other_vertices(r: storage_pb2.CommitBatchRequest) -> storage_pb2.CommitBatchRequest:
        # the genuine (valid) certificate and digest, with vertices it does not prove
        forged = commit_request(1, [make_vertex(), make_vertex(), make_vertex()])
        forged.batch.batch_digest = r.batch.batch_digest
        forged.batch.certificate.CopyFrom(r.batch.certificate)
        return forged

    def other_copy(r: storage_pb2.CommitBatchRequest) -> None:
        # the same contents (and hashes), another signature on one copy: another batch
        r.batch.vertices[1].signature = os.urandom(len(r.batch.vertices[1].signature))

    def other_seq(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.certificate.CopyFrom(certificate(2, r.batch.batch_digest))

    def other_seq_relabelled(r: storage_pb2.CommitBatchRequest) -> None:
        # valid COMMITs for seq 2 in a certificate that claims seq 1
        r.batch.certificate.CopyFrom(certificate(2, r.batch.batch_digest))
        r.batch.certificate.seq = 1

    def tampered_body(r: storage_pb2.CommitBatchRequest) -> None:
        # still decodes to the same COMMIT (an unknown field appended), but is not what was
        # signed, nor any COMMIT's canonical encoding
        r.batch.certificate.commits[0].body += b"\x78\x01"

    def body_for_another_view(r: storage_pb2.CommitBatchRequest) -> None:
        for commit in r.batch.certificate.commits:
            commit.body = encode_body(Commit(view=5, seq=1, digest=r.batch.batch_digest))
        r.batch.certificate.view = 5

    def tampered_signature(r: storage_pb2.CommitBatchRequest) -> None:
        signature = bytearray(r.batch.certificate.commits[1].signature)
        signature[100] ^= 1
        r.batch.certificate.commits[1].signature = bytes(signature)

    def malformed_body(r: storage_pb2.CommitBatchRequest) -> None:
        r.batch.certificate.commits[0].body = b"not a PbftMessage"

    invalid_signature = "has an invalid signature"
    return [
        ("non-member key", outsider, "COMMIT from replica 2 " + invalid_signature, "certificate"),
        (
            "non-member indexes",
            outsiders,
            "COMMIT from replica 4 " + invalid_signature,
            "certificate",
        ),
        ("below quorum", below_quorum, "certificate has 2 COMMITs, need 3", "certificate"),
        ("duplicate signer", duplicate_signer, "two COMMITs from one replica", "certificate"),
        ("other vertices", other_vertices, "not the digest of batch.vertices", "digest"),
        ("other copy", other_copy, "not the digest of batch.vertices", "digest"),
        ("other seq", other_seq, "batch.certificate.seq: 2, the batch is 1", "seq"),
        ("other seq relabelled", other_seq_relabelled, "does not match", "certificate"),
        ("tampered body", tampered_body, "Commit that is not its canonical", "certificate"),
        ("body for another view", body_for_another_view, invalid_signature, "certificate"),
        (
            "tampered signature",
            tampered_signature,
            "COMMIT from replica 1 " + invalid_signature,
            "certificate",
        ),
        ("malformed body", malformed_body, "malformed certificate", "certificate"),
    ]


@pytest.mark.parametrize(
    ("name", "forge", "needle", "check"), _forgeries(), ids=[f[0] for f in _forgeries()]
)
async def test_a_forged_finalized_batch_is_refused_and_nothing_is_written(
    running: Running,
    caplog: pytest.LogCaptureFixture,
    name: str,
    forge: Forgery,
    needle: str,
    check: str,
) -> None:
    genuine = commit_request(1, [make_vertex(), make_vertex(), make_vertex()])
    forged = storage_pb2.CommitBatchRequest()
    forged.CopyFrom(genuine)
    forged = forge(forged) or forged
    refusals = _refusals(check)
    with caplog.at_level(logging.WARNING, logger="services.storage.certify"):
        details = await expect(
            grpc.StatusCode.INVALID_ARGUMENT, running.stub.CommitBatch(forged), needle
        )
    assert _refusals(check) == refusals + 1
    [line] = [r for r in caplog.records if r.name == "services.storage.certify"]
    assert line.fields["check"] == check and line.fields["seq"] == 1  # type: ignore[attr-defined]
    assert line.fields["error"] == details  # type: ignore[attr-defined]
    s = await stats(running)
    assert (s.last_seq, s.vertices, s.finalized_vertices, s.rejected_vertices) == (0, 0, 0, 0)
    for h in {r.hash for r in forged.results} | {r.hash for r in genuine.results}:
        assert await get(running, h) is None
    assert await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest())) == []
    # the genuine batch, with its valid proof, still commits at that seq
    reply = await running.stub.CommitBatch(genuine)
    assert (reply.last_seq, reply.already_committed) == (1, False)


async def test_a_certificate_of_another_validator_set_is_refused(tmp_path: Path) -> None:
    """The same batch proven by a quorum of some other cluster is no proof here."""
    cfg = make_config(tmp_path)
    others = [outsider_key(), *validator_keys()[1:]]
    cfg = dataclasses.replace(
        cfg,
        validators=tuple(
            dataclasses.replace(v, public_key=k.public_key.hex())
            for v, k in zip(cfg.validators, others, strict=True)
        ),
    )
    running = await start_service(cfg)
    try:
        request = commit_request(1, [make_vertex()])  # signed by validators 0, 1, 2 of the tests
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            running.stub.CommitBatch(request),
            "COMMIT from replica 0 has an invalid signature",
        )
        assert (await stats(running)).last_seq == 0
        request.batch.certificate.CopyFrom(
            certificate(1, request.batch.batch_digest, signers=[1, 2, 3])
        )
        assert (await running.stub.CommitBatch(request)).last_seq == 1
    finally:
        await running.stop()


async def test_a_single_validator_proves_a_batch_alone(tmp_path: Path) -> None:
    """n = 1 (single-node mode): q = 1, its own COMMIT is the certificate."""
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, validators=cfg.validators[:1])
    running = await start_service(cfg)
    try:
        request = commit_request(1, [make_vertex()])
        request.batch.certificate.CopyFrom(certificate(1, request.batch.batch_digest, signers=[0]))
        assert (await running.stub.CommitBatch(request)).last_seq == 1
        request = commit_request(2, [make_vertex()])  # replicas 1 and 2 are not members here
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            running.stub.CommitBatch(request),
            "COMMIT from replica 1 has an invalid signature",
        )
    finally:
        await running.stop()


async def test_batches_leave_the_check_in_arrival_order() -> None:
    """Digest and signatures are checked on two threads: a small batch behind a large one
    still reaches the writer second, and a caller that went away holds up nobody."""
    certifier = Certifier(validator_public_keys(), get_backend("cryptography"))
    try:
        dag = Dag(payload_size=1024)
        batches = [dag.next_batch(300).batch, *(dag.next_batch(1).batch for _ in range(5))]
        finished: list[int] = []

        async def check(batch: vertex_pb2.FinalizedBatch) -> None:
            await certifier.check(batch)
            finished.append(batch.seq)

        tasks = [asyncio.create_task(check(b)) for b in batches]
        await asyncio.gather(*tasks)
        assert finished == [1, 2, 3, 4, 5, 6]

        finished.clear()
        batches = [dag.next_batch(300).batch, dag.next_batch(1).batch]
        first, second = (asyncio.create_task(check(b)) for b in batches)
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait_for(second, 10)
        assert finished == [8]
    finally:
        certifier.close()


async def test_committed_data_survives_a_restart(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    cfg = make_config(tmp_path)
    dag = Dag(payload_size=1024)
    running = await start_service(cfg)
    try:
        requests = [dag.next_batch(20) for _ in range(5)]
        for request in requests:
            await running.stub.CommitBatch(request)
        state = storage_pb2.WriteStateRequest(
            puts=[storage_pb2.StateEntry(key=b"view", value=b"\x00\x07")]
        )
        await running.stub.WriteState(state)
    finally:
        await running.stop()
    running = await start_service(cfg)
    try:
        s = await stats(running)
        assert (s.last_seq, s.vertices) == (5, 100)
        entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
        assert [list(e.batch.vertices) for e in entries] == [
            list(r.batch.vertices) for r in requests
        ]
        pages = await collect(running.stub.ScanState(storage_pb2.ScanStateRequest(prefix=b"v")))
        assert [(e.key, e.value) for p in pages for e in p.entries] == [(b"view", b"\x00\x07")]
        reply = await running.stub.CommitBatch(dag.next_batch(20))
        assert reply.last_seq == 6
    finally:
        await running.stop()


async def test_every_header_field_is_kept_and_part_of_the_batch_identity(
    running: Running,
) -> None:
    request = commit_request(1, [make_vertex(), make_vertex()], rejected=[1])
    request.batch.state_digest = b"s" * 32
    await running.stub.CommitBatch(request)
    entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
    assert entries[0].batch == request.batch  # state_digest and rejected included
    other = storage_pb2.CommitBatchRequest()
    other.CopyFrom(request)
    other.batch.state_digest = b"t" * 32
    await expect(grpc.StatusCode.ALREADY_EXISTS, running.stub.CommitBatch(other), "state digest")
    assert (await running.stub.CommitBatch(request)).already_committed


async def test_a_batch_is_given_back_with_the_exact_copies_it_executed(running: Running) -> None:
    """Copies of one content differ only in their signature: a batch must come back (for
    state transfer) with the copies it had, though the DAG keeps one copy per content."""
    good = make_vertex()
    bad = vertex_pb2.Vertex()
    bad.CopyFrom(good)
    bad.signature = bytes(len(good.signature))  # another copy: same content, bad signature
    again = vertex_pb2.Vertex()
    again.CopyFrom(good)
    again.signature = b"\x01" * len(good.signature)  # a third copy, rejected as a duplicate
    # seq 1: the bad copy, rejected; seq 2: the good copy, finalized, then a duplicate.
    await running.stub.CommitBatch(commit_request(1, [bad], rejected=[0]))
    await running.stub.CommitBatch(
        commit_request(2, [good, again], rejected=[1], reasons={1: "duplicate: already finalized"})
    )
    entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
    assert [list(e.batch.vertices) for e in entries] == [[bad], [good, again]]
    record = await get(running, vertex_hash(good))
    assert record is not None and record.status == FINALIZED and record.vertex == good


async def test_only_a_vertex_s_fields_are_stored(running: Running) -> None:
    """Bytes of an unknown field are covered by no proof (the signed digest is over the
    fields, so a padded copy keeps its digest): they are neither stored nor given back,
    for a short creator key as for an interned one."""
    long_creator = make_vertex()
    short_creator = make_vertex()
    short_creator.creator = b"k" * 16
    padded = []
    for clean in (long_creator, short_creator):
        copy = vertex_pb2.Vertex()
        copy.CopyFrom(clean)
        copy.MergeFromString(b"\x32\x05extra")  # field 6: unknown to every node
        assert vertex_hash(copy) == vertex_hash(clean)
        assert copy.SerializeToString() != clean.SerializeToString()
        padded.append(copy)
    await running.stub.CommitBatch(commit_request(1, padded, rejected=[1]))
    for clean in (long_creator, short_creator):
        record = await get(running, vertex_hash(clean))
        assert record is not None
        assert record.vertex.SerializeToString() == clean.SerializeToString()
    [entry] = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
    assert [v.SerializeToString() for v in entry.batch.vertices] == [
        v.SerializeToString() for v in (long_creator, short_creator)
    ]
