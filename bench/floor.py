"""The architecture's floor at saturation: what a vertex costs in the node's mandated shape
before any consensus logic, measured in real processes.

    .venv/bin/python -m bench.floor [--seconds 10] [--windows 3] [--batch 64] [--window 6]

Four nodes of four processes each, on loopback, built from the same libraries as the node
(grpc.aio, aioquic, rocksdict, ``cryptography``'s ML-DSA-87) but doing only what *any*
design of this architecture must do with a client's vertex, and nothing else:

* **gateway** (``G``): takes batches of vertices from a client's gRPC stream and passes
  their bytes on to its consensus process over a gRPC stream, unparsed;
* **consensus** (``C``): parses a batch (protobuf), verifies every vertex's ML-DSA-87
  signature once (``--verify-threads`` threads, 2 as the consensus verifier, a job per
  thread), hands the batch's bytes to its transport (entry node only) and writes them to
  its storage; a batch from a peer is parsed, verified and stored the same way;
* **transport** (``T``): sends the bytes it is handed to the three other transports over
  QUIC (aioquic's asyncio API, one stream per peer, 15000-byte datagrams as the node's
  loopback default), and hands what it receives to its consensus process;
* **storage** (``S``): appends each batch's bytes to RocksDB as one put (the storage
  service's options) and syncs the WAL once per group of writes.

So each vertex crosses every process boundary it must: client → gateway → consensus →
transport → 3 peers' transports → their consensus → every storage, and is verified once
on every node. Left out, because the floor is a lower bound: PBFT's messages and their
signatures, certificates, hashing, deduplication, parent lookups, answers to the client,
TLS on the internal gRPC hops, metrics and tracing. Whatever a real node costs per vertex
above this floor is the cost of those, and of how it is built.

A load process (``L``) keeps ``--window`` batches of ``--batch`` pre-signed vertices in
flight at every gateway, enough to keep both cores busy. A batch is acknowledged once every
node stored it (each peer's consensus sends the entry node a 9-byte "stored" message back
through the transports), so nothing queues without bound and the windows see a steady
state. After a warm-up, ``--windows`` windows of ``--seconds`` each: the
vertices stored on all four nodes per second (stored counts / 4), the CPU of every process
(``/proc/<pid>/stat``) per stored vertex by role, and the machine's busy cores. The
ML-DSA-87 verify bound (``bench.verify_bound``) is measured in the same run, before the
load; the floor's throughput over it is the best share of the bound this architecture
reaches on this machine, to set beside ``bench.cluster_load``'s (the issue's target:
≥ 40 %). Writes ``bench/results/floor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "floor.json"
NODES = 4
ROLES = ("S", "T", "C", "G")
ROLE_NAMES = {"G": "gateway", "C": "consensus", "T": "transport", "S": "storage", "L": "load"}
SERVICE = "floor"
DATAGRAM_BYTES = 15000  # the node's loopback default (transport.loopback_datagram_bytes)
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # as services/transport/endpoint.py
FLOW_WINDOW = 32 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
#: Distinct pre-signed vertices the load cycles through (verification costs the same).
DISTINCT = 256
PAYLOAD_BYTES = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
FRAME = struct.Struct(">I")
#: Consensus stand-ins' messages through the transport: a batch, a peer stored one.
BATCH, STORED = b"B", b"S"
#: A message handed to the transport stand-in that starts with this and a peer's index
#: goes to that peer alone (``bench.latency_floor``); any other goes to every peer.
TO_ONE = b"@"


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


#: The internal hops' mutual TLS (``--tls``: one CA and certificate for every stand-in, as
#: a node's services share theirs); None: plaintext. Set by :func:`use_internal_tls`.
_internal_tls: Any = None


def use_internal_tls(spec: dict[str, Any]) -> None:
    """Secure every internal hop (not the load's, as the node's clients) when ``spec`` says."""
    global _internal_tls
    paths = spec.get("tls")
    if paths and _internal_tls is None:
        from cretoai.tls import load_internal_tls

        _internal_tls = load_internal_tls(*(Path(p) for p in paths))


async def _serve(port: int, handlers: dict[str, Any], *, public: bool = False) -> grpc.aio.Server:
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    if _internal_tls is not None and not public:
        server.add_secure_port(f"127.0.0.1:{port}", _internal_tls.server_credentials())
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def _until_terminated(server: grpc.aio.Server) -> None:
    """Serve until SIGTERM, then stop the server cleanly."""
    terminated = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
    await terminated.wait()
    await server.stop(None)


def _channel(port: int, *, public: bool = False) -> grpc.aio.Channel:
    target = f"127.0.0.1:{port}"
    if _internal_tls is not None and not public:
        return grpc.aio.secure_channel(
            target,
            _internal_tls.channel_credentials(),
            options=GRPC_OPTIONS + _internal_tls.channel_options(),
        )
    return grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)


# -- storage --------------------------------------------------------------------------------


async def storage_main(spec: dict[str, Any], node: int) -> None:
    from rocksdict import WriteBatch

    from bench.storage_commit import RawDatabase
    from services.storage import keys

    db = RawDatabase(Path(spec["dir"]) / f"db{node}")
    cf = db.handles[keys.COLUMN_FAMILIES[0]]
    sequence = 0

    async def store(requests: AsyncIterator[bytes], context: Any) -> None:
        nonlocal sequence
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                queue.put_nowait(request)
            queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                first = await queue.get()
                if first is None:
                    return
                group = [first]
                while not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        break
                    group.append(item)
                batch = WriteBatch(raw_mode=True)
                for value in group:
                    sequence += 1
                    batch.put(sequence.to_bytes(8, "big"), value, cf)
                db.commit(batch)  # one write, one WAL sync for the group
                for _ in group:
                    await context.write(b"")
        finally:
            reader.cancel()

    server = await _serve(
        spec["ports"]["S"][node], {"Store": grpc.stream_stream_rpc_method_handler(store)}
    )
    _say("ready")
    try:
        await _until_terminated(server)
    finally:
        db.db.close()


# -- transport ------------------------------------------------------------------------------


def _quic_config(identity: Any, *, is_client: bool) -> Any:
    """The node transport's QUIC configuration (its TLS identity, flow windows)."""
    from services.transport.tls import quic_configuration

    return quic_configuration(
        is_client=is_client,
        identity=None if is_client else identity,
        idle_timeout=120.0,
        max_datagram_size=DATAGRAM_BYTES,
        flow_window=FLOW_WINDOW,
    )


def _grow_buffers(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


async def transport_main(spec: dict[str, Any], node: int) -> None:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.server import serve

    from services.transport.tls import ephemeral_identity

    identity = ephemeral_identity()  # as the node's transport: a fresh Ed25519 certificate

    inbound: asyncio.Queue[bytes] = asyncio.Queue()
    outbound: dict[int, asyncio.StreamWriter] = {}

    async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
                inbound.put_nowait(await reader.readexactly(size))

    def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asyncio.get_running_loop().create_task(on_stream(reader, writer))

    server = await serve(
        "127.0.0.1",
        spec["ports"]["Q"][node],
        configuration=_quic_config(identity, is_client=False),
        stream_handler=stream_handler,
    )
    _grow_buffers(server._transport)

    async def exchange(requests: AsyncIterator[bytes], context: Any) -> None:
        async def send() -> None:
            async for data in requests:
                to: Sequence[asyncio.StreamWriter] = tuple(outbound.values())
                if data[:1] == TO_ONE:  # b"@" + the peer's index: to that peer alone
                    data, to = data[2:], (outbound[data[1]],)
                frame = FRAME.pack(len(data)) + data
                for writer in to:
                    writer.write(frame)

        sender = asyncio.create_task(send())
        try:
            while True:
                await context.write(await inbound.get())
        finally:
            sender.cancel()

    grpc_server = await _serve(
        spec["ports"]["T"][node], {"Exchange": grpc.stream_stream_rpc_method_handler(exchange)}
    )
    _say("listening")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # peers listen
    async with contextlib.AsyncExitStack() as stack:
        for peer in range(NODES):
            if peer == node:
                continue
            protocol = await stack.enter_async_context(
                connect(
                    "127.0.0.1",
                    spec["ports"]["Q"][peer],
                    configuration=_quic_config(identity, is_client=True),
                )
            )
            _grow_buffers(protocol._transport)
            _, writer = await protocol.create_stream()
            outbound[peer] = writer
        _say("ready")
        await _until_terminated(grpc_server)
    server.close()


# -- consensus ------------------------------------------------------------------------------


async def consensus_main(spec: dict[str, Any], node: int) -> None:
    from cretoai.crypto import get_backend
    from cretoai.v1 import vertex_pb2
    from cretoai.vertex import verify_vertex

    backend = get_backend("auto")
    threads = int(spec["verify_threads"])
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
    loop = asyncio.get_running_loop()
    counts = {"stored_vertices": 0, "entry_vertices": 0, "peer_vertices": 0, "bad": 0,
              "verify_thread_cpu_s": 0.0}  # fmt: skip

    def verify_each(vertices: Sequence[Any]) -> tuple[int, float]:
        """The failures, and this thread's CPU seconds for them."""
        cpu = time.thread_time()
        bad = sum(not verify_vertex(v, backend) for v in vertices)
        return bad, time.thread_time() - cpu

    async def verify(vertices: Sequence[Any]) -> None:
        step = -(-len(vertices) // threads)  # a job per thread, as the node's Verifier
        jobs = [vertices[i : i + step] for i in range(0, len(vertices), step)]
        done = await asyncio.gather(*(loop.run_in_executor(pool, verify_each, j) for j in jobs))
        counts["bad"] += sum(bad for bad, _ in done)
        counts["verify_thread_cpu_s"] += sum(cpu for _, cpu in done)

    store_channel = _channel(spec["ports"]["S"][node])
    transport_channel = _channel(spec["ports"]["T"][node])
    store_call: Any = store_channel.stream_stream(_method("Store"))(wait_for_ready=True)
    exchange: Any = transport_channel.stream_stream(_method("Exchange"))(wait_for_ready=True)
    running: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        running.add(task)
        task.add_done_callback(running.discard)

    stored: deque[tuple[asyncio.Future[None], int]] = deque()
    replicated: dict[bytes, tuple[asyncio.Future[None], list[int]]] = {}
    batch_ids = iter(range(1, 1 << 56))

    async def store_acks() -> None:
        async for _ in store_call:
            future, count = stored.popleft()
            counts["stored_vertices"] += count
            future.set_result(None)

    # grpc.aio takes one write at a time on a call
    store_lock, exchange_lock = asyncio.Lock(), asyncio.Lock()

    async def store(data: bytes, count: int) -> None:
        future = loop.create_future()
        async with store_lock:
            stored.append((future, count))
            await store_call.write(data)
        await future

    async def send(message: bytes) -> None:
        async with exchange_lock:
            await exchange.write(message)

    async def handle(data: bytes, *, entry: bool) -> None:
        batch = vertex_pb2.FinalizedBatch.FromString(data)
        await verify(batch.vertices)
        count = len(batch.vertices)
        counts["entry_vertices" if entry else "peer_vertices"] += count
        await store(data, count)

    async def handle_entry(data: bytes) -> None:
        """Verify, send to the peers, store; done once every peer stored it too."""
        ident = ((node << 56) | next(batch_ids)).to_bytes(8, "big")
        everywhere = loop.create_future()
        replicated[ident] = (everywhere, [NODES - 1])
        batch = vertex_pb2.FinalizedBatch.FromString(data)
        await verify(batch.vertices)
        counts["entry_vertices"] += len(batch.vertices)
        await send(BATCH + ident + data)
        await store(data, len(batch.vertices))
        await everywhere

    async def handle_peer(message: bytes) -> None:
        ident, data = message[1:9], message[9:]
        await handle(data, entry=False)
        await send(STORED + ident)  # to every peer; the entry node counts it

    def on_stored(ident: bytes) -> None:
        waiting = replicated.get(ident)
        if waiting is None:
            return  # another node's batch
        waiting[1][0] -= 1
        if waiting[1][0] == 0:
            del replicated[ident]
            waiting[0].set_result(None)

    async def from_peers() -> None:
        async for message in exchange:
            if message[:1] == BATCH:
                spawn(handle_peer(message))
            else:
                on_stored(message[1:9])

    async def ingest(requests: AsyncIterator[bytes], context: Any) -> None:
        done: asyncio.Queue[None] = asyncio.Queue()

        async def one(data: bytes) -> None:
            await handle_entry(data)
            done.put_nowait(None)

        async def read() -> None:
            async for data in requests:
                spawn(one(data))

        reader = asyncio.create_task(read())
        try:
            while True:
                await done.get()
                await context.write(b"")
        finally:
            reader.cancel()

    async def stats(request: bytes, context: Any) -> bytes:
        return json.dumps(counts).encode()

    tasks = [loop.create_task(store_acks()), loop.create_task(from_peers())]
    server = await _serve(
        spec["ports"]["C"][node],
        {
            "Ingest": grpc.stream_stream_rpc_method_handler(ingest),
            "Stats": grpc.unary_unary_rpc_method_handler(stats),
        },
    )
    _say("ready")
    try:
        await _until_terminated(server)
    finally:
        for task in tasks:
            task.cancel()


# -- gateway --------------------------------------------------------------------------------


async def gateway_main(spec: dict[str, Any], node: int) -> None:
    channel = _channel(spec["ports"]["C"][node])
    ingest: Any = channel.stream_stream(_method("Ingest"))

    async def submit(requests: AsyncIterator[bytes], context: Any) -> None:
        call = ingest(wait_for_ready=True)

        async def forward() -> None:
            async for data in requests:
                await call.write(data)

        forwarder = asyncio.create_task(forward())
        try:
            async for ack in call:
                await context.write(ack)
        finally:
            forwarder.cancel()

    server = await _serve(
        spec["ports"]["G"][node],
        {"Submit": grpc.stream_stream_rpc_method_handler(submit)},
        public=True,
    )
    _say("ready")
    await _until_terminated(server)


# -- load -----------------------------------------------------------------------------------


def signed_batches(batch: int) -> list[bytes]:
    """Serialized batches of ``batch`` distinct realistic vertices (as cluster_load's)."""
    from cretoai.crypto import get_backend
    from cretoai.crypto.keys import NodeKey
    from cretoai.v1 import vertex_pb2
    from cretoai.vertex import make_vertex

    backend = get_backend("auto")
    keys = [
        NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<bench>"))
        for _ in range(4)
    ]
    now = int(time.time() * 1000)
    vertices = [
        make_vertex(keys[i % 4], os.urandom(PAYLOAD_BYTES), [os.urandom(32) for _ in range(2)], now)
        for i in range(max(DISTINCT, batch))
    ]
    count = len(vertices) // batch
    return [
        vertex_pb2.FinalizedBatch(
            vertices=vertices[i * batch : (i + 1) * batch]
        ).SerializeToString()
        for i in range(count)
    ]


async def load_main(spec: dict[str, Any], batch: int, window: int) -> None:
    batches = signed_batches(batch)
    acked = [0]
    stop = asyncio.Event()

    async def drive(node: int) -> None:
        channel = _channel(spec["ports"]["G"][node], public=True)
        call: Any = channel.stream_stream(_method("Submit"))(wait_for_ready=True)
        credit = asyncio.Semaphore(window)

        async def acks() -> None:
            async for _ in call:
                acked[0] += 1
                credit.release()

        reader = asyncio.create_task(acks())
        i = node
        while not stop.is_set():
            await credit.acquire()
            await call.write(batches[i % len(batches)])
            i += 1
        reader.cancel()
        await channel.close()

    _say("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # go
    drivers = [asyncio.create_task(drive(n)) for n in range(NODES)]
    await loop.run_in_executor(None, sys.stdin.readline)  # stop
    stop.set()
    for task in drivers:
        task.cancel()
    _say(json.dumps({"acked_batches": acked[0]}))


# -- the driver -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Process:
    def __init__(
        self,
        role: str,
        node: int,
        spec_path: Path,
        extra: Sequence[str] = (),
        module: str = "bench.floor",
    ) -> None:
        self.role, self.node = role, node
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, "--role", role, "--node", str(node),
             "--spec", str(spec_path), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,  # an autogroup of its own, as each service has
        )  # fmt: skip

    def expect(self, word: str) -> None:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"{self.role}{self.node + 1} said {line!r}, not {word!r}")

    def tell(self, line: str = "") -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def node_ports() -> dict[str, list[int]]:
    """Free loopback ports by role for the stand-ins: gRPC (S, T, C, G) and QUIC (Q)."""
    names = ["S", "T", "Q", "C", "G"]
    ports = free_ports(len(names) * NODES)
    return {n: ports[i * NODES : (i + 1) * NODES] for i, n in enumerate(names)}


def start_nodes(spec_path: Path, processes: list[Process], module: str = "bench.floor") -> None:
    """Start every node's stand-ins, role by role (storage, transport, consensus,
    gateway), each role once the one before is ready; the transports dial each other once
    all listen. Each process goes into ``processes`` as it starts (for the caller to stop)."""
    for role in ROLES:
        started = [Process(role, n, spec_path, module=module) for n in range(NODES)]
        processes += started
        for p in started:
            p.expect("listening" if role == "T" else "ready")
        if role == "T":
            for p in started:
                p.tell()
            for p in started:
                p.expect("ready")


def stats(spec: dict[str, Any]) -> list[dict[str, int]]:
    use_internal_tls(spec)

    async def ask() -> list[dict[str, int]]:
        out = []
        for node in range(NODES):
            async with _channel(spec["ports"]["C"][node]) as channel:
                ask_stats: Any = channel.unary_unary(_method("Stats"))
                reply = await ask_stats(b"", timeout=10)
                out.append(json.loads(reply))
        return out

    return asyncio.run(ask())


def snapshot(processes: Sequence[Process], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "t": time.perf_counter(),
        "busy": machine_busy_seconds(),
        "cpu": {f"{p.role}{p.node}": cpu_seconds(p.popen.pid) for p in processes},
        "stats": stats(spec),
    }


def window_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One window's figures from two snapshots (pure: unit-tested)."""
    seconds = after["t"] - before["t"]
    stored = sum(a["stored_vertices"] - b["stored_vertices"]
                 for a, b in zip(after["stats"], before["stats"], strict=True))  # fmt: skip
    per_node = stored / NODES
    by_role: dict[str, float] = {}
    for name, cpu in after["cpu"].items():
        role = ROLE_NAMES[name[0]]
        by_role[role] = by_role.get(role, 0.0) + cpu - before["cpu"][name]
    nodes_cpu = sum(v for k, v in by_role.items() if k != "load")
    verify_cpu = sum(a["verify_thread_cpu_s"] - b["verify_thread_cpu_s"]
                     for a, b in zip(after["stats"], before["stats"], strict=True))  # fmt: skip
    return {
        "seconds": round(seconds, 3),
        "vertices_stored_per_node": per_node,
        "throughput": round(per_node / seconds, 1) if seconds > 0 else 0.0,
        "cpu_ms_per_vertex_cluster": round(1000 * nodes_cpu / per_node, 3) if per_node else None,
        "cpu_ms_per_vertex_by_role": {
            k: round(1000 * v / per_node, 3) if per_node else None
            for k, v in sorted(by_role.items())
        },
        #: the verifying threads' own CPU (ML-DSA-87 and the canonical bytes around it)
        "verify_ms_per_vertex_cluster": round(1000 * verify_cpu / per_node, 3)
        if per_node
        else None,
        "machine_busy_cores": round((after["busy"] - before["busy"]) / seconds, 3),
        "bad_signatures": sum(a["bad"] for a in after["stats"]),
    }


def summarise(windows: Sequence[dict[str, Any]], bound: dict[str, Any] | None) -> dict[str, Any]:
    """Medians over the windows and the share of the verify bound (pure: unit-tested)."""
    throughput = statistics.median(w["throughput"] for w in windows)
    per_vertex = statistics.median(
        w["cpu_ms_per_vertex_cluster"] for w in windows if w["cpu_ms_per_vertex_cluster"]
    )
    roles = sorted({r for w in windows for r in w["cpu_ms_per_vertex_by_role"]})
    bound_per_s = float(bound["vertices_per_s"]) if bound else 0.0
    share = round(throughput / bound_per_s, 3) if bound_per_s else None
    return {
        "throughput_median": throughput,
        "cpu_ms_per_vertex_cluster_median": per_vertex,
        "cpu_ms_per_vertex_by_role_median": {
            r: statistics.median(
                w["cpu_ms_per_vertex_by_role"][r]
                for w in windows
                if w["cpu_ms_per_vertex_by_role"].get(r) is not None
            )
            for r in roles
        },
        "verify_bound_vertices_per_s": bound_per_s or None,
        "share_of_verify_bound": share,
        "target_share": 0.40,
        "target_within_floor": None if share is None else share >= 0.40,
    }


def machine() -> dict[str, Any]:
    from bench import speed  # here: the role processes import this module too

    model = speed.cpu()["model"]
    import aioquic
    import cryptography
    import rocksdict  # noqa: F401

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "aioquic": aioquic.__version__,
        "cryptography": cryptography.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import verify_bound

    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "floor",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {
            "nodes": NODES,
            "batch_vertices": args.batch,
            "batches_in_flight_per_gateway": args.window,
            "warmup_s": args.warmup,
            "window_s": args.seconds,
            "windows": args.windows,
            "verify_threads_per_consensus": args.verify_threads,
            "datagram_bytes": DATAGRAM_BYTES,
            "vertex": f"{PAYLOAD_BYTES} B payload, 2 parents, ML-DSA-87 (about 8.3 KB)",
        },
    }
    result["verify_bound"] = verify_bound.measure(args.bound_seconds, nodes=NODES)
    with tempfile.TemporaryDirectory(prefix="cretoai-floor-") as tmp:
        directory = Path(tmp)
        spec = {"dir": tmp, "verify_threads": args.verify_threads, "ports": node_ports()}
        spec_path = directory / "spec.json"
        spec_path.write_text(json.dumps(spec))
        processes: list[Process] = []
        try:
            start_nodes(spec_path, processes)
            load = Process("L", 0, spec_path, ["--batch", str(args.batch),
                                               "--window", str(args.window)])  # fmt: skip
            load.expect("ready")
            measured = [*processes, load]
            load.tell()  # go
            time.sleep(args.warmup)  # a warm-up, not a wait for an event
            windows = []
            before = snapshot(measured, spec)
            for _ in range(args.windows):
                time.sleep(args.seconds)
                after = snapshot(measured, spec)
                windows.append(window_figures(before, after))
                before = after
            load.tell()  # stop
            assert load.popen.stdout is not None
            result["load"] = json.loads(load.popen.stdout.readline())
            processes.append(load)
        finally:
            for p in reversed(processes):
                p.stop()
    result["windows"] = windows
    result["summary"] = summarise(windows, result["verify_bound"])
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="one window (10)")
    parser.add_argument("--windows", type=int, default=3, help="measured windows (3)")
    parser.add_argument("--warmup", type=float, default=5.0, help="before the windows (5)")
    parser.add_argument("--batch", type=int, default=64, help="vertices per batch (64)")
    parser.add_argument("--window", type=int, default=6, help="batches in flight per gateway")
    parser.add_argument(
        "--verify-threads", type=int, default=2, help="per consensus stand-in (2, as the node)"
    )
    parser.add_argument("--bound-seconds", type=float, default=3.0, help="verify bound (3)")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--role", choices=[*ROLES, "L"], help=argparse.SUPPRESS)
    parser.add_argument("--node", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        spec = json.loads(args.spec.read_text())
        use_internal_tls(spec)
        mains = {"S": storage_main, "T": transport_main, "C": consensus_main, "G": gateway_main}
        with contextlib.suppress(KeyboardInterrupt):
            if args.role == "L":
                asyncio.run(load_main(spec, args.batch, args.window))
            else:
                asyncio.run(mains[args.role](spec, args.node))
        return 0
    if not (0.5 <= args.seconds <= 120 and 1 <= args.windows <= 20 and 1 <= args.batch <= 512
            and 1 <= args.window <= 64 and 0 <= args.warmup <= 60
            and 0.6 <= args.bound_seconds <= 60 and 1 <= args.verify_threads <= 8):  # fmt: skip
        parser.error("bounds: --seconds [0.5, 120], --windows [1, 20], --batch [1, 512], "
                     "--window [1, 64], --warmup [0, 60], --bound-seconds [0.6, 60], "
                     "--verify-threads [1, 8]")  # fmt: skip
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    print(json.dumps(s, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
