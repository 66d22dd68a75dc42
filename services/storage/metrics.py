"""Prometheus metrics of the storage service (all prefixed ``cretoai_storage_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
)

COMMIT_LATENCY = Histogram(
    "cretoai_storage_commit_seconds",
    "CommitBatch latency in the service: queued, written and synced",
    buckets=_FAST,
)
BATCH_VERTICES = Histogram(
    "cretoai_storage_batch_vertices",
    "Vertices per committed batch",
    buckets=(0, 1, 4, 16, 64, 128, 256, 512, 1024, 4096),
)
BATCH_BYTES = Histogram(
    "cretoai_storage_batch_bytes",
    "Bytes written for the vertices of a committed batch (creator keys stored once)",
    buckets=(0, 1024, 16384, 65536, 262144, 524288, 1048576, 2097152, 4194304, 16777216),
)
WRITE_APPLY = Histogram(
    "cretoai_storage_write_apply_seconds",
    "Time to build and apply one write (unsynced) on the writer thread",
    ["op"],
    buckets=_FAST,
)
WRITER_WAIT = Histogram(
    "cretoai_storage_writer_wait_seconds",
    "Time a write waited in the writer queue",
    ["op"],
    buckets=_FAST,
)
WAL_SYNC = Histogram(
    "cretoai_storage_wal_sync_seconds", "Time of one WAL sync (once per group)", buckets=_FAST
)
BARRIER_WRITES = Counter(
    "cretoai_storage_barrier_writes_total",
    "Writes run alone after a synced group (checkpoints for backups); each makes files of "
    "its own durable (a memtable flush, the checkpoint's files), not a WAL sync",
)
GROUP_SIZE = Histogram(
    "cretoai_storage_writes_per_sync",
    "Writes made durable by one WAL sync",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
WRITER_QUEUE = Gauge("cretoai_storage_writer_queue_depth", "Writes queued or in progress")
WRITE_ERRORS = Counter(
    "cretoai_storage_write_errors_total", "Writes that failed on disk or in RocksDB", ["kind"]
)
PROOF_CHECK = Histogram(
    "cretoai_storage_commit_proof_seconds",
    "Time to check a CommitBatch's proof of finality (the digest of its vertices and its "
    "certificate's signatures, on the certify threads), until it may go on to the writer",
    buckets=_FAST,
)
COMMIT_REFUSALS = Counter(
    "cretoai_storage_commit_refusals_total",
    "CommitBatch requests refused for want of a valid proof of finality (nothing written), "
    "by the check that failed: missing, seq, digest, certificate, reference (voted_batch_key "
    "names no record, or one that holds no vertices)",
    ["check"],
)
HALTED = Gauge("cretoai_storage_halted", "1 while writes are refused after a write error")
DAMAGED_READS = Counter(
    "cretoai_storage_damaged_reads_total",
    "Reads that met damaged data (a table block failing its checksum); the service then "
    "reports NOT_SERVING: restore the database or move it aside",
)
LAST_SEQ = Gauge("cretoai_storage_last_seq", "Highest committed (synced) sequence number")
VERTICES = Gauge("cretoai_storage_vertices", "Vertices stored, by status", ["status"])
EDGES = Gauge("cretoai_storage_edges", "Parent-child edges of finalized vertices")
EVIDENCE = Gauge("cretoai_storage_evidence", "Evidence records stored")
DB_BYTES = Gauge("cretoai_storage_db_bytes", "Bytes of every file in the database directory")
MEMTABLE_BYTES = Gauge(
    "cretoai_storage_memtable_bytes",
    "Bytes of RocksDB's memtables, every column family (capped by the write buffer manager)",
)
BLOCK_CACHE_BYTES = Gauge(
    "cretoai_storage_block_cache_bytes", "Bytes in RocksDB's block cache (capped at its capacity)"
)
MEMORY_BUDGET_BYTES = Gauge(
    "cretoai_storage_memory_budget_bytes",
    "RocksDB's memory as configured ([storage] memtables_mb, block_cache_mb): the cap of "
    "every memtable together, and the block cache's capacity",
    ["part"],
)
TABLE_READERS_BYTES = Gauge(
    "cretoai_storage_table_readers_bytes",
    "Bytes RocksDB's SST readers hold outside the block cache (index and filter blocks "
    "live in the cache; this stays small however large the database grows)",
)
KEYS = Gauge("cretoai_storage_keys", "Keys per column family (RocksDB estimate)", ["column_family"])
