"""The architecture's latency floor: how fast one vertex can be final in the node's
mandated shape at low load, with PBFT's three phases and nothing else, in real processes.

    .venv/bin/python -m bench.latency_floor [--rate 10] [--seconds 20] [--entry all|primary]
                                            [--no-persist] [--tls] [--execute-write] [--mark-sync]
    .venv/bin/python -m bench.latency_floor --window 4 --client-batch 64 --batch-max 128

Issue #14 asks for finality p50 <= 25 ms and p99 <= 50 ms at 10 vertices/s, and p99 <= 100 ms
at 200/s (``--rate 200``: the primary batches what waits, as the node). ``bench.floor``
measures the shape's floor at saturation; this measures its floor for latency. Four nodes of
four processes each on loopback, built from the node's libraries (grpc.aio, aioquic,
rocksdict, ``cryptography``'s ML-DSA-87), the gateway, transport and storage stand-ins of
``bench.floor``, and a consensus stand-in that runs the normal case of PBFT with nothing
around it:

* the entry node forwards a client's vertex to the primary (node 1) unless it is the primary;
* the primary verifies the vertex's signature; while fewer than ``--max-inflight`` (1, the
  node's default) of its batches are uncommitted it cuts a batch of the vertices waiting
  (at most ``--batch-max``), signs a PRE-PREPARE (seq, SHA3-256 over the vertices'
  SHA3-256) and sends it with the vertices to every backup, less the vertices that backup
  forwarded (as the node: bodies cross the network once per node);
* a backup verifies the PRE-PREPARE's signature and the vertices' (on 2 threads, a job
  each, as the node; one vertex inline), signs a PREPARE and sends it to every replica;
* a replica with the PRE-PREPARE and 2f matching PREPAREs (each signature verified) writes
  the vertex and its prepared state to its storage, synced (``--no-persist``: not at all),
  then signs a COMMIT and sends it to every replica;
* with 2f + 1 matching COMMITs (each verified) the entry node answers the client.

What a real node does beyond this is left out, so that the figure is a lower bound: the
synced write before a PREPARE, execution (parents, heights, indexes), certificates and their
checks, dedup, admission, metrics, tracing; and its messages are protobuf, these are a few
packed fields. Three things the node must do for its safety and durability are options, so
that the floor of its shape can be measured with them (``bench.targets`` does): ``--tls``
(mutual TLS on every internal gRPC hop: the services obey only their own node's),
``--execute-write`` (the executed batch's record, synced, before the answer: nothing
finalized is lost) and ``--mark-sync`` (before each signed message is sent, the signing
mark rewritten and fdatasynced, on a thread: a restarted replica never signs a conflicting
message). Every signature is ML-DSA-87 and checked on the event loop, as the
node checks a lone signature.

A load process sends pre-signed 1 KB vertices (as ``bench.cluster_load``'s, about 8.3 KB)
at ``--rate`` per second on an open-loop schedule, round-robin over the four gateways
(``--entry primary``: to the primary's only, no forwarding), each on a gRPC stream of its
own. Latency is measured from each vertex's due time to its answer, over the vertices due
in the measured window after ``--warmup``; the CPU of every process over the same window.
Writes ``bench/results/latency_floor.json``.

``--window N`` measures the same protocol at saturation instead, for the throughput target
(>= 40 % of the ML-DSA-87 verify bound; ``bench.floor`` is the floor without PBFT): a closed
loop keeps N messages of ``--client-batch`` vertices in flight at every gateway, a message's
credit returning once each of its vertices is answered. It reports the vertices answered in
the window per second, each role's CPU per vertex, and the verify bound measured in the same
run with the share of it reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import floor

RESULT = floor.ROOT / "bench" / "results" / "latency_floor.json"
NODES = floor.NODES
F = (NODES - 1) // 3
PRIMARY = 0
PAYLOAD_BYTES = 1024
#: Consensus stand-ins' messages: a forwarded request, PRE-PREPARE, PREPARE, COMMIT.
REQUEST, PRE_PREPARE, PREPARE, COMMIT = b"F", b"P", b"R", b"C"
CONTEXT = b"cretoai.bench.latency_floor"
#: The signing mark's record (as services/consensus/mark.py: one block, rewritten in place).
MARK_RECORD_BYTES = 128
ID_BYTES = 8


@dataclass
class Slot:
    """What one replica knows of one sequence number."""

    digest: bytes | None = None
    #: the batch's requests: (entry node, request id, vertex bytes)
    requests: tuple[tuple[int, bytes, bytes], ...] = ()
    prepares: dict[int, bytes] = field(default_factory=dict)  # sender -> digest
    commits: dict[int, bytes] = field(default_factory=dict)
    committing: bool = False
    done: bool = False

    def votes(self, kind: dict[int, bytes]) -> int:
        return sum(digest == self.digest for digest in kind.values())


def _vote_body(kind: bytes, seq: int, digest: bytes) -> bytes:
    return kind + seq.to_bytes(8, "big") + digest


def batch_digest(vertices: list[bytes]) -> bytes:
    """SHA3-256 over the SHA3-256 of each vertex, in order."""
    return hashlib.sha3_256(b"".join(hashlib.sha3_256(v).digest() for v in vertices)).digest()


def encode_requests(requests: tuple[tuple[int, bytes, bytes], ...]) -> bytes:
    return b"".join(
        bytes([entry]) + rid + len(vertex).to_bytes(4, "big") + vertex
        for entry, rid, vertex in requests
    )


def decode_requests(data: bytes) -> tuple[tuple[int, bytes, bytes], ...]:
    out, at = [], 0
    while at < len(data):
        entry, rid = data[at], data[at + 1 : at + 1 + ID_BYTES]
        at += 1 + ID_BYTES
        size = int.from_bytes(data[at : at + 4], "big")
        out.append((entry, rid, data[at + 4 : at + 4 + size]))
        at += 4 + size
    return tuple(out)


def encode_submission(vertices: list[tuple[bytes, bytes]]) -> bytes:
    """A client's message: one or more (request id, vertex), as the gateway passes it on."""
    return b"".join(rid + len(vertex).to_bytes(4, "big") + vertex for rid, vertex in vertices)


def decode_submission(data: bytes) -> list[tuple[bytes, bytes]]:
    out, at = [], 0
    while at < len(data):
        rid = data[at : at + ID_BYTES]
        size = int.from_bytes(data[at + ID_BYTES : at + ID_BYTES + 4], "big")
        at += ID_BYTES + 4
        out.append((rid, data[at : at + size]))
        at += size
    return out


def share_in_run(counts: list[dict[str, Any]], cluster_ms_per_vertex: float | None) -> float | None:
    """The share of the verify bound with the bound's cost per verification measured in the
    run itself, as ``cluster_load``'s ``verify_bound_ratio_in_run``: nodes x (vertex
    verification CPU / verifications, over every node) / the cluster's CPU per vertex.
    This floor verifies each vertex on every node, as the bound assumes."""
    verifications = sum(int(c.get("vertex_verifications", 0)) for c in counts)
    cpu_ns = sum(int(c.get("vertex_verify_cpu_ns", 0)) for c in counts)
    if not verifications or not cpu_ns or not cluster_ms_per_vertex:
        return None
    return round(NODES * (cpu_ns / 1e6 / verifications) / float(cluster_ms_per_vertex), 3)


async def consensus_main(spec: dict[str, Any], node: int) -> None:
    from cretoai.crypto import get_backend
    from cretoai.v1 import vertex_pb2
    from cretoai.vertex import verify_vertex

    backend = get_backend("auto")
    keys = [backend.private_key_from_seed(bytes.fromhex(seed)) for seed in spec["seeds"]]
    public = [key.public_key for key in keys]
    me = keys[node]
    persist = bool(spec["persist"])
    loop = asyncio.get_running_loop()
    store_call: Any = floor._channel(spec["ports"]["S"][node]).stream_stream(
        floor._method("Store")
    )(wait_for_ready=True)
    exchange: Any = floor._channel(spec["ports"]["T"][node]).stream_stream(
        floor._method("Exchange")
    )(wait_for_ready=True)
    store_lock, exchange_lock = asyncio.Lock(), asyncio.Lock()
    stored: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    answers: asyncio.Queue[bytes] = asyncio.Queue()  # request ids, 8 bytes each
    slots: dict[int, Slot] = {}
    own: dict[bytes, bytes] = {}  # this backup's forwarded vertices, by request id
    next_seq = [0]
    counts = {"committed": 0, "batches": 0, "bad": 0, "tls": floor._internal_tls is not None}
    #: Vertex signatures verified and the CPU they took on the verifying thread, for the
    #: in-run share of the bound (as ``cluster_load``'s ``verify_bound_ratio_in_run``).
    counts.update(vertex_verifications=0, vertex_verify_cpu_ns=0)

    def verified(signer: int, body: bytes, signature: bytes) -> bool:
        ok = backend.verify(public[signer], body, signature, context=CONTEXT)
        counts["bad"] += not ok
        return ok

    async def send(message: bytes) -> None:
        async with exchange_lock:
            await exchange.write(message)

    async def store(data: bytes) -> None:
        done = loop.create_future()
        async with store_lock:
            stored.put_nowait(done)
            await store_call.write(data)
        await done

    async def store_acks() -> None:
        async for _ in store_call:
            stored.get_nowait().set_result(None)

    def slot(seq: int) -> Slot:
        return slots.setdefault(seq, Slot())

    mark_fd = (
        os.open(Path(spec["dir"]) / f"signing-mark-{node}", os.O_RDWR | os.O_CREAT, 0o600)
        if spec.get("mark_sync")
        else None
    )
    counts.update(mark_syncs=0)

    def write_mark(seq: int) -> None:
        assert mark_fd is not None
        os.pwrite(mark_fd, seq.to_bytes(8, "big").ljust(MARK_RECORD_BYTES, b" "), 0)
        os.fdatasync(mark_fd)

    async def mark(seq: int) -> None:
        """With ``mark_sync``, as the node's driver before it sends a new signature: the
        signing mark, one block rewritten in place and fdatasynced, on a thread."""
        if mark_fd is not None:
            await asyncio.to_thread(write_mark, seq)
            counts["mark_syncs"] += 1

    running: set[asyncio.Task[None]] = set()
    pending: list[tuple[int, bytes, bytes]] = []
    in_flight = [0]  # the primary's batches not committed yet
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify")

    def verify_each(vertices: list[bytes]) -> tuple[bool, int]:
        """Whether every vertex verifies, and this thread's CPU for it (ns)."""
        started = time.thread_time_ns()
        ok = all(verify_vertex(vertex_pb2.Vertex.FromString(v), backend) for v in vertices)
        return ok, time.thread_time_ns() - started

    async def verify(vertices: list[bytes]) -> bool:
        """Inline for one (as the node), else a job per thread on 2 threads."""
        if len(vertices) == 1:
            outcomes = [verify_each(vertices)]
        else:
            half = -(-len(vertices) // 2)
            jobs = [vertices[:half], vertices[half:]]
            outcomes = await asyncio.gather(
                *(loop.run_in_executor(pool, verify_each, j) for j in jobs)
            )
        ok = all(job_ok for job_ok, _ in outcomes)
        counts["vertex_verifications"] += len(vertices)
        counts["vertex_verify_cpu_ns"] += sum(cpu for _, cpu in outcomes)
        counts["bad"] += not ok
        return ok

    async def propose(entry: int, submitted: list[tuple[bytes, bytes]]) -> None:
        """The primary: take a client's message; cut a batch when none is in flight."""
        if await verify([vertex for _, vertex in submitted]):
            pending.extend((entry, rid, vertex) for rid, vertex in submitted)
            await cut()

    async def cut() -> None:
        if in_flight[0] >= spec["max_inflight"] or not pending:
            return
        requests = tuple(pending[: spec["batch_max"]])
        del pending[: len(requests)]
        in_flight[0] += 1
        next_seq[0] += 1
        seq = next_seq[0]
        s = slot(seq)
        s.digest, s.requests = batch_digest([v for _, _, v in requests]), requests
        signature = me.sign(_vote_body(PRE_PREPARE, seq, s.digest), context=CONTEXT)
        await mark(seq)
        header = seq.to_bytes(8, "big") + len(signature).to_bytes(2, "big") + signature
        for peer in range(NODES):  # as the node: a backup's own vertices are not sent back
            if peer != node:
                bodies = tuple((e, rid, b"" if e == peer else v) for e, rid, v in requests)
                await send(floor.TO_ONE + bytes([peer]) + PRE_PREPARE + header
                           + encode_requests(bodies))  # fmt: skip
        await progress(seq)

    async def on_pre_prepare(message: bytes) -> None:
        seq = int.from_bytes(message[1:9], "big")
        size = int.from_bytes(message[9:11], "big")
        signature = message[11 : 11 + size]
        requests = tuple(
            (e, rid, own.pop(rid, b"") if e == node and not v else v)
            for e, rid, v in decode_requests(message[11 + size :])
        )
        vertices = [v for _, _, v in requests]
        digest = batch_digest(vertices)
        if not verified(PRIMARY, _vote_body(PRE_PREPARE, seq, digest), signature):
            return
        if not await verify(vertices):
            return
        s = slot(seq)
        s.digest, s.requests = digest, requests
        await vote(PREPARE, seq, s)

    async def vote(kind: bytes, seq: int, s: Slot) -> None:
        assert s.digest is not None
        signature = me.sign(_vote_body(kind, seq, s.digest), context=CONTEXT)
        (s.prepares if kind == PREPARE else s.commits)[node] = s.digest
        await mark(seq)
        await send(kind + bytes([node]) + seq.to_bytes(8, "big") + s.digest + signature)
        await progress(seq)

    async def on_vote(message: bytes) -> None:
        kind, sender, seq = message[:1], message[1], int.from_bytes(message[2:10], "big")
        digest, signature = message[10:42], message[42:]
        if sender == node or not verified(sender, _vote_body(kind, seq, digest), signature):
            return
        s = slot(seq)
        (s.prepares if kind == PREPARE else s.commits)[sender] = digest
        await progress(seq)

    async def progress(seq: int) -> None:
        s = slot(seq)
        if s.digest is None:
            return
        if not s.committing and s.votes(s.prepares) >= 2 * F:  # prepared
            s.committing = True
            if persist:
                await store(seq.to_bytes(8, "big") + s.digest + encode_requests(s.requests))
            await vote(COMMIT, seq, s)
            return
        if not s.done and s.votes(s.commits) >= 2 * F + 1:  # committed
            s.done = True
            counts["committed"] += len(s.requests)
            counts["batches"] += 1
            slots.pop(seq - 64, None)  # bounded: old slots are never needed again
            if node == PRIMARY:
                in_flight[0] -= 1
                spawn(cut())
            if spec.get("execute_write"):  # the executed batch's record, synced, first
                await executed(seq, s)
            mine = b"".join(rid for entry, rid, _ in s.requests if entry == node)
            if mine:
                answers.put_nowait(mine)

    execution = asyncio.Lock()

    async def executed(seq: int, s: Slot) -> None:
        """In seq order, as the node executes: a small record of the batch (its seq,
        digest and request ids; the bodies are stored already), synced."""
        assert s.digest is not None
        async with execution:
            await store(b"E" + seq.to_bytes(8, "big") + s.digest
                        + b"".join(rid for _, rid, _ in s.requests))  # fmt: skip

    def spawn(work: Any) -> None:
        task = loop.create_task(work)
        running.add(task)
        task.add_done_callback(running.discard)

    async def from_peers() -> None:
        async for message in exchange:
            kind = message[:1]
            if kind == REQUEST:
                spawn(propose(message[1], decode_submission(message[2:])))
            elif kind == PRE_PREPARE:
                spawn(on_pre_prepare(message))
            elif kind in (PREPARE, COMMIT):
                spawn(on_vote(message))

    async def ingest(requests: AsyncIterator[bytes], context: Any) -> None:
        async def read() -> None:
            async for data in requests:
                submitted = decode_submission(data)
                if node == PRIMARY:
                    spawn(propose(node, submitted))
                else:
                    own.update(submitted)
                    spawn(send(floor.TO_ONE + bytes([PRIMARY]) + REQUEST + bytes([node]) + data))

        reader = asyncio.create_task(read())
        try:
            while True:
                await context.write(await answers.get())
        finally:
            reader.cancel()

    async def stats(request: bytes, context: Any) -> bytes:
        return json.dumps(counts).encode()

    tasks = [loop.create_task(store_acks()), loop.create_task(from_peers())]
    server = await floor._serve(
        spec["ports"]["C"][node],
        {
            "Ingest": grpc.stream_stream_rpc_method_handler(ingest),
            "Stats": grpc.unary_unary_rpc_method_handler(stats),
        },
    )
    floor._say("ready")
    try:
        await floor._until_terminated(server)
    finally:
        for task in tasks:
            task.cancel()


def signed_vertices(count: int) -> list[bytes]:
    """``count`` distinct client-signed vertices, as cluster_load's (1 KB payload, 2 parents)."""
    from cretoai.crypto import get_backend
    from cretoai.crypto.keys import NodeKey
    from cretoai.vertex import make_vertex

    backend = get_backend("auto")
    keys = [
        NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<bench>"))
        for _ in range(NODES)
    ]
    now = int(time.time() * 1000)
    return [
        make_vertex(
            keys[i % NODES], os.urandom(PAYLOAD_BYTES), [os.urandom(32) for _ in range(2)], now
        ).SerializeToString()
        for i in range(count)
    ]


def percentiles(latencies_ms: list[float]) -> dict[str, float | int | None]:
    """Nearest-rank percentiles (pure: unit-tested)."""
    if not latencies_ms:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies_ms)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q) - 1))], 2)

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p90_ms": rank(0.90),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


async def load_main(spec: dict[str, Any]) -> None:
    """Send at ``rate`` on an open-loop schedule; report each measured vertex's latency."""
    rate, warmup, seconds = spec["rate"], spec["warmup"], spec["seconds"]
    count = int(rate * (warmup + seconds))
    vertices = signed_vertices(count)
    entries = list(range(NODES)) if spec["entry"] == "all" else [PRIMARY]
    due: dict[bytes, float] = {}
    answered: dict[bytes, float] = {}
    calls: list[Any] = []
    for node in entries:
        channel = floor._channel(spec["ports"]["G"][node], public=True)
        calls.append(channel.stream_stream(floor._method("Submit"))(wait_for_ready=True))

    all_answered = asyncio.Event()

    async def answers(call: Any) -> None:
        async for request_ids in call:
            now = time.perf_counter()
            for at in range(0, len(request_ids), ID_BYTES):
                answered[request_ids[at : at + ID_BYTES]] = now
            if len(answered) == count:
                all_answered.set()

    readers = [asyncio.create_task(answers(call)) for call in calls]
    floor._say("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # go
    start = time.perf_counter() + 0.1
    floor._say(json.dumps({"window_starts_in_s": round(start + warmup - time.perf_counter(), 3)}))
    for i, vertex in enumerate(vertices):
        at = start + i / rate
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        request_id = i.to_bytes(ID_BYTES, "big")
        due[request_id] = at
        await calls[i % len(calls)].write(encode_submission([(request_id, vertex)]))
    with contextlib.suppress(TimeoutError):  # the last answers, for at most 5 s
        await asyncio.wait_for(all_answered.wait(), 5.0)
    for reader in readers:
        reader.cancel()
    measured = [rid for rid, at in due.items() if at >= start + warmup]
    latencies = [1000 * (answered[rid] - due[rid]) for rid in measured if rid in answered]
    floor._say(json.dumps({
        "sent": len(due),
        "measured": len(measured),
        "unanswered_in_window": sum(rid not in answered for rid in measured),
        "latency": percentiles(latencies),
    }))  # fmt: skip


async def saturate_main(spec: dict[str, Any]) -> None:
    """Closed loop: ``window`` messages of ``client_batch`` vertices in flight at every
    gateway; a message's credit returns once each of its vertices is answered."""
    batch, window, warmup, seconds = (
        spec["client_batch"],
        spec["window"],
        spec["warmup"],
        spec["seconds"],
    )
    vertices = signed_vertices(floor.DISTINCT)
    entries = list(range(NODES)) if spec["entry"] == "all" else [PRIMARY]
    answered_at: list[float] = []
    message_latencies: list[tuple[float, float]] = []  # (sent, fully answered)
    stop = asyncio.Event()
    serial = iter(range(1, 1 << 40))

    async def drive(node: int) -> None:
        channel = floor._channel(spec["ports"]["G"][node], public=True)
        call: Any = channel.stream_stream(floor._method("Submit"))(wait_for_ready=True)
        credit = asyncio.Semaphore(window)
        remaining: dict[int, int] = {}
        sent: dict[int, float] = {}

        async def answers() -> None:
            async for request_ids in call:
                now = time.perf_counter()
                for at in range(0, len(request_ids), ID_BYTES):
                    message = int.from_bytes(request_ids[at : at + ID_BYTES - 2], "big")
                    answered_at.append(now)
                    remaining[message] -= 1
                    if not remaining[message]:
                        del remaining[message]
                        message_latencies.append((sent.pop(message), now))
                        credit.release()

        reader = asyncio.create_task(answers())
        i = node * batch
        while not stop.is_set():
            await credit.acquire()
            message = next(serial)
            remaining[message], sent[message] = batch, time.perf_counter()
            chunk = [
                ((message << 16 | j).to_bytes(ID_BYTES, "big"), vertices[(i + j) % len(vertices)])
                for j in range(batch)
            ]
            i += batch
            await call.write(encode_submission(chunk))
        reader.cancel()

    floor._say("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # go
    start = time.perf_counter()
    floor._say(json.dumps({"window_starts_in_s": warmup}))
    drivers = [asyncio.create_task(drive(n)) for n in entries]
    await asyncio.sleep(warmup + seconds)  # the load's own schedule, not a wait for an event
    stop.set()
    for task in drivers:
        task.cancel()
    begin, end = start + warmup, start + warmup + seconds
    in_window = sum(begin <= t < end for t in answered_at)
    floor._say(json.dumps({
        "answered_in_window": in_window,
        "throughput_per_s": round(in_window / seconds, 1),
        "message_latency": percentiles(
            [1000 * (done - at) for at, done in message_latencies if begin <= done < end]
        ),
    }))  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "latency_floor",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": floor.machine(),
        "parameters": {
            "nodes": NODES,
            "rate_per_s": args.rate,
            "warmup_s": args.warmup,
            "window_s": args.seconds,
            "entry": args.entry,
            "persist_before_commit": not args.no_persist,
            "max_inflight_batches": args.max_inflight,
            "batch_max_vertices": args.batch_max,
            "client_batch": args.client_batch,
            "internal_tls": args.tls,
            "execute_write": args.execute_write,
            "mark_sync": args.mark_sync,
            "messages_in_flight_per_gateway": args.window or None,
            "vertex": f"{PAYLOAD_BYTES} B payload, 2 parents, ML-DSA-87 (about 8.3 KB)",
        },
    }
    saturate = args.window > 0
    if saturate:
        from bench import verify_bound

        result["verify_bound"] = verify_bound.measure(args.bound_seconds, nodes=NODES)
    with tempfile.TemporaryDirectory(prefix="cretoai-latency-floor-") as tmp:
        spec = {
            "dir": tmp,
            "verify_threads": 1,
            "ports": floor.node_ports(),
            "seeds": [os.urandom(32).hex() for _ in range(NODES)],
            "persist": not args.no_persist,
            "rate": args.rate,
            "warmup": args.warmup,
            "seconds": args.seconds,
            "entry": args.entry,
            "max_inflight": args.max_inflight,
            "batch_max": args.batch_max,
            "client_batch": args.client_batch,
            "window": args.window,
            "execute_write": args.execute_write,
            "mark_sync": args.mark_sync,
        }
        if args.tls:
            from cretoai.tls import generate_node_tls

            spec["tls"] = [str(p) for p in generate_node_tls(Path(tmp) / "tls", "floor")]
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)  # it holds the stand-ins' signing seeds
        processes: list[floor.Process] = []
        try:
            floor.start_nodes(spec_path, processes, module="bench.latency_floor")
            load = floor.Process("L", 0, spec_path, module="bench.latency_floor")
            processes.append(load)
            load.expect("ready")
            load.tell()  # go
            assert load.popen.stdout is not None
            starts_in = json.loads(load.popen.stdout.readline())["window_starts_in_s"]
            time.sleep(max(0.0, starts_in))  # to the window's start: the load's own schedule
            before = {f"{p.role}{p.node}": floor.cpu_seconds(p.popen.pid) for p in processes}
            busy_before, t0 = floor.machine_busy_seconds(), time.perf_counter()
            time.sleep(args.seconds)
            after = {f"{p.role}{p.node}": floor.cpu_seconds(p.popen.pid) for p in processes}
            busy, window = floor.machine_busy_seconds() - busy_before, time.perf_counter() - t0
            result["load"] = json.loads(load.popen.stdout.readline())
            result["consensus_counts"] = floor.stats(spec)  # committed, bad signatures
        finally:
            for p in reversed(processes):
                p.stop()
    by_role: dict[str, float] = {}
    for name, cpu in after.items():
        role = floor.ROLE_NAMES[name[0]]
        by_role[role] = by_role.get(role, 0.0) + (cpu - before[name]) / window
    nodes_cores = sum(v for k, v in by_role.items() if k != "load")
    per_s = result["load"]["throughput_per_s"] if saturate else args.rate
    result["cpu"] = {
        "cores_by_role": {k: round(v, 3) for k, v in sorted(by_role.items())},
        "cores_per_node": round(nodes_cores / NODES, 3),
        "cluster_ms_per_vertex": round(1000 * nodes_cores / per_s, 2) if per_s else None,
        "cluster_ms_per_vertex_by_role": {
            k: round(1000 * v / per_s, 3) for k, v in sorted(by_role.items()) if per_s
        },
        "machine_busy_cores": round(busy / window, 3),
    }
    if saturate:
        bound = result["verify_bound"]["vertices_per_s"]
        share = round(per_s / bound, 3) if bound else None
        result["targets"] = {"share_of_verify_bound": share, "share_ge_40_percent": (
            None if share is None else share >= 0.40)}  # fmt: skip
        result["targets"]["share_of_verify_bound_in_run"] = share_in_run(
            result["consensus_counts"], result["cpu"]["cluster_ms_per_vertex"]
        )
        result["total_s"] = round(time.perf_counter() - started, 1)
        return result
    latency = result["load"]["latency"]
    result["targets"] = {
        "p50_le_25_ms": None if latency["p50_ms"] is None else latency["p50_ms"] <= 25,
        "p99_le_50_ms": None if latency["p99_ms"] is None else latency["p99_ms"] <= 50,
        "p99_le_100_ms": None if latency["p99_ms"] is None else latency["p99_ms"] <= 100,
    }
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=10.0, help="vertices per second (10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="before the window (3)")
    parser.add_argument("--entry", choices=("all", "primary"), default="all",
                        help="gateways to send to (all: round-robin, as cluster_load)")  # fmt: skip
    parser.add_argument("--no-persist", action="store_true",
                        help="no synced write before the COMMIT")  # fmt: skip
    parser.add_argument("--max-inflight", type=int, default=1,
                        help="the primary's uncommitted batches (1, as the node)")  # fmt: skip
    parser.add_argument("--batch-max", type=int, default=256,
                        help="vertices per batch at most (256, as the node)")  # fmt: skip
    parser.add_argument("--client-batch", type=int, default=1,
                        help="vertices per client message (1)")  # fmt: skip
    parser.add_argument("--window", type=int, default=0,
                        help="saturate instead: a closed loop with this many messages in "
                        "flight per gateway (0: the open loop at --rate)")  # fmt: skip
    parser.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS on the internal gRPC hops, as the node's services",
    )
    parser.add_argument("--execute-write", action="store_true",
                        help="after the commit, a small synced write of the executed batch "
                        "before the answer, as the node's execution")  # fmt: skip
    parser.add_argument("--mark-sync", action="store_true",
                        help="before each signed message is sent, the signing mark "
                        "fdatasynced, as the node's consensus")  # fmt: skip
    parser.add_argument("--bound-seconds", type=float, default=3.0,
                        help="with --window: the verify bound's measurement (3)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--role", choices=[*floor.ROLES, "L"], help=argparse.SUPPRESS)
    parser.add_argument("--node", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        spec = json.loads(args.spec.read_text())
        floor.use_internal_tls(spec)
        mains = {
            "S": floor.storage_main,
            "T": floor.transport_main,
            "C": consensus_main,
            "G": floor.gateway_main,
        }
        with contextlib.suppress(KeyboardInterrupt):
            if args.role == "L":
                asyncio.run(saturate_main(spec) if spec["window"] else load_main(spec))
            else:
                asyncio.run(mains[args.role](spec, args.node))
        return 0
    if not (0.5 <= args.rate <= 400 and 1 <= args.seconds <= 300 and 0 <= args.warmup <= 60
            and 1 <= args.max_inflight <= 16 and 1 <= args.batch_max <= 1024
            and 1 <= args.client_batch <= 512 and 0 <= args.window <= 64
            and 0.6 <= args.bound_seconds <= 60):  # fmt: skip
        parser.error("bounds: --rate [0.5, 400], --seconds [1, 300], --warmup [0, 60], "
                     "--max-inflight [1, 16], --batch-max [1, 1024], --client-batch [1, 512], "
                     "--window [0, 64], --bound-seconds [0.6, 60]")  # fmt: skip
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    shown = ("verify_bound", "load", "cpu", "targets")[0 if args.window else 1 :]
    print(json.dumps({k: result[k] for k in shown if k in result}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
