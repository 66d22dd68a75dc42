"""What one event of each kind costs on this machine, and the per-batch CPU floor it implies.

    .venv/bin/python -m bench.event_costs [--seconds S] [--measured-cluster-ms MS]
                                          [--output PATH]

``cluster_load`` measures about 170 ms of cluster CPU per 1-vertex batch at 10 vertices/s
(4 nodes x 4 processes on 2 cores). This benchmark accounts for it from below: the CPU
that one event of each kind costs here, in real processes on loopback (127.0.0.1), times
how many of each event one batch needs (:data:`EVENTS`, counts scraped from a live
cluster). The sum is the floor of the current design at those counts.

What is measured (CPU is each process's own CPU clock, ``clock_gettime`` of its process
CPU-time clock: the same total as ``/proc/<pid>/stat`` utime + stime, to the nanosecond
instead of the 10 ms tick; falls back to ``/proc/<pid>/stat``):

1. **ML-DSA-87**, in this process, one thread, CPU per operation (``time.thread_time``),
   median and mean of up to :data:`CRYPTO_OPS` operations, at most ~2 s each: signing a
   PBFT PREPARE body as the replica signs (``MlDsaSigner``, ``_make_signed``); verifying
   one (``MlDsaVerifier``: consensus's PBFT checks and storage's certificate check); and
   verifying a realistic vertex (1 KB payload, two parents: ``cretoai.vertex.verify_vertex``,
   as ``bench.verify_bound``). The backend is ``auto``, as the services' default.
2. **Synced writes**, in this process, paced at ``--rate`` (50/s: isolated, as in the
   cluster at low rate): one rocksdict ``WriteBatch`` with one put of 300 B or 9 KB into
   ``consensus_state``, written unsynced then ``flush_wal(sync=True)``, as storage's writer
   does (``bench.storage_commit.RawDatabase``: the service's DB options); and the
   signing-mark file's durable write (``services.consensus.mark.MarkFile.store``: one
   ``pwrite`` of 128 B + ``fdatasync``). Latency p50/p99 and CPU per write.
3. **A gRPC unary hop to the storage service**: ``python -m services.storage`` as a process
   (``devkit.storage.ServiceProcess``), called from a client *process* of its own (this
   module with ``--client``; its channel is ``cretoai.channels.service_channel``, the
   services' own, interceptors included): ``GetVertexStatuses`` of 3 hashes (a read; the
   executor's per batch), ``WriteState`` with one 300-B put and with one 9-KB put (consensus's
   persist; keys are consensus records' keys). Paced at ``--rate`` (every call wakes both
   processes) and closed loop. Per call: client CPU, storage CPU, latency p50/p99. The
   requests are built before the clock starts: the hop, not the protobuf building.
   Beside it, the library's own floor: a **bare grpc.aio hop** (a server process with one
   generic method, ``--bare-server``; 300 B in, 8 B out; no interceptors, no TLS) called
   paced from the same client, with the context switches of all the server's threads per
   call. Not in the model: it shows how much of a storage hop is grpc.aio itself.
4. **A transport message** between two ``python -m services.transport`` processes over
   QUIC (``devkit.transport``), paced at ``--rate``: the client process writes one envelope
   per gRPC message on A's ``ExchangeBatches`` stream (as consensus's link does at low load)
   and reads it from B's. Per message: A's CPU, B's CPU, the client's CPU (it stands in for
   the two consensus processes' stream ends), UDP datagrams each way (the transports'
   Prometheus counters, scraped outside the CPU window) and the one-way latency
   (client write to client read). 5 KB (a PREPARE or COMMIT is ~4.7 KB) and 8.3 KB (a
   PRE-PREPARE with its vertex).

Before the storage and transport phases, the idle CPU of their processes over a short
window (``idle_cpu_ms_per_s``): the background (timers, keepalives) that the paced
figures include. Per phase, ``other_processes_cores``: what the rest of the machine used
meanwhile (busy CPU from /proc/stat minus the processes measured).

Then the **model** (:func:`model`, pure): events per batch per node (:data:`EVENTS`) x the
unit costs, the paced ones for calls and messages. A CommitBatch is costed as a 9-KB
WriteState hop, its certificate's 3 verifications as their own row; storage's WAL syncs
happen inside its calls (already in their storage CPU) and are shown, not added; the mark
fsync is added. A transport message sent costs A's CPU + half the client's, one received
B's + half the client's. Floor per node and for the cluster (x 4), each event's share,
the measured reference (``--measured-cluster-ms``, default: ``cluster_load``'s
``cpu_ms_per_finalized_vertex_cluster`` at 10/s) over the floor, and the implied bound:
cores x 1000 / floor cluster ms = batches/s this machine could run at 1 vertex per batch.

How to read it: the floor is the current design's floor at these event counts, each event
paid alone. The paced costs are per-wakeup costs, far above the bulk per-message costs of
``bench.transport_throughput`` (cited as ``contrast``, not rerun): at low load every
message and call wakes a process, and that is what a batch pays. The gap between the floor
and the measured figure is what the model does not count (Python around the events in
consensus and the gateway, HTTP, timers, metrics, tracing) or counts too cheaply.

Every loop is bounded in count and time; about 70 s with the default ``--seconds 6``.
Writes ``bench/results/event_costs.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.transport_throughput import cpu_seconds as stat_cpu_seconds
from bench.transport_throughput import percentile
from bench.verify_bound import machine_busy_seconds

RESULTS = Path(__file__).resolve().parent / "results"
RESULT = RESULTS / "event_costs.json"
CLUSTER_RESULT = RESULTS / "cluster_load.json"
TRANSPORT_RESULT = RESULTS / "transport_throughput.json"
REPO = Path(__file__).resolve().parents[1]

# -- event counts per batch per node ------------------------------------------------------
# Measured on 2026-12-02 by scraping a live 4-node cluster's Prometheus counters at 10
# vertices/s offered (9 batches/s, 1 vertex per batch, 1.1 on average), on node2 (a backup),
# divided by the batches executed in the window. Not overridable: change them here when the
# design changes, with the new provenance.

#: Storage WriteState calls (consensus's persists): one small record, one large.
WRITE_STATE_PER_BATCH = 2.0
#: Storage CommitBatch calls (the executor).
COMMIT_BATCH_PER_BATCH = 1.0
#: Storage GetVertexStatuses calls: the executor's per batch, the servicer's for submissions.
STATUSES_EXECUTION_PER_BATCH = 1.0
STATUSES_SUBMISSIONS_PER_BATCH = 0.28
#: Gateway -> consensus SubmitVertices calls.
SUBMIT_VERTICES_PER_BATCH = 0.28
#: The gateway's GetFinalized calls.
GET_FINALIZED_PER_BATCH = 0.28
#: Transport messages, one gRPC stream message each at the consensus side.
MESSAGES_SENT_PER_BATCH = 7.7
MESSAGES_RECEIVED_PER_BATCH = 7.3
#: ML-DSA-87 signatures (a backup signs PREPARE and COMMIT, the primary PRE-PREPARE and COMMIT).
SIGNATURES_PER_BATCH = 2.0
#: ML-DSA-87 verifications: PBFT messages and vertices in consensus; the finality
#: certificate's COMMITs in storage (CommitBatch).
PBFT_VERIFICATIONS_PER_BATCH = 6.2
VERTEX_VERIFICATIONS_PER_BATCH = 1.1
STORAGE_VERIFICATIONS_PER_BATCH = 3.0
#: Synced writes: storage's WAL syncs (inside its calls), consensus's signing-mark fsync.
WAL_SYNCS_PER_BATCH = 3.0
MARK_SYNCS_PER_BATCH = 1.0
#: Not scraped, from the protocol: of the messages a backup receives per batch, one is the
#: primary's PRE-PREPARE carrying the vertex (costed at the 8.3-KB size, the rest at 5 KB).
PRE_PREPARES_RECEIVED_PER_BATCH = 1.0
#: Vertices per batch in that window (10 vertices/s in 9 batches/s): cluster_load's figure
#: is per finalized vertex; x this = per batch.
VERTICES_PER_BATCH = 1.1
NODES = 4

# -- unit costs (ms of CPU per event; the keys of :func:`unit_costs_ms`) ------------------
SIGN = "sign"
VERIFY_PBFT = "verify_pbft"
VERIFY_VERTEX = "verify_vertex"
CALL_READ = "call_read"
CALL_WRITE_SMALL = "call_write_300B"
CALL_WRITE_LARGE = "call_write_9KB"
MESSAGE_SEND = "message_send_5KB"
MESSAGE_RECEIVE = "message_receive_5KB"
MESSAGE_RECEIVE_LARGE = "message_receive_8.3KB"
MARK_FSYNC = "mark_fsync"
WAL_SYNC = "synced_write_300B"
UNIT_KEYS = (
    SIGN,
    VERIFY_PBFT,
    VERIFY_VERTEX,
    CALL_READ,
    CALL_WRITE_SMALL,
    CALL_WRITE_LARGE,
    MESSAGE_SEND,
    MESSAGE_RECEIVE,
    MESSAGE_RECEIVE_LARGE,
    MARK_FSYNC,
    WAL_SYNC,
)

# -- measurement parameters ---------------------------------------------------------------
CRYPTO_OPS = 400
CRYPTO_SECONDS = 2.0
DISTINCT = 16
PAYLOAD_BYTES = 1024
SMALL_BYTES = 300
LARGE_BYTES = 9_000
STATUS_HASHES = 3
MESSAGE_BYTES = {"5KB": 5_120, "8.3KB": 8_300}
CLOSED_LOOP_MAX_CALLS = 5_000
#: The bare server's one method (``--bare-server``).
BARE_METHOD = "/bench.Bare/Call"
WARMUP = 20
#: How long the client may take to answer a command beyond its own time bound.
CLIENT_SLACK_S = 60.0


@dataclass(frozen=True)
class Event:
    """One kind of event: how many per batch per node, and which unit cost prices it."""

    name: str
    per_batch: float
    unit: str
    category: str
    #: False: already inside another event's cost (shown for reference, not added).
    added: bool = True
    note: str = ""


EVENTS: tuple[Event, ...] = (
    Event("storage WriteState, 300 B put", WRITE_STATE_PER_BATCH / 2, CALL_WRITE_SMALL, "grpc"),
    Event("storage WriteState, 9 KB put", WRITE_STATE_PER_BATCH / 2, CALL_WRITE_LARGE, "grpc"),
    Event(
        "storage CommitBatch",
        COMMIT_BATCH_PER_BATCH,
        CALL_WRITE_LARGE,
        "grpc",
        note="costed as a 9-KB WriteState hop; its 3 verifications are a row of their own",
    ),
    Event(
        "storage GetVertexStatuses",
        STATUSES_EXECUTION_PER_BATCH + STATUSES_SUBMISSIONS_PER_BATCH,
        CALL_READ,
        "grpc",
    ),
    Event(
        "gateway -> consensus SubmitVertices",
        SUBMIT_VERTICES_PER_BATCH,
        CALL_READ,
        "grpc",
        note="costed as a read hop",
    ),
    Event("gateway GetFinalized", GET_FINALIZED_PER_BATCH, CALL_READ, "grpc", note="a read hop"),
    Event("transport message sent, 5 KB", MESSAGES_SENT_PER_BATCH, MESSAGE_SEND, "transport"),
    Event(
        "transport message received, 5 KB",
        MESSAGES_RECEIVED_PER_BATCH - PRE_PREPARES_RECEIVED_PER_BATCH,
        MESSAGE_RECEIVE,
        "transport",
    ),
    Event(
        "transport PRE-PREPARE received, 8.3 KB",
        PRE_PREPARES_RECEIVED_PER_BATCH,
        MESSAGE_RECEIVE_LARGE,
        "transport",
    ),
    Event("ML-DSA-87 sign", SIGNATURES_PER_BATCH, SIGN, "crypto"),
    Event(
        "ML-DSA-87 verify, PBFT (consensus)", PBFT_VERIFICATIONS_PER_BATCH, VERIFY_PBFT, "crypto"
    ),
    Event(
        "ML-DSA-87 verify, vertex (consensus)",
        VERTEX_VERIFICATIONS_PER_BATCH,
        VERIFY_VERTEX,
        "crypto",
    ),
    Event(
        "ML-DSA-87 verify, certificate (storage)",
        STORAGE_VERIFICATIONS_PER_BATCH,
        VERIFY_PBFT,
        "crypto",
    ),
    Event("signing-mark fsync (consensus)", MARK_SYNCS_PER_BATCH, MARK_FSYNC, "sync"),
    Event(
        "storage WAL sync",
        WAL_SYNCS_PER_BATCH,
        WAL_SYNC,
        "sync",
        added=False,
        note="inside the storage calls' CPU: not added",
    ),
)


# -- the model (pure) ---------------------------------------------------------------------


def model(
    costs: Mapping[str, float],
    *,
    measured_cluster_ms: float | None,
    cores: int = 2,
    events: Sequence[Event] = EVENTS,
    nodes: int = NODES,
    vertices_per_batch: float = VERTICES_PER_BATCH,
) -> dict[str, Any]:
    """Events per batch per node x unit costs (ms): the floor per node and per cluster,
    each event's and category's share, the measured figure over the floor, and the bound."""
    rows: list[dict[str, Any]] = []
    for event in events:
        unit = float(costs[event.unit])
        rows.append(
            {
                "event": event.name,
                "per_batch": event.per_batch,
                "unit": event.unit,
                "unit_cpu_ms": unit,
                "cpu_ms_per_batch": event.per_batch * unit if event.added else 0.0,
                "added": event.added,
                "category": event.category,
                "note": event.note,
            }
        )
    floor = float(sum(row["cpu_ms_per_batch"] for row in rows))
    categories: dict[str, float] = {}
    for row in rows:
        row["share"] = row["cpu_ms_per_batch"] / floor if floor > 0 else 0.0
        categories[row["category"]] = categories.get(row["category"], 0.0) + row["cpu_ms_per_batch"]
    cluster = floor * nodes
    result: dict[str, Any] = {
        "rows": rows,
        "floor_cpu_ms_per_batch_node": floor,
        "floor_cpu_ms_per_batch_cluster": cluster,
        "nodes": nodes,
        "by_category": {
            name: {"cpu_ms_per_batch": ms, "share": ms / floor if floor > 0 else 0.0}
            for name, ms in categories.items()
        },
        "cores": cores,
        "implied_batches_per_s": cores * 1000.0 / cluster if cluster > 0 else None,
        "measured_cluster_ms": measured_cluster_ms,
        "measured_over_floor": None,
        "measured_cluster_ms_per_batch": None,
        "measured_per_batch_over_floor": None,
    }
    if measured_cluster_ms is not None and cluster > 0:
        result["measured_over_floor"] = measured_cluster_ms / cluster
        per_batch = measured_cluster_ms * vertices_per_batch
        result["measured_cluster_ms_per_batch"] = per_batch
        result["measured_per_batch_over_floor"] = per_batch / cluster
    return result


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with every float rounded (for the JSON)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def unit_costs_ms(measured: Mapping[str, Any]) -> dict[str, float]:
    """The model's unit costs (CPU ms per event) from the measurements: the paced calls'
    client + storage CPU; a message sent A + half the client, received B + half the client."""
    crypto = measured["crypto"]
    synced = measured["synced_writes"]
    calls = measured["storage_calls"]["paced"]
    messages = measured["transport"]["paced"]

    def call(kind: str) -> float:
        per = calls[kind]["cpu_ms_per_call"]
        return float(per["client"] + per["storage"])

    def half_client(size: str) -> float:
        return float(messages[size]["cpu_ms_per_message"]["client"]) / 2

    return {
        SIGN: float(crypto["sign_pbft"]["cpu_ms_mean"]),
        VERIFY_PBFT: float(crypto["verify_pbft"]["cpu_ms_mean"]),
        VERIFY_VERTEX: float(crypto["verify_vertex"]["cpu_ms_mean"]),
        CALL_READ: call("read"),
        CALL_WRITE_SMALL: call("write_300B"),
        CALL_WRITE_LARGE: call("write_9KB"),
        MESSAGE_SEND: float(messages["5KB"]["cpu_ms_per_message"]["transport_a"])
        + half_client("5KB"),
        MESSAGE_RECEIVE: float(messages["5KB"]["cpu_ms_per_message"]["transport_b"])
        + half_client("5KB"),
        MESSAGE_RECEIVE_LARGE: float(messages["8.3KB"]["cpu_ms_per_message"]["transport_b"])
        + half_client("8.3KB"),
        MARK_FSYNC: float(synced["mark_fsync"]["cpu_ms_mean"]),
        WAL_SYNC: float(synced["rocksdb_300B"]["cpu_ms_mean"]),
    }


# -- small helpers ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """A process's CPU time (all its threads, living or gone), to the nanosecond: its
    process CPU-time clock (Linux: ``((~pid) << 3) | CPUCLOCK_SCHED``); /proc when absent."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return stat_cpu_seconds(pid)


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = [s * 1e3 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
        "mean": round(statistics.fmean(ms), 3),
    }


def ops_summary(cpu: Sequence[float], wall: Sequence[float], elapsed: float) -> dict[str, Any]:
    """Per-operation CPU (thread CPU, ms) and latency of a loop of operations."""
    if not cpu:
        return {"ops": 0}
    return {
        "ops": len(cpu),
        "elapsed_s": round(elapsed, 3),
        "cpu_ms_median": round(statistics.median(cpu) * 1e3, 4),
        "cpu_ms_mean": round(statistics.fmean(cpu) * 1e3, 4),
        "latency_ms": latency_ms(wall),
    }


def run_ops(
    op: Callable[[int], object],
    *,
    seconds: float,
    count: int,
    rate: float = 0.0,
    warmup: int = 3,
) -> dict[str, Any]:
    """``op(i)`` up to ``count`` times and ``seconds``, closed loop or paced at ``rate``/s,
    in this thread: each call's thread CPU and wall time."""
    for i in range(warmup):
        op(count + i)
    cpu: list[float] = []
    wall: list[float] = []
    started = time.perf_counter()
    until = started + seconds
    for i in range(count):
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        if time.perf_counter() > until:
            break
        c0, t0 = time.thread_time(), time.perf_counter()
        op(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    result = ops_summary(cpu, wall, time.perf_counter() - started)
    result["rate_per_s"] = rate or None
    return result


class Window:
    """CPU of named processes (and of the whole machine) over a window."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.busy0 = machine_busy_seconds()
        self.wall0 = time.perf_counter()

    def close(self) -> tuple[dict[str, float], float, float]:
        """(CPU seconds per process, wall seconds, cores the other processes used)."""
        cpu = {name: cpu_seconds(pid) - self.cpu0[name] for name, pid in self.pids.items()}
        wall = time.perf_counter() - self.wall0
        busy = machine_busy_seconds() - self.busy0
        others = max(0.0, (busy - sum(cpu.values())) / wall) if wall > 0 else 0.0
        return cpu, wall, round(others, 3)


def in_process(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()`` in this process, with what the rest of the machine used meanwhile."""
    window = Window({"benchmark": os.getpid()})
    result = measure()
    _, _, others = window.close()
    result["other_processes_cores"] = others
    return result


# -- 1. ML-DSA-87 -------------------------------------------------------------------------


def crypto_costs(seconds: float, count: int) -> dict[str, Any]:
    from cretoai.crypto import get_backend
    from cretoai.crypto.keys import NodeKey
    from cretoai.vertex import make_vertex, verify_vertex
    from services.consensus.core.codec import encode_body
    from services.consensus.core.crypto import MlDsaSigner, MlDsaVerifier
    from services.consensus.core.messages import Prepare

    backend = get_backend("auto")
    key = backend.private_key_from_seed(os.urandom(32))
    signer = MlDsaSigner(key)
    verifier = MlDsaVerifier([key.public_key], backend)
    bodies = [encode_body(Prepare(view=0, seq=i + 1, digest=os.urandom(32))) for i in range(16)]
    signed = [(body, signer.sign(body)) for body in bodies]
    client = NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<bench>"))
    now = int(time.time() * 1000)
    vertices = [
        make_vertex(client, os.urandom(PAYLOAD_BYTES), [os.urandom(32), os.urandom(32)], now)
        for _ in range(DISTINCT)
    ]

    def sign(i: int) -> None:
        signer.sign(bodies[i % len(bodies)])

    def verify_pbft(i: int) -> None:
        body, signature = signed[i % len(signed)]
        if not verifier.verify(0, body, signature):
            raise RuntimeError("a PBFT signature does not verify")

    def verify_vertex_(i: int) -> None:
        if not verify_vertex(vertices[i % len(vertices)], backend):
            raise RuntimeError("a vertex signature does not verify")

    return {
        "backend": str(getattr(backend, "name", "?")),
        "pbft_body_bytes": len(bodies[0]),
        "signature_bytes": len(signed[0][1]),
        "vertex_bytes": vertices[0].ByteSize(),
        "sign_pbft": run_ops(sign, seconds=seconds, count=count),
        "verify_pbft": run_ops(verify_pbft, seconds=seconds, count=count),
        "verify_vertex": run_ops(verify_vertex_, seconds=seconds, count=count),
    }


# -- 2. synced writes ---------------------------------------------------------------------


def synced_write_costs(directory: Path, seconds: float, rate: float) -> dict[str, Any]:
    from rocksdict import WriteBatch

    from bench.storage_commit import RawDatabase
    from services.consensus.core.durable import SigningMark, batch_key, own_key
    from services.consensus.mark import MarkFile
    from services.storage import keys

    count = max(1, int(rate * seconds))
    raw = RawDatabase(directory / "raw-db")
    results: dict[str, Any] = {}
    try:
        cf = raw.handles[keys.CONSENSUS_STATE]
        for name, size in (("rocksdb_300B", SMALL_BYTES), ("rocksdb_9KB", LARGE_BYTES)):
            value = os.urandom(size)
            syncs: list[float] = []

            def write(
                i: int, value: bytes = value, size: int = size, syncs: list[float] = syncs
            ) -> None:
                key = own_key("prepare", 0, i) if size == SMALL_BYTES else batch_key(os.urandom(32))
                batch = WriteBatch(raw_mode=True)
                batch.put(key.encode(), value, cf)
                _, sync = raw.commit(batch)
                syncs.append(sync)

            results[name] = run_ops(write, seconds=seconds, count=count, rate=rate)
            results[name]["value_bytes"] = size
            results[name]["wal_sync_ms"] = latency_ms(syncs[-results[name]["ops"] :])
        mark = MarkFile(directory / "mark" / "signing_mark")
        try:
            # the first store creates the file and syncs its directory: not measured
            results["mark_fsync"] = run_ops(
                lambda i: mark.store(SigningMark(0, i + 1)), seconds=seconds, count=count, rate=rate
            )
        finally:
            mark.close()
    finally:
        raw.close()
    results["how"] = (
        "rocksdb: one WriteBatch with one put into consensus_state, unsynced write then "
        "flush_wal(sync=True), service DB options; mark: MarkFile.store (pwrite 128 B + "
        "fdatasync); paced, this thread's CPU"
    )
    return results


# -- the client process (``--client``) ----------------------------------------------------

_KEYS = itertools.count(1)


async def _stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


def _say(message: Mapping[str, Any] | str) -> None:
    text = message if isinstance(message, str) else json.dumps(message)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _paced_calls(
    call: Callable[..., Awaitable[Any]], requests: Sequence[Any], *, rate: float, seconds: float
) -> dict[str, Any]:
    """``call`` each request in turn, paced at ``rate``/s (0: closed loop), for at most
    ``seconds``: calls made, elapsed, this process's CPU over the loop, latencies."""
    latencies: list[float] = []
    cpu0 = time.process_time()
    started = time.perf_counter()
    until = started + seconds
    for i, request in enumerate(requests):
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if time.perf_counter() > until:
            break
        t0 = time.perf_counter()
        await call(request, timeout=10)
        latencies.append(time.perf_counter() - t0)
    return {
        "calls": len(latencies),
        "elapsed_s": time.perf_counter() - started,
        "client_cpu_s": time.process_time() - cpu0,
        "latency_ms": latency_ms(latencies),
    }


async def _client_storage(command: Mapping[str, Any]) -> dict[str, Any]:
    from cretoai.channels import service_channel
    from cretoai.v1 import storage_pb2, storage_pb2_grpc
    from services.consensus.core.durable import batch_key, own_key

    kind = str(command["kind"])
    rate = float(command["rate"])
    seconds = float(command["seconds"])
    count = int(command["count"])

    def request(_: int) -> Any:
        if kind == "read":
            hashes = [os.urandom(32) for _ in range(STATUS_HASHES)]
            return storage_pb2.GetVertexStatusesRequest(hashes=hashes)
        if kind == "write_300B":
            key = own_key("prepare", 0, next(_KEYS))
            value = os.urandom(SMALL_BYTES)
        else:
            key = batch_key(os.urandom(32))
            value = os.urandom(LARGE_BYTES)
        return storage_pb2.WriteStateRequest(
            puts=[storage_pb2.StateEntry(key=key.encode(), value=value)]
        )

    channel = service_channel(f"127.0.0.1:{command['port']}")
    try:
        stub = storage_pb2_grpc.StorageStub(channel)
        call = stub.GetVertexStatuses if kind == "read" else stub.WriteState
        for i in range(WARMUP):
            await call(request(i), timeout=10)
        requests = [request(i) for i in range(count)]
        _say("ready")
        await _stdin_line()
        result = await _paced_calls(call, requests, rate=rate, seconds=seconds)
    finally:
        await channel.close()
    return {**result, "request_bytes": requests[0].ByteSize() if requests else 0}


async def _client_bare(command: Mapping[str, Any]) -> dict[str, Any]:
    """Calls to the bare server (``--bare-server``): grpc.aio itself, no interceptors, no
    TLS, a 300-B request and an 8-byte answer."""
    rate = float(command["rate"])
    seconds = float(command["seconds"])
    count = int(command["count"])
    payload = os.urandom(SMALL_BYTES)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{command['port']}")
    try:
        call: Any = channel.unary_unary(BARE_METHOD)
        for _ in range(WARMUP):
            await call(payload, timeout=10)
        _say("ready")
        await _stdin_line()
        result = await _paced_calls(call, [payload] * count, rate=rate, seconds=seconds)
    finally:
        await channel.close()
    return {**result, "request_bytes": len(payload)}


async def bare_server_main() -> int:
    """A grpc.aio server with one generic unary method (bytes in, 8 bytes out): prints its
    port, serves until stdin closes."""

    async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"answered"

    server = grpc.aio.server()
    service, method = BARE_METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(handle)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _say(str(port))
    await _stdin_line()
    await server.stop(0)
    return 0


async def _client_transport(command: Mapping[str, Any]) -> dict[str, Any]:
    from cretoai.channels import service_channel
    from cretoai.v1 import transport_pb2, transport_pb2_grpc

    rate = float(command["rate"])
    seconds = float(command["seconds"])
    count = int(command["count"])
    size = int(command["size"])
    to = str(command["to"])
    filler = os.urandom(max(0, size - 16))
    a = service_channel(f"127.0.0.1:{command['a_port']}", max_message_bytes=64 * 1024 * 1024)
    b = service_channel(f"127.0.0.1:{command['b_port']}", max_message_bytes=64 * 1024 * 1024)
    outbound: Any = transport_pb2_grpc.TransportStub(a).ExchangeBatches()
    inbound: Any = transport_pb2_grpc.TransportStub(b).ExchangeBatches()

    def batch(index: int) -> Any:
        header = index.to_bytes(8, "big") + time.perf_counter_ns().to_bytes(8, "big")
        envelope = transport_pb2.Envelope(to=to, payload=header + filler)
        return transport_pb2.EnvelopeBatch(envelopes=[envelope])

    received: list[float] = []
    in_order = True
    arrived = asyncio.Event()

    async def read() -> None:
        nonlocal in_order
        while True:
            message = await inbound.read()
            now = time.perf_counter_ns()
            for envelope in message.envelopes:
                index = int.from_bytes(envelope.payload[:8], "big")
                if index != len(received):
                    in_order = False
                received.append((now - int.from_bytes(envelope.payload[8:16], "big")) / 1e9)
            arrived.set()

    try:
        # warm-up: both streams open, the connection busy for a moment; not measured
        for i in range(WARMUP):
            await outbound.write(batch(10**9 + i))
            message = await asyncio.wait_for(inbound.read(), 10)
            if len(message.envelopes) != 1:
                raise RuntimeError("warm-up: expected one envelope per message")
            await asyncio.sleep(0.01)
        _say("ready")
        await _stdin_line()
        cpu0 = time.process_time()
        reader = asyncio.create_task(read())
        sent = 0
        started = time.perf_counter()
        until = started + seconds
        for i in range(count):
            if rate > 0:
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.perf_counter() > until:
                break
            await outbound.write(batch(i))
            sent += 1
        deadline = time.perf_counter() + 10
        while len(received) < sent and time.perf_counter() < deadline:
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), max(0.0, deadline - time.perf_counter()))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        outbound.cancel()
        inbound.cancel()
        await a.close()
        await b.close()
    return {
        "sent": sent,
        "received": len(received),
        "in_order": in_order,
        "elapsed_s": elapsed,
        "client_cpu_s": cpu,
        "one_way_latency_ms": latency_ms(received),
    }


async def client_main() -> int:
    """Commands (JSON lines) on stdin: each answers ``ready``, waits for a line, runs,
    answers its result as one JSON line. An empty line or EOF ends it."""
    while True:
        line = (await _stdin_line()).strip()
        if not line:
            return 0
        command = json.loads(line)
        if command["op"] == "storage":
            _say(await _client_storage(command))
        elif command["op"] == "transport":
            _say(await _client_transport(command))
        elif command["op"] == "bare":
            _say(await _client_bare(command))
        else:
            raise ValueError(f"unknown command {command['op']!r}")


async def _start_self(mode: str) -> asyncio.subprocess.Process:
    """This module in a process of its own (``--client``, ``--bare-server``), on pipes."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.event_costs",
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )


class Client:
    """The client process (``python -m bench.event_costs --client``), driven by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> Client:
        return cls(await _start_self("--client"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def read(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the client process exited ({self.proc.returncode})")
        return line.decode().strip()

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(OSError, ConnectionError):
                await self.write("")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def measured_phase(
    client: Client,
    command: Mapping[str, Any],
    pids: Mapping[str, int],
    *,
    around: Callable[[], Awaitable[dict[str, float]]] | None = None,
) -> tuple[dict[str, Any], dict[str, float], float, dict[str, float] | None]:
    """One client command with the CPU of ``pids`` over its run: (the client's result, CPU
    seconds per process, other processes' cores, ``around()``'s after - before)."""
    await client.write(json.dumps(command))
    ready = await client.read(60)
    if ready != "ready":
        raise RuntimeError(f"the client said {ready!r}")
    before = await around() if around else None
    window = Window({**pids, "client": client.pid})
    await client.write("go")
    result = json.loads(await client.read(float(command["seconds"]) + CLIENT_SLACK_S))
    cpu, _, others = window.close()
    delta = None
    if around is not None and before is not None:
        after = await around()
        delta = {k: after.get(k, 0.0) - v for k, v in before.items()}
    return result, cpu, others, delta


async def idle_cpu(pids: Mapping[str, int], seconds: float) -> dict[str, Any]:
    window = Window(pids)
    await asyncio.sleep(seconds)
    cpu, wall, others = window.close()
    return {
        "seconds": round(wall, 2),
        "cpu_ms_per_s": {name: round(c * 1e3 / wall, 3) for name, c in cpu.items()},
        "other_processes_cores": others,
    }


# -- 3. storage calls ---------------------------------------------------------------------


async def storage_costs(base: Path, client: Client, seconds: float, rate: float) -> dict[str, Any]:
    from devkit.storage import ServiceProcess

    proc = ServiceProcess.create(base / "storage", db=base / "storage-db")
    proc.spawn()
    try:
        await proc.wait_serving(timeout=60)
        assert proc.proc is not None
        pid = proc.proc.pid
        result: dict[str, Any] = {"idle": await idle_cpu({"storage": pid}, idle_seconds(seconds))}
        plan = (
            ("paced", rate, seconds, max(1, int(rate * seconds))),
            ("closed_loop", 0.0, seconds / 3, CLOSED_LOOP_MAX_CALLS),
        )
        for mode, mode_rate, mode_seconds, count in plan:
            phases: dict[str, Any] = {}
            for kind in ("read", "write_300B", "write_9KB"):
                command = {
                    "op": "storage",
                    "port": proc.port,
                    "kind": kind,
                    "rate": mode_rate,
                    "seconds": mode_seconds,
                    "count": count,
                }
                reply, cpu, others, _ = await measured_phase(client, command, {"storage": pid})
                calls = max(1, int(reply["calls"]))
                phases[kind] = {
                    "calls": reply["calls"],
                    "rate_per_s": mode_rate or None,
                    "achieved_per_s": round(reply["calls"] / reply["elapsed_s"], 1),
                    "request_bytes": reply["request_bytes"],
                    "cpu_ms_per_call": {
                        "client": round(reply["client_cpu_s"] * 1e3 / calls, 4),
                        "storage": round(cpu["storage"] * 1e3 / calls, 4),
                    },
                    "latency_ms": reply["latency_ms"],
                    "other_processes_cores": others,
                }
            result[mode] = phases
        result["how"] = (
            "python -m services.storage (devkit.storage.ServiceProcess) and a client process "
            "(cretoai.channels.service_channel); read = GetVertexStatuses of 3 unknown hashes, "
            "write = WriteState with one put (own/prepare/... 300 B, batch/<digest> 9 KB); "
            "requests built before the clock; client CPU over its loop, storage's over the "
            "command"
        )
        return result
    finally:
        proc.terminate()


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread a process has now."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total


async def bare_grpc_costs(client: Client, seconds: float, rate: float) -> dict[str, Any]:
    """The library's own cost of a paced unary hop: a bare grpc.aio server process (this
    module, ``--bare-server``) called by the client process, no interceptors, no TLS."""
    proc = await _start_self("--bare-server")
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        command = {
            "op": "bare",
            "port": port,
            "rate": rate,
            "seconds": seconds,
            "count": max(1, int(rate * seconds)),
        }

        async def around() -> dict[str, float]:
            return {"server": float(context_switches(proc.pid))}

        reply, cpu, others, delta = await measured_phase(
            client, command, {"server": proc.pid}, around=around
        )
        calls = max(1, int(reply["calls"]))
        switches: dict[str, float] = {k: round(v / calls, 1) for k, v in (delta or {}).items()}
        return {
            "calls": reply["calls"],
            "rate_per_s": rate,
            "cpu_ms_per_call": {
                "client": round(reply["client_cpu_s"] * 1e3 / calls, 4),
                "server": round(cpu["server"] * 1e3 / calls, 4),
            },
            "latency_ms": reply["latency_ms"],
            "server_threads": threads,
            "server_context_switches_per_call": switches.get("server"),
            "other_processes_cores": others,
            "how": "grpc.aio server with one generic unary method in a process of its own "
            "(python -m bench.event_costs --bare-server), called from the client process "
            "on grpc.aio.insecure_channel: 300 B in, 8 B out, paced; context switches of "
            "all the server's threads (/proc/<pid>/task/*/status) over the phase",
        }
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError, ConnectionError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- 4. transport messages ----------------------------------------------------------------


def scrape_datagrams(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = (
        "cretoai_transport_datagrams_sent_total",
        "cretoai_transport_datagrams_received_total",
    )
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name.removeprefix("cretoai_transport_").removesuffix("_total")] = float(value)
    return out


async def transport_costs(
    base: Path, client: Client, seconds: float, rate: float
) -> dict[str, Any]:
    from devkit.ports import free_tcp_port
    from devkit.transport import eventually, make_cluster, spawnable

    directory = base / "transport"
    directory.mkdir()
    spec = make_cluster(directory, 2, transport={"reconnect_min_ms": 50})
    metrics_ports = []
    # default timers and windows, as bench.transport_throughput runs them
    for data in spec.data:
        for key in ("reconnect_max_ms", "handshake_timeout_ms", "keepalive_ms"):
            data["transport"].pop(key, None)
        data["transport"]["idle_timeout_ms"] = 30_000
        port = free_tcp_port()
        data["transport"]["metrics"] = f"127.0.0.1:{port}"
        metrics_ports.append(port)
        data["telemetry"] = {"log_level": "warning"}
    a, b = spawnable(spec, 0), spawnable(spec, 1)
    await a.start()
    await b.start()
    try:

        async def connected() -> bool:
            return (await a.peers())[b.node_id].connected

        await eventually(connected, timeout=20, what="peers connected")
        assert a.proc is not None and b.proc is not None
        pids = {"transport_a": a.proc.pid, "transport_b": b.proc.pid}
        result: dict[str, Any] = {"idle": await idle_cpu(pids, idle_seconds(seconds))}

        async def datagrams() -> dict[str, float]:
            counts: dict[str, float] = {}
            for name, port in zip(("a", "b"), metrics_ports, strict=True):
                for key, value in (await asyncio.to_thread(scrape_datagrams, port)).items():
                    counts[f"{name}_{key}"] = value
            return counts

        phases: dict[str, Any] = {}
        for label, size in MESSAGE_BYTES.items():
            command = {
                "op": "transport",
                "a_port": a.grpc_port,
                "b_port": b.grpc_port,
                "to": b.node_id,
                "size": size,
                "rate": rate,
                "seconds": seconds,
                "count": max(1, int(rate * seconds)),
            }
            reply, cpu, others, delta = await measured_phase(
                client, command, pids, around=datagrams
            )
            n = max(1, int(reply["received"]))
            phases[label] = {
                "message_bytes": size,
                "sent": reply["sent"],
                "received": reply["received"],
                "in_order": reply["in_order"],
                "rate_per_s": rate,
                "cpu_ms_per_message": {
                    "transport_a": round(cpu["transport_a"] * 1e3 / n, 4),
                    "transport_b": round(cpu["transport_b"] * 1e3 / n, 4),
                    "client": round(reply["client_cpu_s"] * 1e3 / n, 4),
                },
                "datagrams_per_message": {k: round(v / n, 2) for k, v in (delta or {}).items()},
                "one_way_latency_ms": reply["one_way_latency_ms"],
                "other_processes_cores": others,
            }
        result["paced"] = phases
        result["how"] = (
            "two python -m services.transport processes (devkit.transport), default timers; "
            "a client process writes one envelope per gRPC message on A's ExchangeBatches "
            "stream, paced, and reads it from B's; datagrams from the transports' Prometheus "
            "counters (a_ = A's socket, b_ = B's), scraped outside the CPU window"
        )
        return result
    finally:
        await a.stop()
        await b.stop()


def idle_seconds(seconds: float) -> float:
    return max(0.5, min(3.0, seconds / 2))


# -- the reference figures ----------------------------------------------------------------


def measured_reference(path: Path = CLUSTER_RESULT, rate: float = 10) -> dict[str, Any] | None:
    """``cpu_ms_per_finalized_vertex_cluster`` of ``cluster_load``'s step at ``rate``/s."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for step in data.get("steps", []):
        if step.get("offered_rate") == rate and step.get("cpu_ms_per_finalized_vertex_cluster"):
            return {
                "cpu_ms": float(step["cpu_ms_per_finalized_vertex_cluster"]),
                "source": f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
                f"steps[offered_rate={rate:g}].cpu_ms_per_finalized_vertex_cluster",
                "when": data.get("when"),
                "commit": (data.get("machine", {}).get("git") or {}).get("commit"),
            }
    return None


def transport_contrast(path: Path = TRANSPORT_RESULT) -> dict[str, Any] | None:
    """``transport_throughput``'s bulk 5-KB figures as CPU ms per message (not rerun)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    out: dict[str, Any] = {"source": str(path.relative_to(REPO)), "when": data.get("when")}
    for key, section in (
        ("batched", "throughput"),
        ("one_per_grpc_message", "throughput_single_exchange"),
    ):
        run = data.get(section, {}).get("5KB")
        if not run or not run.get("received"):
            continue
        n = run["received"]
        out[key] = {
            "api": run.get("api"),
            "envelopes_per_grpc_message": run.get("batch"),
            "messages_per_s": run.get("messages_per_s"),
            "cpu_ms_per_message": {
                "transport_a": round(run["cpu_s"]["sender_transport"] * 1e3 / n, 4),
                "transport_b": round(run["cpu_s"]["receiver_transport"] * 1e3 / n, 4),
                "client": round(run["cpu_s"]["benchmark_client"] * 1e3 / n, 4),
            },
        }
    return out


def machine() -> dict[str, Any]:
    from bench.cluster_load import machine as cluster_machine

    info = cluster_machine()
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


# -- the run ------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    load_start = os.getloadavg()
    info = machine()
    crypto_seconds = min(CRYPTO_SECONDS, args.seconds / 3)
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cretoai-bench-events-") as tmp:
        base = Path(tmp)
        measured["crypto"] = in_process(lambda: crypto_costs(crypto_seconds, args.crypto_ops))
        measured["synced_writes"] = in_process(
            lambda: synced_write_costs(base, args.seconds, args.rate)
        )
        client = await Client.start()
        try:
            measured["storage_calls"] = await storage_costs(base, client, args.seconds, args.rate)
            measured["bare_grpc"] = await bare_grpc_costs(client, args.seconds, args.rate)
            measured["transport"] = await transport_costs(base, client, args.seconds, args.rate)
        finally:
            await client.close()
    costs = unit_costs_ms(measured)
    reference = None
    measured_ms = args.measured_cluster_ms
    if measured_ms is None:
        reference = measured_reference()
        measured_ms = reference["cpu_ms"] if reference else None
    else:
        reference = {"cpu_ms": measured_ms, "source": "--measured-cluster-ms"}
    cores = os.cpu_count() or 2
    return {
        "benchmark": "event_costs",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "parameters": {
            "seconds": args.seconds,
            "rate_per_s": args.rate,
            "crypto_ops": args.crypto_ops,
            "crypto_seconds": crypto_seconds,
            "message_bytes": MESSAGE_BYTES,
            "write_bytes": [SMALL_BYTES, LARGE_BYTES],
            "status_hashes": STATUS_HASHES,
            "cpu": "each process's CPU-time clock (all threads), windows around each phase",
        },
        "measurements": measured,
        "unit_costs_ms": rounded(costs),
        "counts": {
            "provenance": "a live 4-node cluster's Prometheus counters at 10 vertices/s "
            "(9 batches/s, 1 vertex per batch), node2 (a backup), 2026-12-02; "
            "PRE-PREPAREs received from the protocol",
            "events": [
                {"event": e.name, "per_batch": e.per_batch, "unit": e.unit, "added": e.added}
                for e in EVENTS
            ],
        },
        "model": rounded(model(costs, measured_cluster_ms=measured_ms, cores=cores)),
        "measured_reference": reference,
        "contrast_transport_throughput": transport_contrast(),
        "total_s": round(time.perf_counter() - started, 1),
    }


# -- the report ---------------------------------------------------------------------------


def report(result: Mapping[str, Any]) -> list[str]:
    m = result["measurements"]
    crypto, synced = m["crypto"], m["synced_writes"]
    calls, messages = m["storage_calls"], m["transport"]["paced"]
    lines = [
        f"event costs, {result['when']}, {result['machine'].get('cpu', '?')}, "
        f"{result['machine'].get('cores')} cores, load {result['load_average_at_start'][0]}",
        "",
        "unit costs (CPU ms per event)",
        f"  {'event':44s} {'CPU mean':>9s} {'CPU p50':>8s} {'lat p50':>8s} {'lat p99':>8s}",
    ]

    def op_line(name: str, ops: Mapping[str, Any]) -> str:
        lat = ops.get("latency_ms", {})
        return (
            f"  {name:44s} {ops['cpu_ms_mean']:9.3f} {ops['cpu_ms_median']:8.3f} "
            f"{lat.get('p50', 0):8.3f} {lat.get('p99', 0):8.3f}   ({ops['ops']} ops)"
        )

    lines.append(op_line(f"ML-DSA-87 sign ({crypto['backend']})", crypto["sign_pbft"]))
    lines.append(op_line("ML-DSA-87 verify, PBFT message", crypto["verify_pbft"]))
    lines.append(op_line("ML-DSA-87 verify, vertex (1 KB payload)", crypto["verify_vertex"]))
    lines.append(op_line("RocksDB write + WAL sync, 300 B (paced)", synced["rocksdb_300B"]))
    lines.append(op_line("RocksDB write + WAL sync, 9 KB (paced)", synced["rocksdb_9KB"]))
    lines.append(op_line("signing-mark pwrite + fdatasync (paced)", synced["mark_fsync"]))
    lines.append("")
    lines.append(
        f"  {'storage call':30s} {'mode':11s} {'client':>7s} {'storage':>8s} "
        f"{'lat p50':>8s} {'lat p99':>8s}"
    )
    for mode in ("paced", "closed_loop"):
        for kind, phase in calls[mode].items():
            cpu, lat = phase["cpu_ms_per_call"], phase["latency_ms"]
            lines.append(
                f"  {kind:30s} {mode:11s} {cpu['client']:7.3f} {cpu['storage']:8.3f} "
                f"{lat.get('p50', 0):8.3f} {lat.get('p99', 0):8.3f}   ({phase['calls']} calls)"
            )
    bare = m.get("bare_grpc")
    if bare:
        cpu, lat = bare["cpu_ms_per_call"], bare["latency_ms"]
        lines.append(
            f"  {'bare grpc.aio hop, 300 B':30s} {'paced':11s} {cpu['client']:7.3f} "
            f"{cpu['server']:8.3f} {lat.get('p50', 0):8.3f} {lat.get('p99', 0):8.3f}   "
            f"({bare['calls']} calls; server: {bare['server_threads']} threads, "
            f"{bare['server_context_switches_per_call']} context switches per call)"
        )
    lines.append("")
    lines.append(
        f"  {'transport message (paced)':30s} {'A':>7s} {'B':>7s} {'client':>7s} "
        f"{'lat p50':>8s}  datagrams per message"
    )
    for label, phase in messages.items():
        cpu, lat = phase["cpu_ms_per_message"], phase["one_way_latency_ms"]
        grams = ", ".join(f"{k} {v}" for k, v in phase["datagrams_per_message"].items())
        lines.append(
            f"  {label:30s} {cpu['transport_a']:7.3f} {cpu['transport_b']:7.3f} "
            f"{cpu['client']:7.3f} {lat.get('p50', 0):8.3f}  {grams}"
        )
    mod = result["model"]
    lines += [
        "",
        "per-batch floor, per node (counts: node2, a backup, at 10 vertices/s)",
        f"  {'event':44s} {'per batch':>9s} {'unit ms':>8s} {'ms/batch':>9s} {'share':>6s}",
    ]
    for row in mod["rows"]:
        ms = f"{row['cpu_ms_per_batch']:9.3f}" if row["added"] else f"{'(in)':>9s}"
        lines.append(
            f"  {row['event']:44s} {row['per_batch']:9.2f} {row['unit_cpu_ms']:8.3f} {ms} "
            f"{row['share'] * 100:5.1f}%"
        )
    cats = ", ".join(
        f"{name} {c['cpu_ms_per_batch']:.2f} ms ({c['share'] * 100:.0f}%)"
        for name, c in mod["by_category"].items()
    )
    lines.append(f"  by category: {cats}")
    lines.append(
        f"  floor: {mod['floor_cpu_ms_per_batch_node']:.2f} ms per node, "
        f"{mod['floor_cpu_ms_per_batch_cluster']:.2f} ms per cluster (x{mod['nodes']})"
    )
    if mod["measured_over_floor"] is not None:
        lines.append(
            f"  measured (cluster_load, per finalized vertex at 10/s): "
            f"{mod['measured_cluster_ms']:.1f} ms = {mod['measured_over_floor']:.2f} x the floor"
            f"; per batch ({VERTICES_PER_BATCH} vertices) "
            f"{mod['measured_cluster_ms_per_batch']:.1f} ms"
            f" = {mod['measured_per_batch_over_floor']:.2f} x"
        )
    if mod["implied_batches_per_s"] is not None:
        lines.append(
            f"  implied bound: {mod['cores']} cores x 1000 / "
            f"{mod['floor_cpu_ms_per_batch_cluster']:.2f} ms = "
            f"{mod['implied_batches_per_s']:.0f} batches/s at 1 vertex per batch"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="length of each paced phase (default 6)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="paced events/s (default 50)")
    parser.add_argument("--crypto-ops", type=int, default=CRYPTO_OPS, help="ops per crypto kind")
    parser.add_argument(
        "--measured-cluster-ms",
        type=float,
        default=None,
        help="the measured cluster CPU ms per batch to compare with (default: cluster_load's "
        "cpu_ms_per_finalized_vertex_cluster at 10/s in bench/results/cluster_load.json)",
    )
    parser.add_argument("--output", type=Path, default=RESULT, help="the JSON result file")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return asyncio.run(client_main())
    if args.bare_server:
        return asyncio.run(bare_server_main())
    if not 0.2 <= args.seconds <= 60:
        parser.error("--seconds must be within [0.2, 60]")
    if not 1 <= args.rate <= 1000:
        parser.error("--rate must be within [1, 1000]")
    if not 1 <= args.crypto_ops <= 10_000:
        parser.error("--crypto-ops must be within [1, 10000]")
    if args.measured_cluster_ms is not None and args.measured_cluster_ms <= 0:
        parser.error("--measured-cluster-ms must be positive")
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.output)
    for line in report(result):
        print(line)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
