"""``Entry.record``: a waiter's vertex record from a finalized batch and its stored entry.

Pure protobufs: the batch as the finalized stream carries it, the stored entry as
storage answers it (results in batch order, without vertices).
"""

from __future__ import annotations

from cretoai.v1 import storage_pb2, vertex_pb2
from services.gateway.finality import Entry

FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED


def vertex(payload: bytes, signature: bytes) -> vertex_pb2.Vertex:
    return vertex_pb2.Vertex(payload=payload, creator=b"k" * 8, signature=signature)


def entry_and_stored(seq: int = 7) -> tuple[Entry, storage_pb2.FinalizedEntry]:
    """A batch of four copies: content A twice (the first copy rejected, the second
    finalized at height 3), B finalized at height 1, C rejected."""
    a, b, c = b"A" * 32, b"B" * 32, b"C" * 32
    certificate = vertex_pb2.FinalityCertificate(view=0, seq=seq, batch_digest=b"d" * 32)
    batch = vertex_pb2.FinalizedBatch(
        seq=seq,
        vertices=[
            vertex(b"a", b"bad"),
            vertex(b"a", b"good"),
            vertex(b"b", b"sig"),
            vertex(b"c", b"sig"),
        ],
        rejected=[a, c],
        certificate=certificate,
    )
    stored = storage_pb2.FinalizedEntry(
        batch=vertex_pb2.FinalizedBatch(seq=seq, certificate=certificate),
        results=[
            vertex_pb2.VertexRecord(hash=a, status=REJECTED, seq=seq),
            vertex_pb2.VertexRecord(hash=a, status=FINALIZED, seq=seq, height=3),
            vertex_pb2.VertexRecord(hash=b, status=FINALIZED, seq=seq, height=1),
            vertex_pb2.VertexRecord(hash=c, status=REJECTED, seq=seq),
        ],
    )
    return Entry(storage_pb2.FinalizedEntry(batch=batch)), stored


def test_each_waiter_gets_the_finalized_copy_of_its_content() -> None:
    entry, stored = entry_and_stored()
    a = entry.record(b"A" * 32, stored)
    assert a is not None
    assert (a.vertex.payload, a.vertex.signature, a.height, a.seq) == (b"a", b"good", 3, 7)
    assert a.status == FINALIZED and a.certificate.batch_digest == b"d" * 32
    b = entry.record(b"B" * 32, stored)
    assert b is not None and (b.vertex.payload, b.height) == (b"b", 1)
    # asked again (another waiter of the same content): the same answer
    assert entry.record(b"A" * 32, stored) == a


def test_a_rejected_or_absent_vertex_has_no_record_here() -> None:
    entry, stored = entry_and_stored()
    assert entry.record(b"C" * 32, stored) is None
    assert entry.record(b"X" * 32, stored) is None


def test_a_stored_entry_of_another_batch_answers_nothing() -> None:
    entry, _ = entry_and_stored(seq=7)
    _, other = entry_and_stored(seq=8)
    assert entry.record(b"B" * 32, other) is None
    shorter = storage_pb2.FinalizedEntry(batch=other.batch, results=other.results[:2])
    shorter.batch.seq = 7
    assert entry.record(b"B" * 32, shorter) is None


def test_a_new_stored_entry_is_indexed_anew() -> None:
    """The index belongs to the stored entry it was built from: another read of the same
    batch (its results as storage now answers them) is looked up on its own."""
    entry, stored = entry_and_stored()
    assert entry.record(b"B" * 32, stored) is not None
    reread = storage_pb2.FinalizedEntry()
    reread.CopyFrom(stored)
    reread.results[2].status = REJECTED
    assert entry.record(b"B" * 32, reread) is None
