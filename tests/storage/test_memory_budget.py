"""RocksDB's memory budget: ``[storage] memtables_mb`` and ``block_cache_mb`` reach RocksDB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cretoai.config import StorageSection, parse_config
from cretoai.v1 import storage_pb2
from devkit.storage import config_dict, vertex_hash
from services.storage import keys
from services.storage.options import (
    BODY_BLOCK_BYTES,
    MIB,
    TABLE_BLOCK_BYTES,
    UNCACHE_AGGRESSIVENESS,
    MemoryBudget,
)
from services.storage.store import Store
from tests.storage.support import Dag, options_file, start_service


def test_a_budget_sets_the_write_buffer_manager_each_memtable_and_the_cache(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "db", budget=MemoryBudget(96 * MIB, 6 * MIB))
    try:
        for family in (store._db, store._cf["vertices"]):
            assert family.property_int_value("rocksdb.block-cache-capacity") == 6 * MIB
    finally:
        store.close()
    sections = options_file(tmp_path / "db")
    assert sections["[DBOptions]"]["db_write_buffer_size"] == str(96 * MIB)
    families = [name for name in sections if name.startswith("[CFOptions ")]
    assert '[CFOptions "default"]' in families and len(families) > 2
    for name in families:  # each memtable 16 MiB whatever the total
        assert sections[name]["write_buffer_size"] == str(16 * MIB), name


def test_the_default_budget(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    try:
        capacity = store._db.property_int_value("rocksdb.block-cache-capacity")
    finally:
        store.close()
    budget = MemoryBudget()
    assert capacity == budget.block_cache_bytes
    sections = options_file(tmp_path / "db")
    assert sections["[DBOptions]"]["db_write_buffer_size"] == str(budget.memtables_bytes)


@pytest.mark.parametrize(
    ("memtables", "cache"), [(48 * MIB - 1, 16 * MIB), (48 * MIB, 4 * MIB - 1), (0, 0)]
)
def test_a_budget_below_the_floors_is_refused(memtables: int, cache: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        MemoryBudget(memtables, cache)


async def test_the_service_opens_its_database_with_the_configured_budget(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    raw["storage"].update(memtables_mb=80, block_cache_mb=5)
    cfg = parse_config(raw, tmp_path / "node.toml")
    running = await start_service(cfg)
    try:
        for part, mib in (("memtables", 80), ("block_cache", 5)):
            value = REGISTRY.get_sample_value("cretoai_storage_memory_budget_bytes", {"part": part})
            assert value == mib * MIB, part
    finally:
        await running.stop()
    sections = options_file(cfg.storage_path)
    assert sections["[DBOptions]"]["db_write_buffer_size"] == str(80 * MIB)


def test_the_configs_defaults_are_the_stores() -> None:
    """A node started from a config without the two settings gets the budget a Store
    opened without one has (the tools, the benchmarks)."""
    section, budget = StorageSection(), MemoryBudget()
    assert section.memtables_mb * MIB == budget.memtables_bytes
    assert section.block_cache_mb * MIB == budget.block_cache_bytes


def test_a_database_reopened_with_another_budget_takes_it_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    """The budget is no on-disk format: an operator who changes it (down to the floors,
    then back up) reopens the same database with the new sizes and every record."""
    dag = Dag()
    requests = [dag.next_batch(3) for _ in range(2)]
    budgets = [MemoryBudget(128 * MIB, 64 * MIB), MemoryBudget(48 * MIB, 4 * MIB), MemoryBudget()]
    for round_, budget in enumerate(budgets):
        store = Store.open(tmp_path / "db", budget=budget)
        try:
            assert store._db.property_int_value("rocksdb.block-cache-capacity") == (
                budget.block_cache_bytes
            )
            if round_ < len(requests):
                store.commit_batch(requests[round_])
                store.sync()
            for request in requests[: round_ + 1]:
                for vertex in request.batch.vertices:
                    record = store.get_vertex(vertex_hash(vertex), certificate=False)
                    assert record is not None and record.vertex == vertex
        finally:
            store.close()
        sections = options_file(tmp_path / "db")
        assert sections["[DBOptions]"]["db_write_buffer_size"] == str(budget.memtables_bytes)


def test_a_compacted_table_file_s_blocks_leave_the_block_cache(tmp_path: Path) -> None:
    """Each table file a compaction replaces leaves its cached blocks (the index and filter
    partitions RocksDB loads when it opens a file, the data blocks read) to be evicted
    only when the cache is full: at 306 vertices/s those dead blocks filled it by 4 MB a
    minute, storage's memory. They go with their file (``uncache_aggressiveness``)."""
    store = Store.open(tmp_path / "db")
    state = store._cf[keys.CONSENSUS_STATE]
    wanted = [b"k/%04d" % i for i in range(0, 2000, 7)]

    def usage() -> int:
        return store._db.property_int_value("rocksdb.block-cache-usage") or 0

    try:
        for _ in range(2):  # two table files holding the same keys
            entries = [
                storage_pb2.StateEntry(key=b"k/%04d" % i, value=os.urandom(512))
                for i in range(2000)
            ]
            store.write_state(storage_pb2.WriteStateRequest(puts=entries))
            store.sync()
            state.flush(True)
        for key in wanted:  # as clients read: data blocks into the cache
            assert state.get(key, read_opt=store._read) is not None
        before = usage()
        assert before > 100_000
        state.compact_range(None, None)  # one file replaces both
        assert usage() < before / 2
    finally:
        store.close()
    sections = options_file(tmp_path / "db")
    for name in [n for n in sections if n.startswith("[CFOptions ")]:
        assert sections[name]["uncache_aggressiveness"] == str(UNCACHE_AGGRESSIVENESS), name


def test_the_bodies_are_stored_in_larger_blocks(tmp_path: Path) -> None:
    """A body (about 8.5 KB) in a block of RocksDB's default 4 KiB was a block, and an
    index entry of its long key, of its own: the largest part of an index that the
    block cache holds. The ``default`` column family, which holds the bodies, has blocks
    of BODY_BLOCK_BYTES; the others keep the default."""
    Store.open(tmp_path / "db").close()
    sections = options_file(tmp_path / "db")
    sizes = {
        name.split('"')[1]: int(values["block_size"])
        for name, values in sections.items()
        if name.startswith("[TableOptions/BlockBasedTable ")
    }
    assert sizes.pop("default") == BODY_BLOCK_BYTES > TABLE_BLOCK_BYTES
    assert set(sizes.values()) == {TABLE_BLOCK_BYTES} and len(sizes) >= 8
