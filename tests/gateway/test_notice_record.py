"""``Notice.record``: a waiter's vertex record from a finalized batch's notice.

Pure protobufs: the notice as consensus sends it (results and the signed digest of
each copy, no bodies) and the copy the waiter submitted.
"""

from __future__ import annotations

from cretoai.v1 import consensus_pb2, vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from services.gateway.finality import Notice, notice_of_batch
from tests.gateway.support import client_key

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
KEY = client_key()

GOOD_A = make_vertex(KEY, b"a", [], 1_700_000_000_000)
BAD_A = vertex_pb2.Vertex()
BAD_A.CopyFrom(GOOD_A)
BAD_A.signature = bytes(len(GOOD_A.signature))
B = make_vertex(KEY, b"b", [], 1_700_000_000_000)
C = make_vertex(KEY, b"c", [], 1_700_000_000_000)


def notice(seq: int = 7, *, copies: bool = True) -> Notice:
    """A batch of four copies: content A twice (the badly signed copy rejected, the other
    finalized at height 3), B finalized at height 1, C rejected."""
    a, b, c = vertex_hash(GOOD_A), vertex_hash(B), vertex_hash(C)
    certificate = vertex_pb2.FinalityCertificate(view=0, seq=seq, batch_digest=b"d" * 32)
    return Notice(
        consensus_pb2.FinalizedNotice(
            batch=vertex_pb2.FinalizedBatch(seq=seq, rejected=[a, c], certificate=certificate),
            results=[
                vertex_pb2.VertexRecord(hash=a, status=REJECTED, seq=seq),
                vertex_pb2.VertexRecord(hash=a, status=FINALIZED, seq=seq, height=3),
                vertex_pb2.VertexRecord(hash=b, status=FINALIZED, seq=seq, height=1),
                vertex_pb2.VertexRecord(hash=c, status=REJECTED, seq=seq),
            ],
            copies=[signed_digest(v) for v in (BAD_A, GOOD_A, B, C)] if copies else [],
        )
    )


def test_the_waiter_of_the_finalized_copy_gets_its_record() -> None:
    n = notice()
    a = n.record(vertex_hash(GOOD_A), GOOD_A, signed_digest(GOOD_A))
    assert a is not None
    assert (a.vertex.payload, a.vertex.signature, a.height, a.seq) == (
        b"a",
        GOOD_A.signature,
        3,
        7,
    )
    assert a.status == FINALIZED and a.certificate.batch_digest == b"d" * 32
    b = n.record(vertex_hash(B), B, signed_digest(B))
    assert b is not None and (b.vertex.payload, b.height) == (b"b", 1)


def test_the_waiter_of_another_copy_reads_the_record() -> None:
    """Content A was finalized as GOOD_A: a waiter that sent BAD_A gets no record from the
    notice (the record is the executed copy's, which only storage has here)."""
    n = notice()
    assert n.finalized(vertex_hash(BAD_A))
    assert n.record(vertex_hash(BAD_A), BAD_A, signed_digest(BAD_A)) is None


def test_a_rejected_or_absent_vertex_has_no_record_here() -> None:
    n = notice()
    assert n.record(vertex_hash(C), C, signed_digest(C)) is None
    assert not n.finalized(vertex_hash(C))
    assert n.record(b"X" * 32, GOOD_A, signed_digest(GOOD_A)) is None


def test_without_copies_nothing_is_taken_for_the_executed_copy() -> None:
    """A notice read back from storage names no copies, and a reply from a consensus that
    does not name its copy has none: the record is read from storage then."""
    assert notice(copies=False).record(vertex_hash(B), B, signed_digest(B)) is None
    assert notice().record(vertex_hash(B), B, b"") is None


def test_a_whole_batch_of_an_older_consensus_reads_as_a_notice_without_copies() -> None:
    """``notice_of_batch``: the rejected hashes are matched in batch order, so a content
    with a rejected copy and a finalized one is finalized; no copies, so every answer is
    read from storage."""
    batch = vertex_pb2.FinalizedBatch(
        seq=9,
        vertices=[BAD_A, GOOD_A, B, C],
        rejected=[vertex_hash(BAD_A), vertex_hash(C)],
        certificate=vertex_pb2.FinalityCertificate(seq=9),
    )
    pb = notice_of_batch(batch)
    assert not pb.batch.vertices and not pb.copies and pb.batch.certificate.seq == 9
    assert [r.status for r in pb.results] == [REJECTED, FINALIZED, FINALIZED, REJECTED]
    n = Notice(pb)
    assert n.finalized(vertex_hash(GOOD_A)) and n.finalized(vertex_hash(B))
    assert not n.finalized(vertex_hash(C))
    assert n.record(vertex_hash(B), B, signed_digest(B)) is None
