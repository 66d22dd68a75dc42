"""Storage benchmark: what RocksDB holds in memory as the database grows.

    .venv/bin/python -m bench.storage_memory [--vertices 300000] [--rocksdb-defaults]

Opens a :class:`services.storage.store.Store` in a temporary directory (under ``--dir``,
default ``/tmp``) with the service's options and commits batches of 100 realistic vertices
to it in this process, as the storage service's writer does (``Store.commit_batch``, then
a WAL sync): a 1-KB random payload, two parents from the batch before, one interned
2,592-byte creator key, a 4,627-byte signature (random bytes: commit_batch does not verify
signatures; the service's certificate check comes before it and is not measured here).

Every ``--report-every`` vertices it records RocksDB's memory (``Store.memory_bytes``:
memtables, the block cache's usage, and what the table readers hold outside the cache),
the table files' size, the process's RSS, and the median and p99 of 1,000 ``get_vertex``
reads of vertices stored so far (a uniform sample of 20,000 of them, kept by reservoir
sampling so that the benchmark's own memory stays flat: the index and filter blocks of
old files are read too).

``--rocksdb-defaults`` runs the same with RocksDB's default table options instead of the
node's (index and filter blocks beside the block cache, not partitioned): the figure that
grows with the database. The result says the table readers' bytes per 100,000 vertices
(a least-squares slope) for the run.

Bounded in count (``--vertices``) and in time (``--max-seconds``). Writes
``bench/results/storage_memory.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import rocksdict

from cretoai.v1 import storage_pb2, vertex_pb2
from cretoai.vertex import vertex_hash
from services.storage import options as storage_options
from services.storage.store import Store

BATCH = 100
PAYLOAD_BYTES = 1024
CREATOR_BYTES = 2592
SIGNATURE_BYTES = 4627
READS = 1000
#: Hashes kept to read back: a uniform sample of every vertex stored (reservoir sampling),
#: so that the benchmark's own memory does not grow with the database it measures.
KEPT = 20_000


def rocksdb_default_cf_options(
    cache: rocksdict.Cache, *, block_size: int = storage_options.TABLE_BLOCK_BYTES
) -> rocksdict.Options:
    """The node's column family options with RocksDB's default table options (index and
    filter blocks held by the table readers, beside the cache)."""
    options = rocksdict.Options(raw_mode=True)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_block_size(block_size)
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(storage_options.WRITE_BUFFER_BYTES)
    return options


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_batch(
    seq: int, parents: list[bytes], creator: bytes, signature: bytes
) -> storage_pb2.CommitBatchRequest:
    """``BATCH`` accepted vertices at ``seq``, each with two of ``parents`` (if any)."""
    request = storage_pb2.CommitBatchRequest()
    request.batch.seq = seq
    request.batch.batch_digest = os.urandom(32)
    for i in range(BATCH):
        vertex = vertex_pb2.Vertex(
            payload=os.urandom(PAYLOAD_BYTES),
            parents=random.sample(parents, 2) if len(parents) >= 2 else [],
            creator=creator,
            timestamp_ms=1_700_000_000_000 + seq * BATCH + i,
            signature=signature,
        )
        request.batch.vertices.append(vertex)
        request.results.add(hash=vertex_hash(vertex))
    return request


def table_bytes(store: Store) -> int:
    return sum(family.sst_bytes for family in store.stats().column_families)


def keep(kept: list[bytes], seen: int, h: bytes) -> None:
    """Reservoir sampling: after ``seen`` hashes, ``kept`` is a uniform sample of them."""
    if len(kept) < KEPT:
        kept.append(h)
    else:
        slot = random.randrange(seen)
        if slot < KEPT:
            kept[slot] = h


def read_latency_ms(store: Store, kept: list[bytes]) -> dict[str, float]:
    times = []
    for h in random.sample(kept, min(READS, len(kept))):
        started = time.perf_counter()
        record = store.get_vertex(h, certificate=False)
        times.append((time.perf_counter() - started) * 1000)
        assert record is not None
    times.sort()
    return {
        "p50": round(statistics.median(times), 4),
        "p99": round(times[int(0.99 * (len(times) - 1))], 4),
    }


def slope_per_100k(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of ``(vertices, bytes)`` in bytes per 100,000 vertices."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / denominator * 100_000


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.rocksdb_defaults:
        storage_options.cf_options = rocksdb_default_cf_options
    creator, signature = os.urandom(CREATOR_BYTES), os.urandom(SIGNATURE_BYTES)
    samples: list[dict[str, Any]] = []
    kept: list[bytes] = []
    stored = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cretoai-storage-memory-", dir=args.dir) as tmp:
        store = Store.open(Path(tmp) / "db")
        try:
            parents: list[bytes] = []
            seq = 0
            while stored < args.vertices and time.monotonic() - started < args.max_seconds:
                seq += 1
                request = make_batch(seq, parents, creator, signature)
                store.commit_batch(request)
                store.sync()
                parents = [r.hash for r in request.results]
                for h in parents:
                    stored += 1
                    keep(kept, stored, h)
                if stored % args.report_every == 0:
                    memory = store.memory_bytes()
                    reads = read_latency_ms(store, kept)
                    sample: dict[str, Any] = {
                        "vertices": stored,
                        "s": round(time.monotonic() - started, 1),
                        "table_bytes": table_bytes(store),
                        "memtables_bytes": memory.memtables,
                        "block_cache_bytes": memory.block_cache,
                        "table_readers_bytes": memory.table_readers,
                        "rss_mb": round(rss_mb(), 1),
                        "get_vertex_ms": reads,
                    }
                    samples.append(sample)
                    print(
                        f"{sample['vertices']:>9,} vertices  tables "
                        f"{sample['table_bytes'] / 2**20:7.1f} MB  table readers "
                        f"{memory.table_readers / 2**20:6.2f} MB  block cache "
                        f"{memory.block_cache / 2**20:5.1f} MB  RSS {sample['rss_mb']:6.1f} MB  "
                        f"get_vertex p50 {reads['p50']:.3f} ms",
                        flush=True,
                    )
        finally:
            store.close()
    readers = [(s["vertices"], float(s["table_readers_bytes"])) for s in samples]
    return {
        "benchmark": "storage_memory",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "parameters": {
            "vertices": args.vertices,
            "batch": BATCH,
            "table_options": "rocksdb_defaults" if args.rocksdb_defaults else "node",
            "payload_bytes": PAYLOAD_BYTES,
        },
        "samples": samples,
        "table_readers_bytes_per_100k_vertices": slope_per_100k(readers),
        "total_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vertices", type=int, default=300_000)
    parser.add_argument("--report-every", type=int, default=50_000, help="a multiple of 100")
    parser.add_argument("--rocksdb-defaults", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--output", default="bench/results/storage_memory.json")
    args = parser.parse_args(argv)
    if args.report_every % BATCH:
        parser.error(f"--report-every must be a multiple of {BATCH}")
    result = run(args)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    slope = result["table_readers_bytes_per_100k_vertices"]
    print(f"table readers: {slope} bytes per 100,000 vertices")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
