"""Storage benchmark: CommitBatch latency for 100-vertex batches through the gRPC API.

    .venv/bin/python -m bench.storage_commit [--batches N] [--rate R] [--vertices V] ...

Starts the real storage service as a process (``python -m services.storage``,
config and RocksDB in a temporary directory on the same filesystem as /tmp,
loopback only), then commits batches of realistic vertices (1 KB payload, a
2592-byte ML-DSA-87 creator key, a 4627-byte signature: ~830 KB per batch)
through ``CommitBatch``, one at a time as the consensus executor does. Each
batch is what consensus sends and storage verifies: its digest over the
vertices' signed digests and a real finality certificate, three ML-DSA-87
COMMITs of the test validator set (n = 4) that the service is configured with.
A phase's batches are built before it starts.

* **closed loop** — the next batch as soon as the previous is acknowledged
  (the disk's limit);
* **paced** — ``--rate`` batches per second (default 50: about what a consensus
  with 1 MiB, 20 ms batches produces at most).

During both, a reader calls ``GetVertex`` every 5 ms: its latency is what the
GIL-holding RocksDB writes cost the service's other callers. The service's own
event-loop lag (``cretoai_storage_event_loop_lag_seconds``, a 50 ms timer's
lateness), WAL-sync and apply times are read from its Prometheus endpoint. For
scale, the raw cost of appending and fsyncing the same number of bytes to a
file on the same filesystem is measured first.

Bounded in count and in time (``--max-seconds``). Writes
``bench/results/storage_commit.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from devkit.storage import ServiceProcess, commit_request, vertex_hash

RESULT = Path(__file__).resolve().parent / "results" / "storage_commit.json"
TARGET_P99_MS = 5.0
PUBLIC_KEY_SIZE = 2592
SIGNATURE_SIZE = 4627
READ_EVERY_S = 0.005


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = [s * 1e3 for s in seconds]
    return {
        "count": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "p99_9": round(percentile(ms, 99.9), 3),
        "max": round(max(ms), 3),
        "mean": round(sum(ms) / len(ms), 3),
    }


class Batches:
    """Realistic batches of a growing DAG (each vertex has two parents from the last batch)."""

    def __init__(self, vertices: int, payload: int) -> None:
        self.vertices = vertices
        self.payload = payload
        self.creator = os.urandom(PUBLIC_KEY_SIZE)
        self.seq = 0
        self.tips: list[bytes] = []

    def next(self) -> storage_pb2.CommitBatchRequest:
        self.seq += 1
        now = int(time.time() * 1000)
        vertices, hashes = [], []
        for _ in range(self.vertices):
            vertex = vertex_pb2.Vertex(
                payload=os.urandom(self.payload),
                parents=self.tips[-2:],
                creator=self.creator,
                timestamp_ms=now,
                signature=os.urandom(SIGNATURE_SIZE),
            )
            vertices.append(vertex)
            hashes.append(vertex_hash(vertex))
        self.tips = hashes
        # as consensus sends it: the digest over the signed copies, a quorum's real COMMITs
        # (signed here, before the clock starts) for the test validator set the service has
        return commit_request(self.seq, vertices, hashes=hashes)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("cretoai_storage_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, Any]:
    """Bucket counts of a histogram between two scrapes; upper-bound percentiles in ms."""
    pattern = re.compile(rf'^{name}_bucket{{.*le="([^"]+)"}}$')
    buckets = []
    for key, value in after.items():
        match = pattern.match(key)
        if match:
            bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    result: dict[str, Any] = {"count": int(count)}
    if count <= 0:
        return result
    result["mean_ms"] = round(total / count * 1e3, 3)
    for q in (50, 99, 99.9):
        needed = count * q / 100
        bound = next((b for b, c in buckets if c >= needed), float("inf"))
        result[f"p{q}_at_most_ms".replace(".", "_")] = (
            None if bound == float("inf") else round(bound * 1e3, 3)
        )
    over_5ms = count - next((c for b, c in buckets if b >= 0.005), count)
    result["share_over_5ms"] = round(over_5ms / count, 4)
    return result


def raw_fsync_floor(directory: Path, size: int, count: int) -> dict[str, float]:
    """Append ``size`` bytes and fdatasync, ``count`` times: one synced batch's cost to the disk."""
    path = directory / "fsync-probe"
    data = os.urandom(size)
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return summary_ms(samples)


async def reader(
    stub: storage_pb2_grpc.StorageStub, probe: bytes, stop: asyncio.Event, out: list[float]
) -> None:
    request = storage_pb2.GetVertexRequest(hash=probe)
    while not stop.is_set():
        t0 = time.perf_counter()
        await stub.GetVertex(request, timeout=30)
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(READ_EVERY_S)


async def phase(
    name: str,
    stub: storage_pb2_grpc.StorageStub,
    batches: Batches,
    count: int,
    rate: float,
    metrics_port: int,
    deadline: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    reads: list[float] = []
    sizes: list[int] = []
    stop = asyncio.Event()
    probe = batches.tips[0]
    # built (and their certificates signed: ~4 ms each) before the clock starts, so that the
    # client does not compete with the service for the CPU while it is measured
    requests = [batches.next() for _ in range(count)]
    before = await asyncio.to_thread(scrape, metrics_port)
    read_task = asyncio.create_task(reader(stub, probe, stop, reads))
    load_before = os.getloadavg()
    started = time.perf_counter()
    for i, request in enumerate(requests):
        if time.monotonic() > deadline:
            break
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        sizes.append(request.ByteSize())
        t0 = time.perf_counter()
        reply = await stub.CommitBatch(request, timeout=30)
        latencies.append(time.perf_counter() - t0)
        assert reply.last_seq == request.batch.seq
    elapsed = time.perf_counter() - started
    stop.set()
    await read_task
    del requests
    after = await asyncio.to_thread(scrape, metrics_port)
    commit = summary_ms(latencies)
    return {
        "phase": name,
        "rate_target_per_s": rate or None,
        "batches": len(latencies),
        "elapsed_s": round(elapsed, 2),
        "throughput": {
            "batches_per_s": round(len(latencies) / elapsed, 1),
            "vertices_per_s": round(len(latencies) * batches.vertices / elapsed, 1),
            "mb_per_s": round(sum(sizes) / elapsed / 1e6, 1),
        },
        "commit_latency_ms": commit,
        "meets_target_p99": commit.get("p99", float("inf")) <= TARGET_P99_MS,
        "read_latency_during_commits_ms": summary_ms(reads),
        "service_event_loop_lag": histogram_delta(
            before, after, "cretoai_storage_event_loop_lag_seconds"
        ),
        "service_commit_latency": histogram_delta(before, after, "cretoai_storage_commit_seconds"),
        "service_proof_check": histogram_delta(
            before, after, "cretoai_storage_commit_proof_seconds"
        ),
        "service_wal_sync": histogram_delta(before, after, "cretoai_storage_wal_sync_seconds"),
        "service_apply": {
            "mean_ms": round(
                (
                    after.get('cretoai_storage_write_apply_seconds_sum{op="commit"}', 0.0)
                    - before.get('cretoai_storage_write_apply_seconds_sum{op="commit"}', 0.0)
                )
                / max(1, len(latencies))
                * 1e3,
                3,
            )
        },
        "request_bytes": {"mean": round(sum(sizes) / max(1, len(sizes))), "max": max(sizes)},
        # other processes on the machine compete for the 2 cores and the disk: say how many
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
    }


def machine(directory: Path) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    fs = ""
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind, *_ = line.split()
            if str(directory).startswith(mount) and len(mount) > len(best):
                best, fs = mount, kind
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rocksdict": version("rocksdict"),
        "grpcio": version("grpcio"),
        "filesystem": fs,
        "disk_free_bytes": shutil.disk_usage(directory).free,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.max_seconds
    base = Path(tempfile.mkdtemp(prefix="cretoai-bench-storage-", dir=args.dir))
    try:
        floor = raw_fsync_floor(
            base, args.vertices * (args.payload + PUBLIC_KEY_SIZE + SIGNATURE_SIZE + 100), 200
        )
        proc = ServiceProcess.create(base / "node", db=base / "db", metrics=True)
        proc.spawn()
        try:
            await proc.wait_serving(timeout=60)
            async with proc.channel() as channel:
                stub = storage_pb2_grpc.StorageStub(channel)
                batches = Batches(args.vertices, args.payload)
                for _ in range(args.warmup):
                    await stub.CommitBatch(batches.next(), timeout=30)
                phases = [
                    await phase(
                        "closed_loop", stub, batches, args.batches, 0, proc.metrics_port, deadline
                    ),
                    await phase(
                        "paced",
                        stub,
                        batches,
                        args.batches,
                        args.rate,
                        proc.metrics_port,
                        deadline,
                    ),
                ]
                stats = await stub.GetStats(storage_pb2.GetStatsRequest(), timeout=30)
        finally:
            proc.terminate()
        return {
            "benchmark": "storage_commit",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(base),
            "parameters": {
                "vertices_per_batch": args.vertices,
                "payload_bytes": args.payload,
                "creator_bytes": PUBLIC_KEY_SIZE,
                "signature_bytes": SIGNATURE_SIZE,
                "batches_per_phase": args.batches,
                "warmup_batches": args.warmup,
                "paced_rate_per_s": args.rate,
                "reader_interval_ms": READ_EVERY_S * 1e3,
            },
            "target": {"commit_p99_ms": TARGET_P99_MS},
            "disk_floor_append_fdatasync_ms": floor,
            "phases": phases,
            "database": {
                "last_seq": stats.last_seq,
                "vertices": stats.vertices,
                "disk_bytes": stats.disk_bytes,
            },
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=1000, help="batches per phase")
    parser.add_argument("--vertices", type=int, default=100, help="vertices per batch")
    parser.add_argument("--payload", type=int, default=1024, help="payload bytes per vertex")
    parser.add_argument("--rate", type=float, default=50.0, help="paced phase, batches/s")
    parser.add_argument("--warmup", type=int, default=20, help="batches before measuring")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="overall time bound")
    parser.add_argument("--dir", default=None, help="where the database goes (default: /tmp)")
    parser.add_argument("--output", type=Path, default=RESULT, help="the JSON result file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for p in result["phases"]:
        c = p["commit_latency_ms"]
        print(
            f"{p['phase']:12s} {p['batches']} batches  p50 {c['p50']} ms  p99 {c['p99']} ms  "
            f"max {c['max']} ms  {p['throughput']['batches_per_s']} batches/s  "
            f"loop lag p99 <= {p['service_event_loop_lag'].get('p99_at_most_ms')} ms  "
            f"read p99 {p['read_latency_during_commits_ms'].get('p99')} ms"
        )
    floor = result["disk_floor_append_fdatasync_ms"]
    print(
        "disk floor (append + fdatasync of one batch's bytes): "
        f"p50 {floor['p50']} ms, p99 {floor['p99']} ms"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
