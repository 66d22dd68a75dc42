"""The writer thread (ordering, group commit, failures, shutdown), loop responsiveness, metrics."""

from __future__ import annotations

import asyncio
import functools
import resource
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cretoai.config import ConsensusSection
from cretoai.v1 import storage_pb2
from devkit.storage import make_config
from services.storage import keys, options
from services.storage.errors import InvalidArgument, ShuttingDown, WriteFailed
from services.storage.store import Store, verify
from services.storage.writer import Writer
from tests.storage.support import Dag, Running, options_file, start_service, write_flushed_state

LAG_COUNT = "cretoai_service_event_loop_lag_seconds_count"


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
async def store_and_writer(tmp_path: Path) -> Any:
    store = Store.open(tmp_path / "db")
    writer = Writer(store)
    writer.start()
    try:
        yield store, writer
    finally:
        await writer.stop()
        store.close()


async def test_writes_apply_in_submission_order_and_report_their_errors(
    store_and_writer: tuple[Store, Writer],
) -> None:
    _, writer = store_and_writer
    order: list[int] = []
    threads: set[str] = set()

    def op(i: int) -> int:
        threads.add(threading.current_thread().name)
        order.append(i)
        if i == 7:
            raise InvalidArgument("seven")
        if i == 8:
            raise RuntimeError("a bug")
        return i * 10

    results = await asyncio.gather(
        *(writer.submit(functools.partial(op, i), kind="test") for i in range(40)),
        return_exceptions=True,
    )
    assert order == list(range(40))
    assert threads == {"storage-writer"}
    assert isinstance(results[7], InvalidArgument)
    assert isinstance(results[8], RuntimeError)
    assert [r for i, r in enumerate(results) if i not in (7, 8)] == [
        i * 10 for i in range(40) if i not in (7, 8)
    ]


async def test_concurrent_writes_share_wal_syncs(store_and_writer: tuple[Store, Writer]) -> None:
    store, writer = store_and_writer
    groups_before = sample("cretoai_storage_writes_per_sync_count")
    syncs_before = sample("cretoai_storage_wal_sync_seconds_count")

    def put(i: int) -> None:
        store.write_state(
            storage_pb2.WriteStateRequest(
                puts=[storage_pb2.StateEntry(key=b"k%03d" % i, value=b"x" * 1000)]
            )
        )

    await asyncio.gather(
        *(writer.submit(functools.partial(put, i), kind="state") for i in range(200))
    )
    groups = sample("cretoai_storage_writes_per_sync_count") - groups_before
    syncs = sample("cretoai_storage_wal_sync_seconds_count") - syncs_before
    assert 1 <= syncs <= groups < 200  # queued writes were grouped under one sync
    assert not store.dirty
    entries = store.scan_state(b"k", after=None, limit=1000)
    assert [e.key for e in entries] == [b"k%03d" % i for i in range(200)]


async def test_a_barrier_runs_alone_after_the_previous_writes_are_synced(
    store_and_writer: tuple[Store, Writer],
) -> None:
    store, writer = store_and_writer
    seen: list[bool] = []

    def put() -> None:
        store.write_state(
            storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=b"k", value=b"v")])
        )

    writes = [writer.submit(put, kind="state") for _ in range(5)]
    barrier = writer.submit(lambda: seen.append(store.dirty), kind="backup", barrier=True)
    await asyncio.gather(*writes, barrier)
    assert seen == [False]


class FailingSyncStore:
    """Applies writes, then fails the WAL sync (as a dying disk would)."""

    dirty = False
    halt_reason: str | None = None

    def sync(self) -> None:
        if self.dirty:
            self.halt_reason = "sync failed"
            raise WriteFailed("write failed: WAL sync: I/O error")

    def write(self) -> str:
        self.dirty = True
        return "written"


async def test_a_failed_sync_fails_every_write_of_its_group() -> None:
    store = FailingSyncStore()
    writer = Writer(store)  # type: ignore[arg-type]
    writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit(store.write, kind="test") for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, WriteFailed) for r in results)
        assert "WAL sync" in str(results[0])
    finally:
        await writer.stop()


async def test_a_barrier_is_counted_apart_from_the_wal_syncs(
    store_and_writer: tuple[Store, Writer], tmp_path: Path
) -> None:
    store, writer = store_and_writer

    def put() -> None:
        store.write_state(
            storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=b"k", value=b"v")])
        )

    await writer.submit(put, kind="state")
    syncs = sample("cretoai_storage_wal_sync_seconds_count")
    barriers = sample("cretoai_storage_barrier_writes_total")
    await writer.submit(lambda: store.checkpoint(tmp_path / "backup"), kind="backup", barrier=True)
    assert sample("cretoai_storage_barrier_writes_total") - barriers == 1
    # the group before it was synced: no WAL sync of its own
    assert sample("cretoai_storage_wal_sync_seconds_count") == syncs


async def test_a_barrier_after_a_failed_sync_times_its_own_sync() -> None:
    store = FailingSyncStore()
    writer = Writer(store)  # type: ignore[arg-type]
    writer.start()
    try:
        with pytest.raises(WriteFailed):
            await writer.submit(store.write, kind="test")
        syncs = sample("cretoai_storage_wal_sync_seconds_count")
        barriers = sample("cretoai_storage_barrier_writes_total")
        with pytest.raises(WriteFailed):
            await writer.submit(lambda: "checkpoint", kind="backup", barrier=True)
        # the barrier's sync, then the group's (the store is still dirty): both attempted
        assert sample("cretoai_storage_wal_sync_seconds_count") - syncs == 2
        assert sample("cretoai_storage_barrier_writes_total") == barriers  # it did not run
    finally:
        await writer.stop()


async def test_stop_finishes_queued_writes_then_refuses_new_ones(
    store_and_writer: tuple[Store, Writer],
) -> None:
    _, writer = store_and_writer
    done: list[int] = []

    def slow(i: int) -> None:
        time.sleep(0.002)
        done.append(i)

    pending = [
        asyncio.ensure_future(writer.submit(functools.partial(slow, i), kind="t"))
        for i in range(20)
    ]
    await asyncio.sleep(0)
    await writer.stop()
    await asyncio.gather(*pending)
    assert done == list(range(20))
    with pytest.raises(ShuttingDown):
        await writer.submit(lambda: None, kind="t")


async def test_a_cancelled_caller_does_not_break_the_writer(
    store_and_writer: tuple[Store, Writer],
) -> None:
    _, writer = store_and_writer
    gate = threading.Event()
    call = asyncio.ensure_future(writer.submit(lambda: gate.wait(5), kind="t"))
    await asyncio.sleep(0.01)
    call.cancel()
    gate.set()
    assert await writer.submit(lambda: 42, kind="t") == 42


async def test_reads_are_served_while_large_batches_commit(running: Running) -> None:
    """Writes run off the event loop: reads keep completing between commits."""
    dag = Dag(payload_size=1024)
    first = dag.next_batch(100)
    await running.stub.CommitBatch(first)
    probe = storage_pb2.GetVertexRequest(hash=first.results[0].hash)
    lag_before = sample(LAG_COUNT, {"service": "storage"})
    commits_done = asyncio.Event()
    reads = 0
    slowest = 0.0

    async def read_loop() -> None:
        nonlocal reads, slowest
        while not commits_done.is_set():
            t0 = time.perf_counter()
            reply = await running.stub.GetVertex(probe)
            slowest = max(slowest, time.perf_counter() - t0)
            assert reply.found
            reads += 1

    reader = asyncio.create_task(read_loop())
    for _ in range(15):  # ~830 KB each
        await running.stub.CommitBatch(dag.next_batch(100))
    commits_done.set()
    await reader
    assert reads >= 15, f"reads starved by writes: {reads} reads during 15 commits"
    assert slowest < 1.0
    assert sample(LAG_COUNT, {"service": "storage"}) > lag_before


async def test_metrics_endpoint_exposes_the_storage_metrics(tmp_path: Path) -> None:
    running = await start_service(make_config(tmp_path, metrics=True))
    try:
        dag = Dag()
        for _ in range(3):
            await running.stub.CommitBatch(dag.next_batch(7))
        await running.stub.GetStats(storage_pb2.GetStatsRequest())
        url = f"http://127.0.0.1:{running.service.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
    finally:
        await running.stop()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("cretoai_storage_")
    }
    assert values["cretoai_storage_commit_seconds_count"] >= 3
    assert values["cretoai_storage_batch_vertices_sum"] >= 21
    assert values["cretoai_storage_batch_bytes_count"] >= 3
    assert values["cretoai_storage_wal_sync_seconds_count"] >= 3
    assert values["cretoai_storage_last_seq"] == 3
    assert values['cretoai_storage_vertices{status="finalized"}'] == 21
    assert values["cretoai_storage_db_bytes"] > 0
    # RocksDB's own memory (an empty memtable is already an arena block)
    assert values["cretoai_storage_memtable_bytes"] > 0
    assert values["cretoai_storage_block_cache_bytes"] >= 0
    assert values["cretoai_storage_table_readers_bytes"] >= 0  # exported
    assert values['cretoai_storage_keys{column_family="vertices"}'] == 21
    assert 'cretoai_service_event_loop_lag_seconds_bucket{le="0.0005",service="storage"}' in text


def test_rocksdbs_memory_is_measured(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    try:
        memtables = store.memory_bytes().memtables
        puts = [storage_pb2.StateEntry(key=b"k%06d" % i, value=bytes(1000)) for i in range(2000)]
        store.write_state(storage_pb2.WriteStateRequest(puts=puts))
        assert store.memory_bytes().memtables >= memtables + 1_900_000  # the 2 MB, in a memtable
    finally:
        store.close()
    assert store.memory_bytes() == (0, 0, 0)


def test_index_and_filter_blocks_live_in_the_bounded_block_cache(tmp_path: Path) -> None:
    """RocksDB's default keeps each table file's whole index and Bloom filter beside the
    block cache, a memory that grows with the database forever (26 KB for these 2.6 MB;
    2.5 MB per 100,000 vertices). Here they are cached: what the readers hold outside the
    cache is a small fixed cost per file, and the cache's gauge sees the blocks read (the
    default column family's own cache, which it once read, stays empty)."""
    store = Store.open(tmp_path / "db")
    try:
        write_flushed_state(store, rows=100)  # 5,000 records of 512 bytes
        store._cf[keys.CONSENSUS_STATE].flush()
        sst = (
            store._cf[keys.CONSENSUS_STATE].property_int_value("rocksdb.total-sst-files-size") or 0
        )
        assert sst > 2_500_000
        assert store.memory_bytes().table_readers < 8_000
        wanted = [b"k/%08d/%03d" % (i, 7) for i in range(0, 100, 3)]
        for key in wanted:  # storage's own reads: the index and filter, no data block
            assert store.get_state(key) is not None
        own = store.memory_bytes().block_cache
        assert 0 < own < 60_000
        for key in wanted:  # read as clients' reads are
            assert store._cf[keys.CONSENSUS_STATE].get(key, read_opt=store._read) is not None
        assert store.memory_bytes().block_cache > own + 100_000  # ~34 data blocks
    finally:
        store.close()


def test_rocksdb_keeps_a_bounded_number_of_table_files_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB's default (max_open_files -1) keeps every table file open, a count that grows
    with the database until the service runs out of file descriptors. The options RocksDB
    recorded for the open database say the bound: MAX_OPEN_TABLE_FILES, or half a lower
    open-files limit."""

    def recorded_max_open_files(db: Path) -> int:
        return int(options_file(db)["[DBOptions]"]["max_open_files"])

    Store.open(tmp_path / "db").close()
    assert recorded_max_open_files(tmp_path / "db") == options.max_open_table_files()
    assert 64 <= options.max_open_table_files() <= options.MAX_OPEN_TABLE_FILES
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    assert options.max_open_table_files() == 512
    Store.open(tmp_path / "db").close()
    assert recorded_max_open_files(tmp_path / "db") == 512


def test_memtable_arena_blocks_are_above_the_mmap_threshold_and_batches_below(
    tmp_path: Path,
) -> None:
    """The storage process fixes glibc's mmap threshold between a batch's buffers and the
    memtables' arena blocks (cretoai/allocator.py): every column family RocksDB recorded
    for the open database allocates its memtable in blocks above the threshold (each a
    mapping of its own, unmapped with its memtable), while the buffers of a batch up to
    half the default size come from the heap (a full 2-MiB batch's largest are mappings:
    a higher threshold cost storage 10-15 MB, docs/storage.md)."""
    Store.open(tmp_path / "db").close()
    latest = max((tmp_path / "db").glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    lines = [line.strip() for line in latest.read_text().splitlines()]
    arenas = [int(line.split("=")[1]) for line in lines if line.startswith("arena_block_size=")]
    assert len(arenas) >= len(keys.COLUMN_FAMILIES), arenas
    assert all(a == options.ARENA_BLOCK_BYTES for a in arenas), arenas
    assert options.ARENA_BLOCK_BYTES > options.MMAP_THRESHOLD_BYTES
    assert 1.5 * (ConsensusSection().batch_max_bytes // 2) < options.MMAP_THRESHOLD_BYTES
    assert options.TRIM_THRESHOLD_BYTES > options.MMAP_THRESHOLD_BYTES


def test_a_database_written_with_rocksdbs_default_table_options_opens_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's database from before index and filter blocks moved into the cache (or an
    old backup of it) keeps its table files as they were written: it opens with today's
    options, every record reads back, and `verify` passes; new tables get the new layout."""
    from bench.storage_memory import rocksdb_default_cf_options

    db = tmp_path / "db"
    with monkeypatch.context() as old:
        old.setattr(options, "cf_options", rocksdb_default_cf_options)
        store = Store.open(db)
        write_flushed_state(store, rows=40)
        store._cf[keys.CONSENSUS_STATE].flush()
        assert store.memory_bytes().table_readers > 8_000  # the old layout: beside the cache
        store.close()
    store = Store.open(db)
    try:
        assert all(store.get_state(b"k/%08d/%03d" % (i, 9)) is not None for i in range(40))
        write_flushed_state(store, rows=1)
    finally:
        store.close()
    _, read = verify(db)
    assert read >= 40 * 50
