"""Bodies stored once: a voted batch's record (consensus state under ``batch/``) is
stored split, and the vertices finalized from it point at its bodies instead of copying
them (docs/storage.md, "Bodies stored once"). Real gRPC, real RocksDB."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cretoai.protowire import varint
from cretoai.v1 import pbft_pb2, storage_pb2, vertex_pb2
from cretoai.vertex import signed_digest
from devkit.storage import commit_request, make_config, vertex_hash
from services.consensus.core.durable import encode_batch
from services.consensus.core.messages import Request
from services.storage import keys
from services.storage.certify import resolve_reference
from services.storage.errors import DatabaseCorrupt, ReadFailed
from services.storage.store import Store, join_voted, split_voted, verify
from tests.storage.support import (
    Dag,
    RawDb,
    Running,
    collect,
    make_vertex,
    options_file,
    start_service,
)
from tests.storage.test_commit import get
from tests.storage.test_reference import by_reference, voted_key, voted_record, write_voted


def voted_items(db: RawDb) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in db.items(keys.DEFAULT) if k.startswith(keys.VOTED_PREFIX)]


def state_of(db: RawDb, key: bytes) -> bytes | None:
    value = db.cfs[keys.CONSENSUS_STATE].get(key)
    assert value is None or isinstance(value, bytes)
    return value


async def scan(running: Running) -> dict[bytes, bytes]:
    pages = await collect(running.stub.ScanState(storage_pb2.ScanStateRequest()))
    return {e.key: e.value for page in pages for e in page.entries}


async def put(running: Running, key: bytes, value: bytes) -> None:
    await running.stub.WriteState(
        storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=key, value=value)])
    )


DELETIONS = ["deletes", "delete_prefixes", "delete_ranges"]


def deletion(how: str, key: bytes) -> storage_pb2.WriteStateRequest:
    """A record deleted as the consensus drops records below a stable checkpoint: by key,
    or all of them by prefix or range."""
    return {
        "deletes": storage_pb2.WriteStateRequest(deletes=[key]),
        "delete_prefixes": storage_pb2.WriteStateRequest(delete_prefixes=[b"batch/"]),
        "delete_ranges": storage_pb2.WriteStateRequest(
            delete_ranges=[storage_pb2.KeyRange(start=b"batch/", end=b"batch0")]
        ),
    }[how]


async def vote_commit_and_delete(
    tmp_path: Path, request: storage_pb2.CommitBatchRequest, how: str
) -> Running:
    """A service that stores ``request``'s voted record, commits the batch by reference
    to it and deletes the record (``how``); stopped."""
    key = voted_key(request.batch.batch_digest)
    running = await start_service(make_config(tmp_path))
    try:
        await write_voted(running, key, list(request.batch.vertices))
        await running.stub.CommitBatch(by_reference(request))
        await running.stub.WriteState(deletion(how, key))
        assert key not in await scan(running)
    finally:
        await running.stop()
    return running


def test_the_consensus_encoding_splits_and_joins_byte_for_byte() -> None:
    vertices = [make_vertex(payload_size=300 * i) for i in range(1, 4)]
    requests = tuple(Request(hash=signed_digest(v), body=v.SerializeToString()) for v in vertices)
    record = encode_batch(requests)
    split = split_voted(record)
    assert split is not None
    head, bodies = split
    assert bodies == [v.SerializeToString() for v in vertices]
    assert join_voted(head, bodies) == record
    assert pbft_pb2.VotedBatch.FromString(head).request_bodies == []


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not a protobuf message at all",
        pbft_pb2.VotedBatch(request_hashes=[b"h" * 32]).SerializeToString(),  # no body
        b"\x12\x03abc\x0a\x01h",  # a hash after a body
        b"\x12\x83\x00abc",  # a body's length padded (not minimal)
        b"\x12\x05abc",  # a body longer than the value
        b"\x12\x03abc\x1a\x01x",  # another field after the bodies
        b"\x12\x03abc\x12",  # a truncated length
    ],
)
async def test_a_value_not_shaped_as_a_voted_batch_is_stored_whole(
    running: Running, value: bytes
) -> None:
    assert split_voted(value) is None
    key = b"batch/odd"
    await put(running, key, value)
    assert (await scan(running))[key] == value
    await running.stop()
    with RawDb(running.cfg.storage_path) as db:
        assert state_of(db, key) == value
        assert voted_items(db) == []


async def test_a_voted_record_is_stored_split_and_read_back_byte_for_byte(
    running: Running,
) -> None:
    vertices = [make_vertex(payload_size=1024) for _ in range(3)]
    key, value = b"batch/" + b"ab" * 32, voted_record(vertices)
    other = (b"prepared/00000000000000000001", b"\x12\x03abc")  # not under batch/: as is
    await put(running, key, value)
    await put(running, *other)
    assert await scan(running) == {key: value, other[0]: other[1]}
    page = await collect(running.stub.ScanState(storage_pb2.ScanStateRequest(prefix=b"batch/")))
    assert [(e.key, e.value) for p in page for e in p.entries] == [(key, value)]
    await running.stop()
    with RawDb(running.cfg.storage_path) as db:
        head = state_of(db, key)
        assert head is not None and len(head) < 200  # the hashes only
        assert state_of(db, other[0]) == other[1]
        bodies = {k: v for k, v in voted_items(db)}
        prefix = keys.voted(key)
        assert bodies[keys.voted_split_key(prefix)] == keys.u32(3)
        for i, vertex in enumerate(vertices):
            assert bodies[keys.voted_body_key(prefix, i)] == vertex.SerializeToString()
        assert len(bodies) == 4


@pytest.mark.parametrize("how", DELETIONS)
async def test_finalized_vertices_keep_their_bodies_when_the_record_goes(
    tmp_path: Path, how: str
) -> None:
    dag = Dag(payload_size=512)
    request = dag.next_batch(3)
    key = voted_key(request.batch.batch_digest)
    running = await vote_commit_and_delete(tmp_path, request, how)
    with RawDb(running.cfg.storage_path) as db:
        prefix = keys.voted(key)
        left = {k for k, _ in voted_items(db)}
        assert left == {keys.voted_final_key(prefix)} | {
            keys.voted_body_key(prefix, i) for i in range(3)
        }
        assert db.db.get(keys.voted_final_key(prefix)) == keys.u64(1)
    running = await start_service(make_config(tmp_path))  # and after a restart
    try:
        for vertex in request.batch.vertices:
            record = await get(running, vertex_hash(vertex))
            assert record is not None
            assert record.vertex.SerializeToString() == vertex.SerializeToString()
        [entry] = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
        assert list(entry.batch.vertices) == list(request.batch.vertices)
        # the record put again (the consensus re-votes after a restart): stored whole, the
        # finalized bodies are never rewritten
        changed = voted_record([make_vertex(), make_vertex()])
        await put(running, key, changed)
        assert (await scan(running))[key] == changed
        record = await get(running, vertex_hash(request.batch.vertices[0]))
        assert record is not None and record.vertex == request.batch.vertices[0]
    finally:
        await running.stop()


@pytest.mark.parametrize("how", ["deletes", "delete_prefixes", "delete_ranges"])
async def test_a_record_never_finalized_leaves_nothing_when_deleted(
    running: Running, how: str
) -> None:
    keep = b"batch/" + b"ff" * 32
    keys_ = [b"batch/" + bytes([c]) * 32 for c in b"ab"]
    for key in [*keys_, keep]:
        await put(running, key, voted_record([make_vertex(), make_vertex()]))
    request = {
        "deletes": storage_pb2.WriteStateRequest(deletes=keys_),
        "delete_prefixes": storage_pb2.WriteStateRequest(delete_prefixes=[b"batch/a", b"batch/b"]),
        "delete_ranges": storage_pb2.WriteStateRequest(
            delete_ranges=[storage_pb2.KeyRange(start=b"batch/", end=b"batch/c")]
        ),
    }[how]
    await running.stub.WriteState(request)
    assert list(await scan(running)) == [keep]
    await running.stop()
    with RawDb(running.cfg.storage_path) as db:
        assert {k[: len(keys.voted(keep))] for k, _ in voted_items(db)} == {keys.voted(keep)}


async def test_a_body_changed_after_the_check_is_not_pointed_at(tmp_path: Path) -> None:
    """The record put again (or deleted) between the read of its bodies and the write:
    the finalized vertex holds the bytes that were checked, not what is stored now."""
    store = Store.open(tmp_path / "db")
    try:
        for seq, change in enumerate(["put again", "deleted", "unchanged"], start=1):
            vertices = [make_vertex(), make_vertex()]
            request = commit_request(seq, vertices)
            key = voted_key(request.batch.batch_digest)
            put_record = storage_pb2.StateEntry(key=key, value=voted_record(vertices))
            store.write_state(storage_pb2.WriteStateRequest(puts=[put_record]))
            reference = by_reference(request)
            _, voted = resolve_reference(reference, store.read_voted)
            assert voted == [v.SerializeToString() for v in vertices]
            if change == "put again":
                other = voted_record([vertices[0], make_vertex()])
                entry = storage_pb2.StateEntry(key=key, value=other)
                store.write_state(storage_pb2.WriteStateRequest(puts=[entry]))
            elif change == "deleted":
                store.write_state(storage_pb2.WriteStateRequest(deletes=[key]))
            store.commit_batch(reference, voted)
            store.sync()
            pointers = [bool(stored_pointer_of(store, v)) for v in vertices]
            assert (
                pointers
                == {
                    "put again": [True, False],  # body 0 is the same bytes
                    "deleted": [False, False],
                    "unchanged": [True, True],
                }[change]
            )
            for vertex in vertices:
                record = store.get_vertex(vertex_hash(vertex), certificate=False)
                assert record is not None
                assert record.vertex.SerializeToString() == vertex.SerializeToString()
    finally:
        store.close()


def stored_pointer_of(store: Store, vertex: vertex_pb2.Vertex) -> bytes:
    raw = store._cf[keys.VERTICES].get(vertex_hash(vertex))
    assert isinstance(raw, bytes)
    return storage_pb2.StoredVertex.FromString(raw).voted_body


async def test_a_padded_body_is_stored_as_its_fields(running: Running) -> None:
    """A voted body with bytes no proof covers (an unknown field: the same signed digest)
    is not pointed at: the vertex is stored as its five fields, as in a full batch."""
    clean, other = make_vertex(), make_vertex()
    padded = vertex_pb2.Vertex()
    padded.CopyFrom(clean)
    padded.MergeFromString(b"\x32\x05extra")
    assert signed_digest(padded) == signed_digest(clean)
    request = commit_request(1, [padded, other])
    bodies = [padded.SerializeToString(), other.SerializeToString()]
    record_value = b"".join(
        [b"\x0a\x20" + signed_digest(v) for v in (padded, other)]
        + [b"\x12" + varint(len(b)) + b for b in bodies]
    )
    key = voted_key(request.batch.batch_digest)
    await write_voted(running, key, None, record_value)
    assert (await scan(running))[key] == record_value
    await running.stub.CommitBatch(by_reference(request))
    for vertex in (clean, other):
        got = await get(running, vertex_hash(vertex))
        assert got is not None
        assert got.vertex.SerializeToString() == vertex.SerializeToString()
    await running.stop()
    with RawDb(running.cfg.storage_path) as db:
        stored = [
            storage_pb2.StoredVertex.FromString(v)
            for k, v in db.items(keys.VERTICES)
            if k == vertex_hash(clean)
        ]
        assert [s.voted_body for s in stored] == [b""]


async def test_a_version_1_database_opens_and_is_marked_version_2(tmp_path: Path) -> None:
    db = tmp_path / "db"
    running = await start_service(make_config(tmp_path, db=db))
    request = commit_request(1, [make_vertex()])
    await running.stub.CommitBatch(request)
    await running.stop()
    with RawDb(db) as raw:
        raw.db.put(keys.SCHEMA_VERSION_KEY, keys.u32(1))
    inspected = Store.open(db, read_only=True)
    try:
        assert inspected.schema_version == 1  # a read-only open changes nothing
    finally:
        inspected.close()
    store = Store.open(db)
    try:
        assert store.schema_version == 2
        record = store.get_vertex(request.results[0].hash, certificate=False)
        assert record is not None and record.vertex == request.batch.vertices[0]
    finally:
        store.close()
    with RawDb(db) as raw:
        assert raw.db.get(keys.SCHEMA_VERSION_KEY) == keys.u32(2)


async def test_a_missing_body_is_damage_to_reads_and_to_verify(tmp_path: Path) -> None:
    request = commit_request(1, [make_vertex(), make_vertex()])
    key = voted_key(request.batch.batch_digest)
    running = await start_service(make_config(tmp_path))
    await write_voted(running, key, list(request.batch.vertices))
    await running.stub.CommitBatch(by_reference(request))
    await running.stop()
    db = running.cfg.storage_path
    assert verify(db)[1] > 0
    with RawDb(db) as raw:
        raw.db.delete(keys.voted_body_key(keys.voted(key), 1))
    with pytest.raises(DatabaseCorrupt, match=r"a finalized vertex's body .* is missing"):
        verify(db)
    running = await start_service(make_config(tmp_path))
    try:
        assert await get(running, request.results[0].hash) is not None
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await get(running, request.results[1].hash)
        assert failed.value.code() == grpc.StatusCode.DATA_LOSS
        assert "is missing" in (failed.value.details() or "")
    finally:
        await running.stop()


def test_the_default_column_family_has_the_tables_of_the_others(tmp_path: Path) -> None:
    """It holds the bodies: RocksDB's defaults would keep every table's whole index and
    filter in memory beside a cache of its own (storage grew 9.5 MB/min that way)."""
    store = Store.open(tmp_path / "db")
    store.close()
    sections = options_file(tmp_path / "db")
    default = sections['[TableOptions/BlockBasedTable "default"]']
    vertices = sections['[TableOptions/BlockBasedTable "vertices"]']
    for name in ("index_type", "cache_index_and_filter_blocks", "partition_filters"):
        assert default[name] == vertices[name], name
    assert default["cache_index_and_filter_blocks"] == "true"
    write_buffer = sections['[CFOptions "default"]']["write_buffer_size"]
    assert write_buffer == sections['[CFOptions "vertices"]']["write_buffer_size"]


def copy_of(vertex: vertex_pb2.Vertex, signature: bytes) -> vertex_pb2.Vertex:
    """Another copy of ``vertex``'s content: the same hash, another signature."""
    copy = vertex_pb2.Vertex()
    copy.CopyFrom(vertex)
    copy.signature = signature
    assert vertex_hash(copy) == vertex_hash(vertex)
    return copy


def bodies_left(db: RawDb, record_key: bytes) -> set[int]:
    prefix = keys.voted(record_key)
    return {
        keys.read_u32(k[-4:])
        for k, _ in voted_items(db)
        if k.startswith(prefix) and k[len(prefix) : len(prefix) + 1] == b"\x01"
    }


@pytest.mark.parametrize("how", DELETIONS)
async def test_a_duplicate_copy_s_body_goes_with_its_record(tmp_path: Path, how: str) -> None:
    """A client that sends differently signed copies of one content to two nodes gets one
    finalized and the other rejected as a duplicate in the same batch. Nothing points at
    the duplicate's body: it must not stay on every replica's disk for ever."""
    good, other = make_vertex(), make_vertex()
    again = copy_of(good, b"\x01" * len(good.signature))
    request = commit_request(
        1, [good, again, other], rejected=[1], reasons={1: "duplicate: already finalized"}
    )
    key = voted_key(request.batch.batch_digest)
    running = await vote_commit_and_delete(tmp_path, request, how)
    with RawDb(running.cfg.storage_path) as db:
        assert bodies_left(db, key) == {0, 2}
    verify(running.cfg.storage_path)  # no vertex points at a missing body
    running = await start_service(make_config(tmp_path))
    try:
        [entry] = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
        assert list(entry.batch.vertices) == [good, again, other]  # the exact copies
        record = await get(running, vertex_hash(good))
        assert record is not None and record.vertex == good
    finally:
        await running.stop()


def commit_by_reference(store: Store, request: storage_pb2.CommitBatchRequest) -> None:
    key = voted_key(request.batch.batch_digest)
    entry = storage_pb2.StateEntry(key=key, value=voted_record(list(request.batch.vertices)))
    store.write_state(storage_pb2.WriteStateRequest(puts=[entry]))
    reference = by_reference(request)
    _, voted = resolve_reference(reference, store.read_voted)
    store.commit_batch(reference, voted)
    store.sync()


@pytest.mark.parametrize("record_goes", ["before the copy is replaced", "after"])
def test_a_rejected_copy_s_body_goes_once_a_later_batch_finalizes_its_content(
    tmp_path: Path, record_goes: str
) -> None:
    """Seq 1 rejects a copy (its vertex then points at that body), seq 2 finalizes the
    content from another copy: the first body is pointed at by nothing any more, whether
    seq 1's record was deleted before seq 2 or after."""
    bad, filler = make_vertex(), make_vertex()
    good = copy_of(bad, b"\x02" * len(bad.signature))
    first = commit_request(1, [bad, filler], rejected=[0])
    second = commit_request(2, [good])
    first_key, second_key = (voted_key(r.batch.batch_digest) for r in (first, second))
    damage: list[str] = []
    store = Store.open(tmp_path / "db")
    store.on_damage = damage.append
    try:
        commit_by_reference(store, first)
        assert stored_pointer_of(store, bad) == keys.voted_body_key(keys.voted(first_key), 0)
        drop = storage_pb2.WriteStateRequest(deletes=[first_key])
        if record_goes == "after":
            commit_by_reference(store, second)
            store.write_state(drop)
        else:
            store.write_state(drop)
            stale = store._cf[keys.VERTICES].get(vertex_hash(bad))  # a reader's, before seq 2
            commit_by_reference(store, second)
            # the body it points at is gone: the reader reads the value again, no damage
            assert isinstance(stale, bytes)
            assert store.decode_vertex(vertex_hash(bad), stale) == good
        store.sync()
        assert stored_pointer_of(store, good) == keys.voted_body_key(keys.voted(second_key), 0)
        first_entry = store.finalized_entry(1, vertices=True)
        assert first_entry is not None and list(first_entry.batch.vertices) == [bad, filler]
        record = store.get_vertex(vertex_hash(good), certificate=False)
        assert record is not None and record.vertex == good
        assert damage == []
    finally:
        store.close()
    with RawDb(tmp_path / "db") as db:
        assert bodies_left(db, first_key) == {1}
        assert bodies_left(db, second_key) == {0}
    verify(tmp_path / "db")


@pytest.mark.parametrize("meanwhile", ["deleted", "put again", "nothing"])
def test_a_record_changed_while_it_is_read_is_read_again(tmp_path: Path, meanwhile: str) -> None:
    """Its value, count and bodies are read one after the other: a write landing between
    them (here: right before the bodies are read) must give the record as it was or as it
    is, never a part of each, and never look like a lost body."""
    key = b"batch/" + b"ab" * 32
    old = voted_record([make_vertex(), make_vertex()])
    new = voted_record([make_vertex()])
    damage: list[str] = []
    store = Store.open(tmp_path / "db")
    store.on_damage = damage.append
    read_bodies = store._voted_bodies
    interleaved: list[bytes] = []

    def write_first(record_key: bytes) -> list[bytes] | None:
        if not interleaved:
            interleaved.append(record_key)
            write = {
                "deleted": storage_pb2.WriteStateRequest(deletes=[key]),
                "put again": storage_pb2.WriteStateRequest(
                    puts=[storage_pb2.StateEntry(key=key, value=new)]
                ),
                "nothing": storage_pb2.WriteStateRequest(),
            }[meanwhile]
            store.write_state(write)
        return read_bodies(record_key)

    try:
        for read in ("get", "scan"):
            store.write_state(
                storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=key, value=old)])
            )
            interleaved.clear()
            store._voted_bodies = write_first  # type: ignore[method-assign,assignment]
            if read == "get":
                got = store.get_state(key)
            else:
                page = store.scan_state(b"batch/", after=None, limit=10)
                got = page[0].value if page else None
            store._voted_bodies = read_bodies  # type: ignore[method-assign]
            assert interleaved == [key]
            assert got == {"deleted": None, "put again": new, "nothing": old}[meanwhile], read
        assert damage == []
        # a body lost while the record stays is damage
        store.write_state(
            storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=key, value=old)])
        )
        store._db.delete(keys.voted_body_key(keys.voted(key), 1))
        with pytest.raises(ReadFailed, match="a body of the voted batch"):
            store.get_state(key)
        assert len(damage) == 1
    finally:
        store.close()


def test_storage_s_own_reads_of_a_voted_batch_leave_the_block_cache_as_it_was(
    tmp_path: Path,
) -> None:
    """What storage reads for itself (a voted batch's record and bodies, checked and
    pointed at once by its commit; what its deletion must keep) is no client's next
    read: it must not fill the block cache, which is storage's memory (in a 150-s run at
    306 vertices/s the cache held 10-15 MB at the end, 14-25 when the deletion's reads
    went through it too, and storage ended 6-15 MB larger)."""
    request = commit_request(1, [make_vertex() for _ in range(40)])
    key = voted_key(request.batch.batch_digest)
    store = Store.open(tmp_path / "db")

    def flush() -> None:  # the reads go to table files, not memtables
        for family in (store._db, *store._cf.values()):
            family.flush(True)

    def usage() -> int:
        return store._db.property_int_value("rocksdb.block-cache-usage") or 0

    try:
        entry = storage_pb2.StateEntry(key=key, value=voted_record(list(request.batch.vertices)))
        store.write_state(storage_pb2.WriteStateRequest(puts=[entry]))
        flush()
        before = usage()
        reference = by_reference(request)
        _, voted = resolve_reference(reference, store.read_voted)
        store.commit_batch(reference, voted)
        store.sync()
        assert stored_pointer_of(store, request.batch.vertices[0])  # the bodies were read
        assert usage() == before
        flush()
        before = usage()
        store.write_state(storage_pb2.WriteStateRequest(deletes=[key]))
        assert usage() == before
        # the same reads through the cache would have filled it
        store._cf[keys.FINALIZED].get(keys.seq_key(1))
        assert usage() > before
    finally:
        store.close()
