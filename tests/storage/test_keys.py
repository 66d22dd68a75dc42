"""Key encodings: byte order is numeric order, so ranges iterate in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.storage import keys

u64s = st.integers(min_value=0, max_value=keys.U64_MAX)
u32s = st.integers(min_value=0, max_value=2**32 - 1)


@given(st.tuples(u64s, u64s, u32s), st.tuples(u64s, u64s, u32s))
def test_position_keys_sort_like_their_tuples(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    ka, kb = keys.position_key(*a), keys.position_key(*b)
    assert len(ka) == 20
    assert (ka < kb) == (a < b)
    assert (ka == kb) == (a == b)


@given(u64s, u64s)
def test_seq_keys_sort_numerically(a: int, b: int) -> None:
    assert (keys.seq_key(a) < keys.seq_key(b)) == (a < b)
    assert keys.read_u64(keys.seq_key(a)) == a


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=8))
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, rest: bytes) -> None:
    end = keys.prefix_end(prefix)
    key = prefix + rest
    if end is None:
        assert set(prefix) == {0xFF}
    else:
        assert prefix <= key < end
        assert not end.startswith(prefix)


def test_prefix_end_examples() -> None:
    assert keys.prefix_end(b"log/") == b"log0"
    assert keys.prefix_end(b"a\xff\xff") == b"b"
    assert keys.prefix_end(b"\xff") is None
    assert keys.successor(b"abc") == b"abc\x00"


def test_evidence_and_edge_keys() -> None:
    parent, child = b"p" * 32, b"c" * 32
    assert keys.edge_key(parent, child) == parent + child
    assert keys.evidence_key(1) < keys.evidence_key(256)
    # the two kinds of evidence keys never interleave: a scan of records sees no digest key
    assert keys.evidence_digest_key(b"\xff" * 32) < keys.evidence_key(0)
    assert keys.u32(1) == b"\x00\x00\x00\x01" and keys.read_u32(keys.u32(7)) == 7


@given(st.binary(max_size=20_000), st.sampled_from([b"", b"\x01" * 32]))
def test_stored_vertex_encoding_is_the_protobuf_encoding(body: bytes, creator_id: bytes) -> None:
    from cretoai.v1 import storage_pb2
    from services.storage.store import stored_vertex

    expected = storage_pb2.StoredVertex(vertex=body, creator_id=creator_id).SerializeToString()
    assert stored_vertex(body, creator_id) == expected
    parsed = storage_pb2.StoredVertex.FromString(stored_vertex(body, creator_id))
    assert (parsed.vertex, parsed.creator_id) == (body, creator_id)
