"""RocksDB options of the node's database.

Why these settings (measured on the development VM, see docs/storage.md):

* The WAL is synced once per group of writes (``flush_wal(sync=True)``, which
  releases the GIL), not with ``WriteOptions.sync`` (which holds it for the
  whole fsync).
* Memtables are 16 MiB per column family and 48 MiB for all together (the write
  buffer manager), the block cache 32 MiB (``[storage] memtables_mb``,
  ``block_cache_mb``): the service's memory stays bounded (at 200 vertices/s its RSS
  was 185 MB with 64 MiB memtables and a 64 MiB cache, 121 MB with 48 and 32; the
  storage benchmark's commit latency was the same with both, back to back: p99
  19.3 ms). A 16-MiB cache saved 25-30 MB after 5 minutes at 306 vertices/s but
  only 5-10 MB after 10, still growing; 32 MiB of memtables cost 60 % more of
  storage's CPU (docs/storage.md).
* A memtable flush writes an SST and fsyncs it at the end; a WAL sync that
  lands then waits behind it (~100 ms for 64 MiB). ``strict_bytes_per_sync`` makes the
  flush sync every 256 KiB instead, so a WAL sync waits for at most that much.
  The RocksDB inside rocksdict is built without ``sync_file_range``, so plain
  ``bytes_per_sync`` does nothing, and rocksdict has no setter for
  ``strict_bytes_per_sync``: we load those two from an OPTIONS file template
  (:func:`_template_options`), the format RocksDB itself persists.
* Recycled WAL files are overwritten in place, so a WAL sync needs no
  file-size metadata commit in the filesystem journal.
* ``max_total_wal_size`` forces the small column families (consensus state,
  evidence) to flush, so old WAL files do not pile up.
* Index and filter blocks live in the block cache, partitioned, with only the small
  top-level index of each file (and level 0's blocks) pinned there. RocksDB's default
  keeps every SST's whole index and Bloom filter in memory outside the cache: about
  25 bytes per stored vertex, a memory that grows with the database forever (2.5 MB
  per 100,000 vertices, ``bench.storage_memory``; 420 MB a day at 200 vertices/s).
  Partitions keep a large database's index from crowding out the data blocks.
* A table file that a compaction deletes takes its blocks out of the block cache
  (``uncache_aggressiveness``, set from the OPTIONS template: rocksdict has no setter).
  RocksDB's default leaves them to be evicted: the index and filter partitions it loads
  when it opens each new file filled the cache with dead blocks at about 4 MB a minute
  at 306 vertices/s, until the cache was full (storage's memory).
* The ``default`` column family, which holds the bodies (about 8.5 KB each), has
  32-KiB blocks: with 4 KiB each body was a block of its own, with an index entry of
  its long key, most of the index. In 150-s runs at 306 vertices/s the cache held
  10-15 MB at the end, 3.8-4.0 MB with the two changes above, 1.2-1.9 MB with both
  (docs/storage.md).
* At most :data:`MAX_OPEN_TABLE_FILES` table files are kept open (half the process's
  open-files limit when that is lower). RocksDB's default keeps every one open, a count
  that grows with the database (64-MiB files: about 1,500 a day at 200 vertices/s)
  until the service runs out of file descriptors; older files are reopened on demand.
"""

from __future__ import annotations

import logging
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBRecoveryMode,
    Options,
    ReadOptions,
    WriteOptions,
)

from services.storage.keys import COLUMN_FAMILIES

log = logging.getLogger(__name__)

MIB = 1024 * 1024
BYTES_PER_SYNC = 256 * 1024
#: glibc's mmap threshold in the storage process, fixed (cretoai/allocator.py): below
#: the memtables' arena blocks, so a flushed memtable's memory leaves the process instead
#: of staying in the heap; above most of a batch's buffers, so that each is not a fresh
#: mapping whose every page faults. A full 2-MiB batch's largest ones are above it: 3.5 MiB
#: kept them in the heap too, and storage ended ~10 MB larger at saturation (docs/storage.md).
MMAP_THRESHOLD_BYTES = 2 * 1024 * 1024
#: glibc's trim threshold, fixed with it: free memory at the heap's top kept for the
#: next batch's buffers instead of handed back and faulted in again.
TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024
#: RocksDB's memtable arena block (its default: 1 MiB at these memtable sizes): above
#: the mmap threshold, so that every block is a mapping of its own, unmapped with its
#: memtable. Not larger: RocksDB's write buffer manager counts each column family's
#: blocks as they are allocated, and seven 8-MiB ones made it flush nearly empty memtables.
ARENA_BLOCK_BYTES = 4 * 1024 * 1024
WRITE_BUFFER_BYTES = 16 * 1024 * 1024
#: All memtables together (RocksDB's write buffer manager): bounds the service's memory.
DB_WRITE_BUFFER_BYTES = 48 * 1024 * 1024
MAX_TOTAL_WAL_BYTES = 256 * 1024 * 1024
BLOCK_CACHE_BYTES = 32 * 1024 * 1024
#: The smallest budgets a node may set (``[storage] memtables_mb``, ``block_cache_mb``).
#: Each column family's memtable holds a 4-MiB arena block from its first write, and the
#: write buffer manager counts them: below 48 MiB it flushes memtables that are nearly
#: empty (at 32 MiB storage spent 1.78 CPU-ms per vertex at 306 vertices/s instead of
#: 1.06-1.11, for no less memory: docs/storage.md). The cache holds every table file's
#: pinned index and filter tops.
MIN_DB_WRITE_BUFFER_BYTES = 48 * MIB
MIN_BLOCK_CACHE_BYTES = 4 * MIB
RECYCLED_WAL_FILES = 4
#: How hard RocksDB erases a deleted table file's blocks from the block cache (0, its
#: default: never; they wait for eviction). See the module docstring.
UNCACHE_AGGRESSIVENESS = 1000
#: A table block (RocksDB's default), and the ``default`` column family's, which holds the
#: vertices' bodies (about 8.5 KB each): with 4-KiB blocks each body was a block of its
#: own and an index entry of ~90 bytes (its long key), the largest part of the index.
TABLE_BLOCK_BYTES = 4 * 1024
BODY_BLOCK_BYTES = 32 * 1024
#: Table files RocksDB keeps open at most (see the module docstring).
MAX_OPEN_TABLE_FILES = 4096

_TEMPLATE = f"""\
[Version]
  rocksdb_version=9.8.4
  options_file_version=1.1
[DBOptions]
  strict_bytes_per_sync=true
  bytes_per_sync={BYTES_PER_SYNC}
[CFOptions "default"]
  uncache_aggressiveness={UNCACHE_AGGRESSIVENESS}
"""


def _load_template() -> tuple[Options, Options]:
    """The database's options and a column family's, as :data:`_TEMPLATE` sets them."""
    with tempfile.TemporaryDirectory(prefix="cretoai-rocksdb-options-") as tmp:
        (Path(tmp) / "OPTIONS-000001").write_text(_TEMPLATE)
        options, families = Options.load_latest(tmp)
        return options, families["default"]


def _template_options() -> Options:
    """Raw-mode options with strict_bytes_per_sync (see the module docstring)."""
    try:
        return _load_template()[0]
    except Exception as exc:  # an unexpected rocksdict: run without, but say so
        log.warning(
            "cannot load the RocksDB options template; flushes may delay WAL syncs",
            extra={"fields": {"error": str(exc)}},
        )
        options = Options(raw_mode=True)
        options.set_bytes_per_sync(BYTES_PER_SYNC)
        return options


def _template_cf_options() -> Options:
    """A column family's options with ``uncache_aggressiveness`` (rocksdict has no
    setter for it; see the module docstring)."""
    try:
        return _load_template()[1]
    except Exception as exc:  # an unexpected rocksdict: run without, but say so
        log.warning(
            "cannot load the RocksDB options template; a deleted table file's blocks stay "
            "in the block cache until evicted",
            extra={"fields": {"error": str(exc)}},
        )
        return Options(raw_mode=True)


def max_open_table_files() -> int:
    """MAX_OPEN_TABLE_FILES, or half this process's open-files limit when that is lower
    (sockets and the write-ahead log need the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_TABLE_FILES
    return max(64, min(MAX_OPEN_TABLE_FILES, soft // 2))


@dataclass(frozen=True)
class MemoryBudget:
    """What RocksDB may hold in memory: all memtables together (the write buffer
    manager; each one at most :data:`WRITE_BUFFER_BYTES`) and the block cache shared by
    every column family."""

    memtables_bytes: int = DB_WRITE_BUFFER_BYTES
    block_cache_bytes: int = BLOCK_CACHE_BYTES

    def __post_init__(self) -> None:
        if self.memtables_bytes < MIN_DB_WRITE_BUFFER_BYTES:
            raise ValueError(f"memtables: at least {MIN_DB_WRITE_BUFFER_BYTES} bytes")
        if self.block_cache_bytes < MIN_BLOCK_CACHE_BYTES:
            raise ValueError(f"block cache: at least {MIN_BLOCK_CACHE_BYTES} bytes")


DEFAULT_BUDGET = MemoryBudget()


def open_options(
    existing: list[str], *, create: bool, budget: MemoryBudget = DEFAULT_BUDGET
) -> tuple[Options, dict[str, Options]]:
    """The database's options and its column families' (``Rdict(path, options,
    column_families=...)``), all sharing one block cache. The ``default`` column family
    is among them, with the others' table options but larger blocks: it holds the bodies
    stored once (docs/storage.md), and RocksDB's defaults would give it a cache of its own
    and every table's whole index and filter in memory beside it (at `8d58b21` storage
    grew 9.5 MB/min at 306 vertices/s that way)."""
    cache = Cache(budget.block_cache_bytes)
    return (
        _with_tables(db_options(create=create, budget=budget), cache, block_size=BODY_BLOCK_BYTES),
        column_families(existing, cache),
    )


def db_options(*, create: bool, budget: MemoryBudget = DEFAULT_BUDGET) -> Options:
    """``create`` only for a new database (a missing or empty directory): an existing one
    is opened as it is, never completed with an empty database or empty column families.
    The ``default`` column family's table options are :func:`open_options`'s."""
    options = _template_options()
    options.create_if_missing(create)
    options.create_missing_column_families(create)
    options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    options.set_paranoid_checks(True)
    options.set_recycle_log_file_num(RECYCLED_WAL_FILES)
    options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES)
    options.set_max_background_jobs(2)
    options.set_db_write_buffer_size(budget.memtables_bytes)
    options.set_keep_log_file_num(4)
    options.set_max_log_file_size(16 * 1024 * 1024)
    options.set_max_open_files(max_open_table_files())
    options.set_arena_block_size(ARENA_BLOCK_BYTES)
    return options


def cf_options(cache: Cache, *, block_size: int = TABLE_BLOCK_BYTES) -> Options:
    return _with_tables(_template_cf_options(), cache, block_size=block_size)


def _with_tables(options: Options, cache: Cache, *, block_size: int = TABLE_BLOCK_BYTES) -> Options:
    """``options`` with the column families' table options, memtable and arena sizes."""
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_block_size(block_size)
    table.set_bloom_filter(10, False)
    # index and filters in the cache, not beside it (see the module docstring)
    table.set_cache_index_and_filter_blocks(True)
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_arena_block_size(ARENA_BLOCK_BYTES)
    return options


def column_families(existing: list[str], cache: Cache) -> dict[str, Options]:
    """Options for our column families plus any other that already exists in the DB, all
    with the block cache ``cache``."""
    names = ["default", *COLUMN_FAMILIES, *(n for n in existing if n not in COLUMN_FAMILIES)]
    sizes = {"default": BODY_BLOCK_BYTES}
    return {
        name: cf_options(cache, block_size=sizes.get(name, TABLE_BLOCK_BYTES))
        for name in dict.fromkeys(names)
    }


def unsynced_write() -> WriteOptions:
    """Writes go to the WAL unsynced; the writer syncs the WAL once per group."""
    options = WriteOptions()
    options.sync = False
    return options


def read_options(*, fill_cache: bool = True) -> ReadOptions:
    """Checksums verified. ``fill_cache=False`` for the writer's own bookkeeping reads:
    the blocks they read are not what clients read next, and would fill the block cache
    (storage's memory) sooner."""
    options = ReadOptions()
    options.set_verify_checksums(True)
    options.fill_cache(fill_cache)  # type: ignore[call-arg]  # the stub omits it
    return options
