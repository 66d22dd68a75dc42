"""Storage benchmark: CommitBatch latency through the gRPC API, against the raw RocksDB floor.

    .venv/bin/python -m bench.storage_commit [--vertices-per-batch 100,1] [--batches N]
                                             [--rate R] ...

Starts the real storage service as a process (``python -m services.storage``,
config and RocksDB in a temporary directory on the same filesystem as /tmp,
loopback only), then commits batches of realistic vertices (1 KB payload, a
2592-byte ML-DSA-87 creator key, a 4627-byte signature: ~830 KB per 100-vertex
batch) through ``CommitBatch``, one at a time as the consensus executor does. Each
batch is what consensus sends and storage verifies: its digest over the
vertices' signed digests and a real finality certificate, three ML-DSA-87
COMMITs of the test validator set (n = 4) that the service is configured with.
A phase's batches are built before it starts.

For each batch size of ``--vertices-per-batch`` (default 100, then 1: the size the
cluster commits at low load, where commit latency is part of finality), two
phases:

* **closed loop** — the next batch as soon as the previous is acknowledged
  (the disk's limit);
* **paced** — ``--rate`` batches per second (default 50: about what a consensus
  with 1 MiB, 20 ms batches produces at most).

After each service phase, the **raw floor** of the same batches: the key/value
writes the service makes for each of them (:func:`raw_writes`, the same keys and
values as ``Store.commit_batch``), as one RocksDB WriteBatch applied directly with
rocksdict to a database of its own (fresh at the start of the run, in the same
directory, opened with the service's options, ``services.storage.options``), then
the WAL synced as the service syncs it (``flush_wal(sync=True)``); the same count
of batches, closed loop or paced the same way. No gRPC, no proof check, no reads,
no Python beyond the calls: what the disk and RocksDB cost. Per phase: the
service's p50/p99/p99.9 over the raw ones, met or not against the target
(service p99 <= 1.2 x raw p99), and where the gap goes (means: gRPC and the
client, the proof check, the writer queue, apply, WAL sync; from the service's
own histograms).

During the service phases, a reader calls ``GetVertex`` every 5 ms: its latency
is what the GIL-holding RocksDB writes cost the service's other callers. The
service's own event-loop lag (``cretoai_service_event_loop_lag_seconds{service="storage"}``, a 50 ms
timer's lateness), WAL-sync and apply times are read from its Prometheus
endpoint. For scale, the cost of appending and fsyncing one batch's bytes to a
plain file on the same filesystem is measured first; and the service's checks
(the request's shape and vertex hashes; the proof's digest over the vertices and
its 3 signatures) are timed in this process on a few of the batches.

Bounded in count and in time (``--max-seconds``; about 1-2 minutes by default).
Writes ``bench/results/storage_commit.json`` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from rocksdict import AccessType, Rdict, WriteBatch

from bench import speed
from cretoai.crypto import get_backend
from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from devkit.storage import ServiceProcess, commit_request, validator_public_keys, vertex_hash
from services.consensus.core.crypto import MlDsaVerifier
from services.storage import keys
from services.storage.certify import Certifier, check_digest, check_quorum
from services.storage.errors import InvalidArgument
from services.storage.options import open_options, unsynced_write
from services.storage.store import Counters, batch_header, stored_vertex
from services.storage.validate import check_commit

RESULT = Path(__file__).resolve().parent / "results" / "storage_commit.json"
TARGET_P99_MS = 5.0
#: The target against the floor: service p99 <= this x the raw write + WAL sync p99.
TARGET_OVER_RAW_P99 = 1.2
PUBLIC_KEY_SIZE = 2592
SIGNATURE_SIZE = 4627
READ_EVERY_S = 0.005
#: Batches whose checks are timed in this process, per batch size.
PROOF_SAMPLES = 10


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


def batches_for(vertices: int) -> int:
    """The default batches per phase: fewer of the large ones (each ~20 ms and ~830 KB
    built and held in memory), more of the small ones (a p99.9 needs samples)."""
    return 300 if vertices >= 10 else 600


class Batches:
    """Realistic batches of a growing DAG: each vertex has (up to) two parents, the last
    two vertices of the previous batches. ``seq`` continues from ``start_seq``."""

    def __init__(self, vertices: int, payload: int, start_seq: int = 0) -> None:
        self.vertices = vertices
        self.payload = payload
        self.creator = os.urandom(PUBLIC_KEY_SIZE)
        self.seq = start_seq
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
        self.tips = (self.tips + hashes)[-2:]
        # as consensus sends it: the digest over the signed copies, a quorum's real COMMITs
        # (signed here, before the clock starts) for the test validator set the service has
        return commit_request(self.seq, vertices, hashes=hashes)


# -- the raw floor: the service's writes, straight into RocksDB ----------------------------

#: One put: (column family, or None for ``default``; key; value).
Put = tuple[str | None, bytes, bytes]


@dataclasses.dataclass
class RawState:
    """What ``Store`` keeps between batches and the writes depend on."""

    counters: Counters = dataclasses.field(default_factory=Counters)
    heights: dict[bytes, int] = dataclasses.field(default_factory=dict)
    creators: set[bytes] = dataclasses.field(default_factory=set)


def raw_writes(request: storage_pb2.CommitBatchRequest, state: RawState) -> list[Put]:
    """The puts ``Store.commit_batch`` makes for ``request`` (every vertex accepted, as the
    benchmark's are), in its order: per vertex its body (creator key interned, written once),
    metadata, edges and the two index entries; the finalized record; the counters."""
    batch = request.batch
    seq = batch.seq
    written = state.counters
    puts: list[Put] = []
    results = []
    edges = 0
    for index, (result, vertex) in enumerate(zip(request.results, batch.vertices, strict=True)):
        h = result.hash
        height = 0
        for parent in vertex.parents:
            height = max(height, state.heights.get(parent, 0) + 1)
        creator = vertex.creator
        if len(creator) < keys.CREATOR_INTERN_BYTES:
            body = stored_vertex(vertex.SerializeToString())
        else:
            creator_id = hashlib.sha3_256(creator).digest()
            if creator_id not in state.creators:
                puts.append((None, keys.creator_key(creator_id), creator))
                state.creators.add(creator_id)
            vertex.ClearField("creator")
            try:
                body = stored_vertex(vertex.SerializeToString(), creator_id)
            finally:
                vertex.creator = creator
        puts.append((keys.VERTICES, h, body))
        meta = storage_pb2.StoredVertexMeta(
            status=vertex_pb2.VERTEX_STATUS_FINALIZED, seq=seq, height=height, index=index
        )
        puts.append((keys.METADATA, h, meta.SerializeToString()))
        for parent in vertex.parents:
            puts.append((keys.EDGES, keys.edge_key(parent, h), b""))
        puts.append((keys.INDEX_HEIGHT, keys.position_key(height, seq, index), h))
        puts.append((keys.INDEX_TIMESTAMP, keys.position_key(vertex.timestamp_ms, seq, index), h))
        state.heights[h] = height
        edges += len(vertex.parents)
        results.append(storage_pb2.StoredResult(hash=h, height=height))
    record = storage_pb2.StoredBatch(header=batch_header(batch), results=results)
    puts.append((keys.FINALIZED, keys.seq_key(seq), record.SerializeToString()))
    state.counters = dataclasses.replace(
        written,
        last_seq=seq,
        vertices=written.vertices + len(results),
        finalized_vertices=written.finalized_vertices + len(results),
        edges=written.edges + edges,
        writes=written.writes + 1,  # each write counts itself (services/storage/synced.py)
    )
    puts.append((None, keys.COUNTERS_KEY, state.counters.to_bytes()))
    return puts


class RawDatabase:
    """A RocksDB database with the service's options and column families, written by
    :func:`raw_writes` directly: one WriteBatch per batch, unsynced, then ``flush_wal(True)``,
    as the service's writer thread does (without the reads, checks and Python around it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        options, families = open_options([], create=True)
        self.db = Rdict(
            str(path), options, column_families=families, access_type=AccessType.read_write()
        )
        self.handles = {
            name: self.db.get_column_family_handle(name) for name in keys.COLUMN_FAMILIES
        }
        self.write_options = unsynced_write()
        self.state = RawState()
        # as Store does for a new database
        batch = WriteBatch(raw_mode=True)
        batch.put(keys.SCHEMA_VERSION_KEY, keys.u32(keys.SCHEMA_VERSION))
        batch.put(keys.COUNTERS_KEY, Counters().to_bytes())
        self.db.write(batch, self.write_options)
        self.db.flush_wal(True)

    def write_batch(self, request: storage_pb2.CommitBatchRequest) -> WriteBatch:
        batch = WriteBatch(raw_mode=True)
        for cf, key, value in raw_writes(request, self.state):
            if cf is None:
                batch.put(key, value)
            else:
                batch.put(key, value, self.handles[cf])
        return batch

    def commit(self, batch: WriteBatch) -> tuple[float, float]:
        """Write and sync one batch: (write seconds, sync seconds)."""
        t0 = time.perf_counter()
        self.db.write(batch, self.write_options)
        t1 = time.perf_counter()
        self.db.flush_wal(True)
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        self.db.close()


def raw_phase(
    name: str,
    raw: RawDatabase,
    requests: Sequence[storage_pb2.CommitBatchRequest],
    rate: float,
    deadline: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The same batches written straight into ``raw``, closed loop (``rate`` 0) or paced.
    Each WriteBatch is built before its clock starts: only write + sync are timed."""
    totals: list[float] = []
    writes: list[float] = []
    syncs: list[float] = []
    started = clock()
    for i, request in enumerate(requests):
        if time.monotonic() > deadline:
            break
        batch = raw.write_batch(request)
        if rate > 0:
            delay = started + i / rate - clock()
            if delay > 0:
                time.sleep(delay)
        write, sync = raw.commit(batch)
        writes.append(write)
        syncs.append(sync)
        totals.append(write + sync)
    elapsed = clock() - started
    return {
        "phase": name,
        "rate_target_per_s": rate or None,
        "batches": len(totals),
        "elapsed_s": round(elapsed, 2),
        "commit_latency_ms": summary_ms(totals),
        "write_ms": summary_ms(writes),
        "wal_sync_ms": summary_ms(syncs),
    }


COMMIT_METHOD = "/cretoai.v1.Storage/CommitBatch"


async def serve_floor(directory: Path, port_file: Path, *, check: bool = False) -> None:
    """The process floor's server: the least a storage process must do with a batch.

    A gRPC server (the service's message bounds, plaintext loopback as the benchmark's
    service) whose CommitBatch takes the request's bytes undecoded, puts them under
    one key of a RocksDB database (the service's options), syncs the WAL, and answers
    an empty response: no decoding, no checks, no reads, no index, one key.

    With ``check`` (the **checked** floor): the least a storage process that trusts no
    caller must do, as the node's does (docs/security.md): the request decoded and its
    proof checked before the write, by the service's own :class:`Certifier` (each
    vertex's hash against its result and the batch digest over the signed copies, with
    the certificate's ML-DSA-87 COMMITs, on two threads at once); a batch without a valid
    proof is refused with ``INVALID_ARGUMENT`` and nothing is written. Still no reads,
    no index, one key.
    """
    db_opts, families = open_options([], create=True)
    db = Rdict(
        str(directory), db_opts, column_families=families, access_type=AccessType.read_write()
    )
    options = unsynced_write()
    certifier = Certifier(validator_public_keys(), get_backend()) if check else None
    count = 0

    def store(request: bytes) -> bytes:
        nonlocal count
        count += 1
        batch = WriteBatch(raw_mode=True)
        batch.put(count.to_bytes(8, "big"), request)
        db.write(batch, options)
        db.flush_wal(True)
        return b""

    async def checked(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        assert certifier is not None
        try:
            decoded = storage_pb2.CommitBatchRequest.FromString(request)
            await certifier.check(decoded.batch, results=decoded.results)
        except (InvalidArgument, DecodeError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return store(request)

    handler = grpc.method_handlers_generic_handler(
        "cretoai.v1.Storage",
        {
            "CommitBatch": grpc.unary_unary_rpc_method_handler(
                checked if check else lambda request, context: store(request)
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(port))
    try:
        await server.wait_for_termination()
    finally:
        if certifier is not None:
            certifier.close()
        db.close()


def commit_method(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[
    storage_pb2.CommitBatchRequest, storage_pb2.CommitBatchResponse
]:
    """``CommitBatch`` on ``channel`` as the service's stub sends it (the floors' calls)."""
    return channel.unary_unary(
        COMMIT_METHOD,
        request_serializer=storage_pb2.CommitBatchRequest.SerializeToString,
        response_deserializer=storage_pb2.CommitBatchResponse.FromString,
    )


class FloorProcess:
    """:func:`serve_floor` in a process of its own (``--serve-floor``), as the service is;
    ``check``: the checked floor (``--check-proofs``), with a database of its own."""

    def __init__(self, directory: Path, *, check: bool = False) -> None:
        name = "checked-floor" if check else "floor"
        self.port_file = directory / f"{name}.port"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.storage_commit",
                "--serve-floor",
                str(directory / f"{name}-db"),
                "--port-file",
                str(self.port_file),
                *(["--check-proofs"] if check else []),
            ],
            cwd=Path(__file__).resolve().parent.parent,
        )

    async def port(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while not self.port_file.exists() or not self.port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > end:
                raise RuntimeError("the process floor's server did not start")
            await asyncio.sleep(0.05)
        return int(self.port_file.read_text())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def paced(
    requests: Sequence[storage_pb2.CommitBatchRequest], rate: float, deadline: float, started: float
) -> AsyncIterator[storage_pb2.CommitBatchRequest]:
    """``requests`` one after the other (closed loop, ``rate`` 0), or each at its due time
    ``started + i / rate`` (perf_counter), until ``deadline`` (monotonic)."""
    for i, request in enumerate(requests):
        if time.monotonic() > deadline:
            return
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        yield request


async def floor_phase(
    name: str,
    call: Any,
    requests: Sequence[storage_pb2.CommitBatchRequest],
    rate: float,
    deadline: float,
) -> dict[str, Any]:
    """The same requests through the process floor, closed loop or paced, as :func:`phase`
    sends them to the service (serialised by the same stub code)."""
    latencies: list[float] = []
    started = time.perf_counter()
    async for request in paced(requests, rate, deadline, started):
        t0 = time.perf_counter()
        await call(request, timeout=30)
        latencies.append(time.perf_counter() - t0)
    return {
        "phase": name,
        "batches": len(latencies),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "commit_latency_ms": summary_ms(latencies),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _against_floor(
    name: str, service: dict[str, Any], raw: dict[str, Any], least: dict[str, Any]
) -> dict[str, Any]:
    """A floor process's phase ``least`` beside raw and the service, as ``<name>_*`` keys."""
    svc, floor, mine = (
        service["commit_latency_ms"],
        raw["commit_latency_ms"],
        least["commit_latency_ms"],
    )
    floor_over_raw = {q: ratio(mine.get(q), floor.get(q)) for q in ("p50", "p99", "p99_9")}
    return {
        name: least,
        f"{name}_over_raw": floor_over_raw,
        f"service_over_{name}": {
            q: ratio(svc.get(q), mine.get(q)) for q in ("p50", "p99", "p99_9")
        },
        f"target_below_{name}": floor_over_raw["p99"] is not None
        and floor_over_raw["p99"] > TARGET_OVER_RAW_P99,
    }


def compare_phase(
    service: dict[str, Any],
    raw: dict[str, Any],
    process: dict[str, Any] | None = None,
    checked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Service over raw per percentile, the target, and the gap's parts (means, ms); with
    ``process`` (the process floor's phase) and ``checked`` (the checked floor's), each
    floor over raw, the service over it, and whether the target is below it."""
    svc, floor = service["commit_latency_ms"], raw["commit_latency_ms"]
    over = {q: ratio(svc.get(q), floor.get(q)) for q in ("p50", "p99", "p99_9")}
    p99_ratio = over["p99"]
    process_figures: dict[str, Any] = {}
    if process is not None:
        process_figures.update(_against_floor("process_floor", service, raw, process))
    if checked is not None:
        process_figures.update(_against_floor("checked_floor", service, raw, checked))
    client = svc.get("mean")
    server = service["service_commit_latency"].get("mean_ms")
    parts = {
        "client_observed": client,
        # the request (~830 KB for 100 vertices) through gRPC both ways, (de)serialised
        "grpc_and_client": round(client - server, 3)
        if client is not None and server is not None
        else None,
        "service_commit": server,
        "proof_check": service["service_proof_check"].get("mean_ms"),
        "writer_wait": service["service_writer_wait"].get("mean_ms"),
        # on the writer thread: the parents' and hashes' metadata read, the WriteBatch
        # built in Python, RocksDB's unsynced write
        "apply": service["service_apply"].get("mean_ms"),
        "wal_sync": service["service_wal_sync"].get("mean_ms"),
        "raw_write": raw["write_ms"].get("mean"),
        "raw_wal_sync": raw["wal_sync_ms"].get("mean"),
        "raw_total": floor.get("mean"),
    }
    # the rest of the service's time: check_commit_shape (on the event loop),
    # the hops between the loop and the threads
    known = [parts[k] for k in ("proof_check", "writer_wait", "apply", "wal_sync")]
    parts["service_other"] = (
        round(server - sum(k for k in known if k is not None), 3)
        if server is not None and None not in known
        else None
    )
    return {
        "phase": service["phase"],
        "service_over_raw": over,
        "meets_raw_floor_target": p99_ratio is not None and p99_ratio <= TARGET_OVER_RAW_P99,
        "gap_mean_ms": parts,
        **process_figures,
        "service": service,
        "raw": raw,
    }


def checks_in_process(requests: Sequence[storage_pb2.CommitBatchRequest]) -> dict[str, Any]:
    """The service's checks of a CommitBatch timed here, one thread, on a few batches:
    ``validate`` (``check_commit``: the request's shape and each vertex's hash; the
    service runs only the shape on its event loop and hashes each vertex with the digest),
    then the proof's two parts, which the service runs on two threads: the digest over
    the vertices' signed copies and the quorum's ML-DSA-87 COMMIT signatures."""
    backend = get_backend()
    n = len(validator_public_keys())
    verifier = MlDsaVerifier(validator_public_keys(), backend)
    validate: list[float] = []
    digest: list[float] = []
    quorum: list[float] = []
    for request in requests[:PROOF_SAMPLES]:
        t0 = time.perf_counter()
        check_commit(request)
        t1 = time.perf_counter()
        check_digest(request.batch)
        t2 = time.perf_counter()
        check_quorum(request.batch, n=n, verifier=verifier)
        quorum.append(time.perf_counter() - t2)
        digest.append(t2 - t1)
        validate.append(t1 - t0)
    return {
        "backend": backend.name,
        "batches": len(digest),
        "validate_ms": summary_ms(validate),
        "digest_ms": summary_ms(digest),
        "signatures_ms": summary_ms(quorum),
        "signatures_per_batch": len(requests[0].batch.certificate.commits) if requests else 0,
    }


# -- the service --------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("cretoai_storage_", "cretoai_service_event_loop_lag_")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _series(key: str) -> tuple[str, dict[str, str]]:
    """A scraped series' name and labels: ``x_bucket{le="1.0",op="a"}`` → (x_bucket, {...})."""
    name, _, rest = key.partition("{")
    return name, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str, labels: str = ""
) -> dict[str, Any]:
    """Bucket counts of a histogram between two scrapes; upper-bound percentiles in ms.
    ``labels``: the series' other labels as exposed, e.g. ``op="commit"`` (in any order
    with ``le``, which prometheus_client writes first)."""
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    buckets = []
    for key, value in after.items():
        series, found = _series(key)
        bound_text = found.pop("le", None)
        if series == f"{name}_bucket" and bound_text is not None and found == wanted:
            bound = float("inf") if bound_text == "+Inf" else float(bound_text)
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    suffix = f"{{{labels}}}" if labels else ""
    count = after.get(f"{name}_count{suffix}", 0.0) - before.get(f"{name}_count{suffix}", 0.0)
    total = after.get(f"{name}_sum{suffix}", 0.0) - before.get(f"{name}_sum{suffix}", 0.0)
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
    requests: Sequence[storage_pb2.CommitBatchRequest],
    probe: bytes,
    rate: float,
    metrics_port: int,
    deadline: float,
) -> dict[str, Any]:
    """``requests`` (built and their certificates signed before the clock starts, so that
    the client does not compete with the service for the CPU meanwhile) through CommitBatch."""
    latencies: list[float] = []
    reads: list[float] = []
    sizes: list[int] = []
    stop = asyncio.Event()
    vertices = len(requests[0].batch.vertices) if requests else 0
    before = await asyncio.to_thread(scrape, metrics_port)
    read_task = asyncio.create_task(reader(stub, probe, stop, reads))
    load_before = os.getloadavg()
    started = time.perf_counter()
    async for request in paced(requests, rate, deadline, started):
        sizes.append(request.ByteSize())
        t0 = time.perf_counter()
        reply = await stub.CommitBatch(request, timeout=30)
        latencies.append(time.perf_counter() - t0)
        assert reply.last_seq == request.batch.seq
    elapsed = time.perf_counter() - started
    stop.set()
    await read_task
    after = await asyncio.to_thread(scrape, metrics_port)
    commit = summary_ms(latencies)
    return {
        "phase": name,
        "rate_target_per_s": rate or None,
        "batches": len(latencies),
        "elapsed_s": round(elapsed, 2),
        "throughput": {
            "batches_per_s": round(len(latencies) / elapsed, 1),
            "vertices_per_s": round(len(latencies) * vertices / elapsed, 1),
            "mb_per_s": round(sum(sizes) / elapsed / 1e6, 1),
        },
        "commit_latency_ms": commit,
        "meets_target_p99": commit.get("p99", float("inf")) <= TARGET_P99_MS,
        "read_latency_during_commits_ms": summary_ms(reads),
        "service_event_loop_lag": histogram_delta(
            before, after, "cretoai_service_event_loop_lag_seconds", 'service="storage"'
        ),
        "service_commit_latency": histogram_delta(before, after, "cretoai_storage_commit_seconds"),
        "service_proof_check": histogram_delta(
            before, after, "cretoai_storage_commit_proof_seconds"
        ),
        "service_writer_wait": histogram_delta(
            before, after, "cretoai_storage_writer_wait_seconds", 'op="commit"'
        ),
        "service_apply": histogram_delta(
            before, after, "cretoai_storage_write_apply_seconds", 'op="commit"'
        ),
        "service_wal_sync": histogram_delta(before, after, "cretoai_storage_wal_sync_seconds"),
        "request_bytes": {"mean": round(sum(sizes) / max(1, len(sizes))), "max": max(sizes)},
        # other processes on the machine compete for the 2 cores and the disk: say how many
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
    }


def machine(directory: Path) -> dict[str, Any]:
    cpu = speed.cpu()["model"]
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


def batch_bytes(vertices: int, payload: int) -> int:
    """About what one batch of ``vertices`` writes (for the plain-file floor)."""
    return vertices * (payload + PUBLIC_KEY_SIZE + SIGNATURE_SIZE + 100)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.max_seconds
    base = Path(tempfile.mkdtemp(prefix="cretoai-bench-storage-", dir=args.dir))
    counts = {v: args.batches or batches_for(v) for v in args.vertices_per_batch}
    try:
        floors = {
            v: raw_fsync_floor(base, batch_bytes(v, args.payload), 200)
            for v in args.vertices_per_batch
        }
        raw = RawDatabase(base / "raw-db")
        proc = ServiceProcess.create(base / "node", db=base / "db", metrics=True)
        proc.spawn()
        least = FloorProcess(base)
        checking = FloorProcess(base, check=True)
        runs = []
        floor_channels: list[grpc.aio.Channel] = []
        try:
            await proc.wait_serving(timeout=60)
            floor_channels = [
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{await server.port()}",
                    options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
                )
                for server in (least, checking)
            ]
            commit_least, commit_checked = (commit_method(c) for c in floor_channels)
            async with proc.channel() as channel:
                stub = storage_pb2_grpc.StorageStub(channel)
                seq = 0
                for vertices in args.vertices_per_batch:
                    batches = Batches(vertices, args.payload, start_seq=seq)
                    # the same warm-up for both databases (not measured)
                    for _ in range(args.warmup):
                        request = batches.next()
                        await stub.CommitBatch(request, timeout=30)
                        raw.commit(raw.write_batch(request))
                        await commit_least(request, timeout=30)
                        await commit_checked(request, timeout=30)
                    probe = batches.tips[0]
                    phases = []
                    checks: dict[str, Any] = {}
                    for name, rate in (("closed_loop", 0.0), ("paced", args.rate)):
                        if time.monotonic() > deadline:
                            break
                        requests = [batches.next() for _ in range(counts[vertices])]
                        service = await phase(
                            name, stub, requests, probe, rate, proc.metrics_port, deadline
                        )
                        done = requests[: service["batches"]]
                        floor = raw_phase(name, raw, done, rate, deadline)
                        process = await floor_phase(name, commit_least, done, rate, deadline)
                        checked = await floor_phase(name, commit_checked, done, rate, deadline)
                        phases.append(compare_phase(service, floor, process, checked))
                        if not checks:
                            checks = checks_in_process(requests)
                        del requests
                    seq = batches.seq
                    runs.append(
                        {
                            "vertices_per_batch": vertices,
                            "batches_per_phase": counts[vertices],
                            "disk_floor_append_fdatasync_ms": floors[vertices],
                            "checks_in_process": checks,
                            "phases": phases,
                        }
                    )
                stats = await stub.GetStats(storage_pb2.GetStatsRequest(), timeout=30)
        finally:
            for floor_channel in floor_channels:  # on a failure too: no channel left open
                await floor_channel.close()
            proc.terminate()
            least.stop()
            checking.stop()
            raw.close()
        return {
            "benchmark": "storage_commit",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(base),
            "parameters": {
                "vertices_per_batch": args.vertices_per_batch,
                "payload_bytes": args.payload,
                "creator_bytes": PUBLIC_KEY_SIZE,
                "signature_bytes": SIGNATURE_SIZE,
                "batches_per_phase": {str(v): n for v, n in counts.items()},
                "warmup_batches": args.warmup,
                "paced_rate_per_s": args.rate,
                "reader_interval_ms": READ_EVERY_S * 1e3,
                "raw_floor": "the service's puts for each batch (raw_writes) in one WriteBatch, "
                "written unsynced then flush_wal(sync=True), service DB options, a database "
                "of its own in the same directory; write + sync timed",
                "process_floor": "the same requests, sent the same way over gRPC to a process "
                "that puts each request's bytes undecoded under one key and syncs the WAL "
                "(serve_floor): the least a storage process must do; client-observed",
                "checked_floor": "the process floor with the request decoded and its proof "
                "checked first by the service's Certifier (vertex hashes, the digest over the "
                "signed copies, the certificate's COMMIT signatures; two threads): the least a "
                "storage process that trusts no caller must do; client-observed",
            },
            "target": {
                "commit_p99_ms": TARGET_P99_MS,
                "service_over_raw_p99_at_most": TARGET_OVER_RAW_P99,
            },
            "runs": runs,
            "database": {
                "last_seq": stats.last_seq,
                "vertices": stats.vertices,
                "disk_bytes": stats.disk_bytes,
            },
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sizes(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(v < 1 or v > 4096 for v in values):
        raise argparse.ArgumentTypeError("vertices per batch: integers within [1, 4096]")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--vertices-per-batch",
        "--vertices",
        type=sizes,
        default=[100, 1],
        help="batch sizes, comma-separated, each with its phases (default 100,1)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=0,
        help="batches per phase (default: 300 for batches of 10 vertices or more, else 600)",
    )
    parser.add_argument("--payload", type=int, default=1024, help="payload bytes per vertex")
    parser.add_argument("--rate", type=float, default=50.0, help="paced phases, batches/s")
    parser.add_argument("--warmup", type=int, default=20, help="batches before measuring")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="overall time bound")
    parser.add_argument("--dir", default=None, help="where the databases go (default: /tmp)")
    parser.add_argument("--output", type=Path, default=RESULT, help="the JSON result file")
    parser.add_argument("--serve-floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--check-proofs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor is not None:  # the process floor's server (FloorProcess)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_floor(args.serve_floor, args.port_file, check=args.check_proofs))
        return 0
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for line in report(result):
        print(line)
    print(f"wrote {args.output}")
    return 0


def report(result: dict[str, Any]) -> list[str]:
    lines = []
    for run_ in result["runs"]:
        v = run_["vertices_per_batch"]
        floor = run_["disk_floor_append_fdatasync_ms"]
        lines.append(
            f"{v} vertices/batch: disk floor (append + fdatasync of one batch's bytes) "
            f"p50 {floor['p50']} ms, p99 {floor['p99']} ms"
        )
        for p in run_["phases"]:
            s, r = p["service"]["commit_latency_ms"], p["raw"]["commit_latency_ms"]
            over = p["service_over_raw"]
            gap = p["gap_mean_ms"]
            lines.append(
                f"  {p['phase']:12s} service p50 {s['p50']} p99 {s['p99']} p99.9 {s['p99_9']} ms"
                f" | raw p50 {r['p50']} p99 {r['p99']} p99.9 {r['p99_9']} ms"
                f" | p99 x{over['p99']} ({'met' if p['meets_raw_floor_target'] else 'not met'}"
                f" <= {TARGET_OVER_RAW_P99})"
            )
            for name, label in (("process_floor", "process"), ("checked_floor", "checked")):
                if name not in p:
                    continue
                least = p[name]["commit_latency_ms"]
                lines.append(
                    "  " + " " * 12 + f" {label} floor p50 {least['p50']} p99 {least['p99']} ms: "
                    f"x{p[f'{name}_over_raw']['p99']} raw at p99"
                    + (" (the target is below it)" if p[f"target_below_{name}"] else "")
                    + f"; the service x{p[f'service_over_{name}']['p99']} it"
                )
            lines.append(
                "  "
                + " " * 12
                + " mean ms: "
                + ", ".join(f"{k} {v}" for k, v in gap.items() if v is not None)
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
