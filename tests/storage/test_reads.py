"""The read RPCs over real gRPC: vertices, edges, the finalized log, the indexes, stats."""

from __future__ import annotations

import os

import grpc

from cretoai.v1 import storage_pb2, vertex_pb2
from devkit.storage import commit_request, vertex_hash
from tests.storage.support import Dag, Running, collect, make_vertex
from tests.storage.test_commit import FINALIZED, REJECTED, UNSPECIFIED, expect, get


async def test_get_vertex_found_and_not_found(running: Running) -> None:
    v = make_vertex(payload=b"hello")
    request = commit_request(1, [v])
    await running.stub.CommitBatch(request)
    record = await get(running, vertex_hash(v))
    assert record is not None
    assert record.hash == vertex_hash(v)
    assert record.vertex == v
    assert record.certificate == request.batch.certificate
    assert await get(running, os.urandom(32)) is None
    for bad in (b"", b"x" * 31, b"x" * 33):
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            running.stub.GetVertex(storage_pb2.GetVertexRequest(hash=bad)),
            f"hash: {len(bad)} bytes",
        )


async def test_get_vertex_statuses(running: Running) -> None:
    good, bad = make_vertex(), make_vertex()
    await running.stub.CommitBatch(commit_request(1, [good, bad], rejected=[1]))
    unknown = os.urandom(32)
    hashes = [vertex_hash(bad), unknown, vertex_hash(good)]
    reply = await running.stub.GetVertexStatuses(
        storage_pb2.GetVertexStatusesRequest(hashes=hashes)
    )
    assert [(r.hash, r.status, r.seq) for r in reply.records] == [
        (hashes[0], REJECTED, 1),
        (unknown, UNSPECIFIED, 0),
        (hashes[2], FINALIZED, 1),
    ]
    assert all(not r.HasField("vertex") and not r.HasField("certificate") for r in reply.records)
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.GetVertexStatuses(
            storage_pb2.GetVertexStatusesRequest(hashes=[os.urandom(32)] * 1025)
        ),
        "1025 keys; the limit is 1024",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.GetVertexStatuses(storage_pb2.GetVertexStatusesRequest(hashes=[b"ab"])),
        "hashes[0]: 2 bytes",
    )


async def test_list_parents_in_vertex_order(running: Running) -> None:
    a, b, c = make_vertex(), make_vertex(), make_vertex()
    await running.stub.CommitBatch(commit_request(1, [a, b, c]))
    missing = os.urandom(32)
    child = make_vertex([vertex_hash(c), vertex_hash(a), vertex_hash(b)])
    rejected = make_vertex([vertex_hash(b), missing])
    await running.stub.CommitBatch(commit_request(2, [child, rejected], rejected=[1]))

    parents = await collect(
        running.stub.ListParents(storage_pb2.ListParentsRequest(hash=vertex_hash(child)))
    )
    assert [p.hash for p in parents] == list(child.parents)
    assert [p.vertex for p in parents] == [c, a, b]
    assert all(not p.HasField("certificate") for p in parents)
    with_certs = await collect(
        running.stub.ListParents(
            storage_pb2.ListParentsRequest(hash=vertex_hash(child), with_certificates=True)
        )
    )
    assert all(p.certificate.seq == 1 for p in with_certs)
    # a parent that was never stored comes back with its hash only
    parents = await collect(
        running.stub.ListParents(storage_pb2.ListParentsRequest(hash=vertex_hash(rejected)))
    )
    assert [(p.hash, p.status) for p in parents] == [
        (vertex_hash(b), FINALIZED),
        (missing, UNSPECIFIED),
    ]
    await expect(
        grpc.StatusCode.NOT_FOUND,
        collect(running.stub.ListParents(storage_pb2.ListParentsRequest(hash=missing))),
        f"vertex {missing.hex()} is not stored",
    )


async def test_list_children_pages_in_hash_order(running: Running) -> None:
    root = make_vertex()
    hr = vertex_hash(root)
    await running.stub.CommitBatch(commit_request(1, [root]))
    children = [make_vertex([hr]) for _ in range(150)]
    await running.stub.CommitBatch(commit_request(2, children[:100]))
    await running.stub.CommitBatch(commit_request(3, children[100:]))
    expected = sorted(vertex_hash(c) for c in children)

    got = await collect(
        running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hr, limit=1000))
    )
    assert [c.hash for c in got] == expected
    assert all(c.status == FINALIZED and c.height == 1 for c in got)
    # default limit, then resume after the last one
    first = await collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hr)))
    assert [c.hash for c in first] == expected[:100]
    rest = await collect(
        running.stub.ListChildren(
            storage_pb2.ListChildrenRequest(hash=hr, after=first[-1].hash, limit=70)
        )
    )
    assert [c.hash for c in rest] == expected[100:]
    small = await collect(
        running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hr, limit=3))
    )
    assert [c.hash for c in small] == expected[:3]
    # a leaf has no children; an unknown vertex is NOT_FOUND; limits are bounded
    assert (
        await collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=expected[0])))
        == []
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=os.urandom(32)))),
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hr, limit=1001))),
        "limit: 1001 exceeds the maximum 1000",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.ListChildren(storage_pb2.ListChildrenRequest(hash=hr, after=b"1"))),
        "after: 1 bytes",
    )


async def test_get_finalized_ranges(running: Running) -> None:
    dag = Dag()
    requests = [dag.next_batch(3) for _ in range(12)]
    for request in requests:
        await running.stub.CommitBatch(request)

    everything = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
    assert [e.batch.seq for e in everything] == list(range(1, 13))
    for entry, request in zip(everything, requests, strict=True):
        assert entry.batch == request.batch
        assert [r.hash for r in entry.results] == [r.hash for r in request.results]
        assert all(r.status == FINALIZED and r.seq == entry.batch.seq for r in entry.results)

    window = await collect(
        running.stub.GetFinalized(storage_pb2.GetFinalizedRequest(from_seq=4, to_seq=8))
    )
    assert [e.batch.seq for e in window] == [4, 5, 6, 7]
    limited = await collect(
        running.stub.GetFinalized(storage_pb2.GetFinalizedRequest(from_seq=10, limit=2))
    )
    assert [e.batch.seq for e in limited] == [10, 11]
    beyond = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest(from_seq=13)))
    assert beyond == []
    headers = await collect(
        running.stub.GetFinalized(
            storage_pb2.GetFinalizedRequest(from_seq=1, limit=1, omit_vertices=True)
        )
    )
    assert list(headers[0].batch.vertices) == []
    assert [r.hash for r in headers[0].results] == [r.hash for r in requests[0].results]
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest(from_seq=5, to_seq=3))),
        "to_seq 3 is below from_seq 5",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest(limit=5000))),
        "limit: 5000 exceeds the maximum 1000",
    )


async def _height_dag(running: Running) -> list[tuple[int, int, int, bytes]]:
    """Three batches; returns (height, seq, index, hash) of every finalized vertex."""
    a, b = make_vertex(timestamp_ms=5000), make_vertex(timestamp_ms=1000)
    c = make_vertex([vertex_hash(a)], timestamp_ms=3000)
    bad = make_vertex(timestamp_ms=2000)
    await running.stub.CommitBatch(commit_request(1, [a, b, c, bad], rejected=[3]))
    d = make_vertex([vertex_hash(c), vertex_hash(b)], timestamp_ms=1000)
    e = make_vertex([vertex_hash(b)], timestamp_ms=9000)
    await running.stub.CommitBatch(commit_request(2, [d, e]))
    f = make_vertex([vertex_hash(d)], timestamp_ms=4000)
    await running.stub.CommitBatch(commit_request(3, [f]))
    return [
        (0, 1, 0, vertex_hash(a)),
        (0, 1, 1, vertex_hash(b)),
        (1, 1, 2, vertex_hash(c)),
        (2, 2, 0, vertex_hash(d)),
        (1, 2, 1, vertex_hash(e)),
        (3, 3, 0, vertex_hash(f)),
    ]


async def test_list_vertices_by_height(running: Running) -> None:
    rows = await _height_dag(running)
    order = [h for *_, h in sorted(rows)]

    def request(**kw: object) -> storage_pb2.ListVerticesByHeightRequest:
        return storage_pb2.ListVerticesByHeightRequest(**kw)  # type: ignore[arg-type]

    got = await collect(running.stub.ListVerticesByHeight(request()))
    assert [r.hash for r in got] == order
    assert [r.height for r in got] == [0, 0, 1, 1, 2, 3]
    assert all(r.status == FINALIZED for r in got)  # the rejected one is not in the DAG
    got = await collect(running.stub.ListVerticesByHeight(request(from_height=1, to_height=3)))
    assert [r.height for r in got] == [1, 1, 2]
    # pages: resume after the last record received
    page1 = await collect(running.stub.ListVerticesByHeight(request(limit=4)))
    page2 = await collect(running.stub.ListVerticesByHeight(request(limit=4, after=page1[-1].hash)))
    assert [r.hash for r in page1 + page2] == order
    with_certs = await collect(
        running.stub.ListVerticesByHeight(request(from_height=3, with_certificates=True))
    )
    assert [r.certificate.seq for r in with_certs] == [3]
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.ListVerticesByHeight(request(from_height=2, to_height=2))),
        "to_height must be greater than from_height",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.ListVerticesByHeight(request(after=os.urandom(32)))),
        "is not a finalized vertex",
    )


async def test_list_vertices_by_time(running: Running) -> None:
    rows = await _height_dag(running)
    by_hash = {h: (seq, index) for _, seq, index, h in rows}
    got = await collect(running.stub.ListVerticesByTime(storage_pb2.ListVerticesByTimeRequest()))
    stamps = [r.vertex.timestamp_ms for r in got]
    assert stamps == [1000, 1000, 3000, 4000, 5000, 9000]
    # equal timestamps: finalization order
    assert [by_hash[r.hash] for r in got[:2]] == [(1, 1), (2, 0)]
    window = await collect(
        running.stub.ListVerticesByTime(
            storage_pb2.ListVerticesByTimeRequest(from_ms=3000, to_ms=5000)
        )
    )
    assert [r.vertex.timestamp_ms for r in window] == [3000, 4000]
    page1 = await collect(
        running.stub.ListVerticesByTime(storage_pb2.ListVerticesByTimeRequest(limit=1))
    )
    page2 = await collect(
        running.stub.ListVerticesByTime(
            storage_pb2.ListVerticesByTimeRequest(limit=100, after=page1[0].hash)
        )
    )
    assert [r.hash for r in page1 + page2] == [r.hash for r in got]
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(
            running.stub.ListVerticesByTime(
                storage_pb2.ListVerticesByTimeRequest(from_ms=10, to_ms=5)
            )
        ),
        "to_ms must be greater than from_ms",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        collect(running.stub.ListVerticesByTime(storage_pb2.ListVerticesByTimeRequest(limit=2000))),
        "limit: 2000",
    )


async def test_stats_count_everything(running: Running) -> None:
    empty = await running.stub.GetStats(storage_pb2.GetStatsRequest())
    assert (empty.last_seq, empty.vertices, empty.halted, empty.schema_version) == (0, 0, False, 2)
    assert {cf.name for cf in empty.column_families} == {
        "vertices",
        "metadata",
        "edges",
        "index_height",
        "index_timestamp",
        "finalized",
        "consensus_state",
        "evidence",
    }
    await _height_dag(running)
    s = await running.stub.GetStats(storage_pb2.GetStatsRequest())
    assert (s.last_seq, s.vertices, s.finalized_vertices, s.rejected_vertices, s.edges) == (
        3,
        7,
        6,
        1,
        5,
    )
    assert s.disk_bytes > empty.disk_bytes > 0
    assert s.path == str(running.cfg.storage_path)
    keys = {cf.name: cf.estimated_keys for cf in s.column_families}
    assert keys["vertices"] == 7 and keys["finalized"] == 3 and keys["edges"] == 5


async def test_rejected_vertices_keep_the_certificate_of_their_batch(running: Running) -> None:
    bad = make_vertex()
    request = commit_request(1, [bad], rejected=[0], reasons={0: "bad signature"})
    await running.stub.CommitBatch(request)
    record = await get(running, vertex_hash(bad))
    assert record is not None
    assert record.status == vertex_pb2.VERTEX_STATUS_REJECTED
    assert record.reject_reason == "bad signature"
    assert record.certificate == request.batch.certificate


async def test_creator_keys_are_stored_once_and_read_back_whole(running: Running) -> None:
    alice, bob = os.urandom(2592), os.urandom(2592)
    vertices = []
    for i in range(6):
        v = make_vertex()
        v.creator = alice if i % 2 else bob
        vertices.append(v)
    short = make_vertex()
    short.creator = b"tiny"  # a malformed creator, rejected: stored inline as it came
    await running.stub.CommitBatch(commit_request(1, [*vertices, short], rejected=[6]))
    entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
    assert list(entries[0].batch.vertices) == [*vertices, short]
    for v in [*vertices, short]:
        record = await get(running, vertex_hash(v))
        assert record is not None and record.vertex == v
    await running.stop()

    from services.storage import keys
    from tests.storage.support import RawDb

    with RawDb(running.cfg.storage_path, read_only=True) as raw:
        creators = [k for k, _ in raw.items("default") if k.startswith(keys.CREATOR_PREFIX)]
        assert len(creators) == 2
        stored = dict(raw.items(keys.VERTICES))
        body = storage_pb2.StoredVertex.FromString(stored[vertex_hash(vertices[0])])
        assert len(body.creator_id) == 32
        assert len(stored[vertex_hash(vertices[0])]) < vertices[0].ByteSize() - 2500
        assert not storage_pb2.StoredVertex.FromString(stored[vertex_hash(short)]).creator_id
