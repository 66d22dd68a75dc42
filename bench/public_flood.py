"""A hostile client floods a gateway's public gRPC API: what it makes the gateway hold.

    .venv/bin/python -m bench.public_flood [--connections 8,32] [--calls 100]
                                           [--message-bytes 4000000] [--set SECTION.FIELD=VALUE]

What it does:

* **node** — a one-node cluster (``init_cluster`` + ``Supervisor``, as ``cretoai-node
  cluster up`` does) on free loopback ports, default settings (``--set`` overrides one,
  e.g. ``--set gateway.grpc_max_concurrent_rpcs=64``).
* **flood** — per step, ``--connections`` gRPC channels (one HTTP/2 connection each), each
  sending ``--calls`` concurrent ``SubmitVertices`` calls of a ``--message-bytes`` request
  at once, with no credentials: payloads over ``gateway.max_payload_bytes``, so each is
  read, parsed and refused per vertex, as an anonymous client can. Bounded: every call
  has a 60 s deadline.
* **subscribers** — then (``--subscribers N``, 0: skip) ``--history-batches`` batches of
  5 x 200-KB vertices are finalized, and the client opens N WebSocket subscriptions from
  seq 1 (a catch-up from storage each) that never read, holds them ``--hold`` seconds,
  and closes them. ``--subscriber-sources K`` spreads them over K loopback addresses
  (127.0.0.1 on; default 25, so that ``gateway.max_streams_per_client`` (4) does not
  stop 100 subscribers before ``gateway.max_streams`` does).
* **readers** — then (``--readers N``, 0: skip; after the history above) N concurrent
  ``GET /v1/finalized?from_seq=1`` (a page of up to 4 MiB each) whose answers are read
  only after ``--hold`` seconds, then 10 x N concurrent ``GET /v1/vertices/{hash}`` of a
  200-KB vertex, read the same way.
* **idle connections** — then (``--idle-connections N``, 0: skip) N TCP connections to
  the HTTP port, opened one after the other, each sending half a request head and then
  nothing (slowloris); how each ends (429 at once beyond ``gateway.max_connections``,
  closed at once unanswered in a flood of refusals, closed by the gateway after being
  held ``gateway.idle_timeout_ms``, or still open after ``--hold`` + that timeout (at
  most 60 s) + 5 s), the gateway's open file descriptors once all are open, and
  whether another client is served while they are held. ``--idle-sources K`` spreads
  them over K loopback addresses (127.0.0.1 on), as K clients.
* **measured** — the gateway process's peak RSS (``VmHWM``) over each step, beside its RSS
  before; the calls' outcomes (OK, RESOURCE_EXHAUSTED, ...) or subscriptions (open,
  refused with 429); then that a well-formed submission still gets its answer and the
  gateway is ready.

A bounded gateway's peak stays flat as the flood grows (more connections, more
subscribers); an unbounded one grows with it. Writes ``bench/results/public_flood.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench.cluster_load import Cluster, git_revision, machine, parse_overrides
from cretoai.v1 import gateway_pb2, gateway_pb2_grpc, vertex_pb2

RESULTS = Path(__file__).parent / "results"
DEADLINE_S = 60.0


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: ``5 > clear_refs``), so that a
    step's peak is its own; False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def flood_request(message_bytes: int, payload_bytes: int) -> gateway_pb2.GatewaySubmitBatchRequest:
    """About ``message_bytes`` of vertices whose payloads are each over the payload limit."""
    count = max(1, message_bytes // payload_bytes)
    return gateway_pb2.GatewaySubmitBatchRequest(
        vertices=[vertex_pb2.Vertex(payload=os.urandom(payload_bytes)) for _ in range(count)]
    )


async def _call(stub: gateway_pb2_grpc.GatewayStub, request: Any) -> str:
    try:
        await stub.SubmitVertices(request, timeout=DEADLINE_S)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)


async def flood(target: str, connections: int, calls: int, request: Any) -> dict[str, Any]:
    channels = [
        grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", 2 * request.ByteSize())]
        )
        for _ in range(connections)
    ]
    try:
        stubs = [gateway_pb2_grpc.GatewayStub(channel) for channel in channels]
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *[_call(stub, request) for stub in stubs for _ in range(calls)]
        )
        return {"seconds": round(time.monotonic() - started, 1), "outcomes": Counter(outcomes)}
    finally:
        for channel in channels:
            await channel.close()


async def still_serves(target: str, http: str) -> dict[str, Any]:
    """After the flood: a small submission is answered, and /readyz says ready."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        reply = await stub.SubmitVertex(
            gateway_pb2.GatewaySubmitRequest(vertex=vertex_pb2.Vertex(payload=b"after")),
            timeout=10,
        )
    async with aiohttp.ClientSession() as session, session.get(f"{http}/readyz") as response:
        ready = response.status
    return {"submit_status": int(reply.status), "readyz": ready}


async def fill_history(http: str, batches: int) -> int:
    """``batches`` finalized batches of 5 x 200-KB node-signed vertices; the last seq."""
    async with aiohttp.ClientSession() as session:
        for _ in range(batches):
            body = {
                "vertices": [
                    {"payload": base64.b64encode(os.urandom(200_000)).decode()} for _ in range(5)
                ]
            }
            url = f"{http}/v1/vertices:batch?wait=true"
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    raise RuntimeError(
                        f"filling history: {response.status} {await response.text()}"
                    )
        async with session.get(f"{http}/v1/status") as response:
            return int((await response.json())["last_executed_seq"])


async def subscribe(http: str, count: int, hold_s: float, sources: int = 1) -> dict[str, Any]:
    """``count`` WebSocket subscriptions from seq 1 that never read, held ``hold_s``, from
    ``sources`` loopback addresses (127.0.0.1 on) in turn."""
    url = http.replace("http://", "ws://") + "/v1/stream?from_seq=1"
    outcomes: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{1 + i}", 0))
                )
            )
            for i in range(min(sources, count))
        ]
        sockets = []
        try:
            for i in range(count):
                try:
                    ws = await sessions[i % len(sessions)].ws_connect(url, max_msg_size=0)
                    sockets.append(ws)
                    outcomes["open"] += 1
                except aiohttp.WSServerHandshakeError as exc:
                    outcomes[f"refused {exc.status}"] += 1
            await asyncio.sleep(hold_s)  # the gateway fills what it holds for them
        finally:
            for ws in sockets:
                await ws.close()
    return {"outcomes": outcomes}


async def read_slowly(urls: list[str], hold_s: float) -> dict[str, Any]:
    """GET every URL at once; read each answer only after ``hold_s`` (it waits in buffers)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(url: str) -> str:
            try:
                async with session.get(url) as response:
                    await asyncio.sleep(hold_s)
                    await response.read()
                    return str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        return {"outcomes": Counter(await asyncio.gather(*[one(u) for u in urls]))}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _half_head(
    host: str, port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")  # and never the rest
    await writer.drain()
    return reader, writer


async def _ending(reader: asyncio.StreamReader, idle_s: float, limit_s: float) -> tuple[str, float]:
    """How one idle connection ended, and how long after it opened (``idle_s``: the
    gateway's idle timeout)."""
    opened = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), limit_s)
    except TimeoutError:
        return "still open", limit_s
    except ConnectionError:
        data = b""
    held = time.monotonic() - opened
    if data.startswith(b"HTTP/1.1 429"):
        return "refused 429", held
    return ("closed at once" if held < 0.9 * idle_s else "closed after being held"), held


#: Where a client that is not flooding connects from while the flood is held.
BYSTANDER = "127.0.1.1"


async def hold_idle(
    http: str, pid: int, count: int, sources: int, idle_s: float, limit_s: float
) -> dict[str, Any]:
    """``count`` slowloris connections from ``sources`` loopback addresses (127.0.0.1 and
    on): their outcomes, the gateway's fds once all are open, and whether another
    client (BYSTANDER) is served while they are held."""
    host, _, port = http.removeprefix("http://").rpartition(":")
    fds_before = open_fds(pid)
    started = time.monotonic()
    writers = []
    endings = []
    try:
        for i in range(count):
            reader, writer = await _half_head(host, int(port), f"127.0.0.{1 + i % sources}")
            writers.append(writer)
            endings.append(asyncio.ensure_future(_ending(reader, idle_s, limit_s)))
        fds_held = open_fds(pid)
        try:
            connector = aiohttp.TCPConnector(local_addr=(BYSTANDER, 0))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"{http}/readyz") as r,
            ):
                while_held: int | str = r.status
        except aiohttp.ClientError as exc:
            while_held = type(exc).__name__
        ended = await asyncio.gather(*endings)
    finally:
        for writer in writers:
            writer.close()
    closed_at = sorted(t for outcome, t in ended if outcome == "closed after being held")
    return {
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": Counter(outcome for outcome, _ in ended),
        "gateway_fds_before": fds_before,
        "gateway_fds_held": fds_held,
        "readyz_while_held": while_held,
        "held_until_closed_s": {
            "first": round(closed_at[0], 1) if closed_at else None,
            "last": round(closed_at[-1], 1) if closed_at else None,
        },
    }


async def a_vertex_hash(http: str, seq: int) -> str:
    async with aiohttp.ClientSession() as session:
        url = f"{http}/v1/finalized?from_seq={seq}&limit=1"
        async with session.get(url) as response:
            page = await response.json()
    return str(page["batches"][0]["vertices"][0]["hash"])


async def measured(
    pid: int,
    work: Awaitable[dict[str, Any]],
    after: Callable[[], Awaitable[dict[str, Any]]],
    **fields: Any,
) -> dict[str, Any]:
    """One step: ``work`` against the gateway process ``pid``, with its RSS before, its
    peak (VmHWM, reset first where allowed) and after, then ``after`` (does it still
    serve?). Printed as a JSON line, and returned."""
    peak_reset = reset_peak(pid)
    before = status_kb(pid, "VmRSS")
    previous_peak = status_kb(pid, "VmHWM")
    result = await work
    peak = status_kb(pid, "VmHWM")
    step = {
        **fields,
        "rss_before_mb": round(before / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "peak_reset": peak_reset,
        "peak_grew": peak > previous_peak,
        "rss_after_mb": round(status_kb(pid, "VmRSS") / 1024, 1),
        **result,
        "after": await after(),
    }
    print(json.dumps(step), flush=True)
    return step


async def run(args: argparse.Namespace) -> dict[str, Any]:
    extra = parse_overrides(args.set)
    steps = []
    with tempfile.TemporaryDirectory(prefix="cretoai-public-flood-") as tmp:
        async with Cluster(Path(tmp), 1, extra=extra) as cluster:
            cfg = cluster.configs[0]
            target, http = cfg.gateway.grpc, cluster.gateway(0)
            pid = cluster.pids()[cfg.node.name]["gateway"]
            request = flood_request(args.message_bytes, cfg.gateway.max_payload_bytes + 1024)

            def serves() -> Awaitable[dict[str, Any]]:
                return still_serves(target, http)

            for connections in args.connections:
                step = await measured(
                    pid,
                    flood(target, connections, args.calls, request),
                    serves,
                    connections=connections,
                    calls=connections * args.calls,
                    message_bytes=request.ByteSize(),
                )
                steps.append(step)
            last_seq = 0
            if args.subscribers or args.readers:
                last_seq = await fill_history(http, args.history_batches)
            if args.subscribers:
                step = await measured(
                    pid,
                    subscribe(http, args.subscribers, args.hold, args.subscriber_sources),
                    serves,
                    subscribers=args.subscribers,
                    subscriber_sources=args.subscriber_sources,
                    history_seq=last_seq,
                )
                steps.append(step)
            if args.readers:
                vertex = await a_vertex_hash(http, last_seq)
                for kind, urls in (
                    ("pages", [f"{http}/v1/finalized?from_seq=1&limit=100"] * args.readers),
                    ("vertices", [f"{http}/v1/vertices/{vertex}"] * (10 * args.readers)),
                ):
                    step = await measured(
                        pid,
                        read_slowly(urls, args.hold),
                        serves,
                        readers=len(urls),
                        reads=kind,
                    )
                    steps.append(step)
            if args.idle_connections:
                idle_s = getattr(cfg.gateway, "idle_timeout_ms", 3_630_000) / 1000
                step = await measured(
                    pid,
                    hold_idle(
                        http,
                        pid,
                        args.idle_connections,
                        args.idle_sources,
                        idle_s,
                        args.hold + min(idle_s, 60) + 5,
                    ),
                    serves,
                    idle_connections=args.idle_connections,
                    idle_sources=args.idle_sources,
                )
                steps.append(step)
            settings = {
                # None: a revision without the bound (to compare with one)
                "grpc_max_concurrent_rpcs": getattr(cfg.gateway, "grpc_max_concurrent_rpcs", None),
                "max_body_bytes": cfg.gateway.max_body_bytes,
                "max_streams": getattr(cfg.gateway, "max_streams", None),
                "max_answer_bytes_in_progress": getattr(
                    cfg.gateway, "max_answer_bytes_in_progress", None
                ),
                "max_connections": getattr(cfg.gateway, "max_connections", None),
                "idle_timeout_ms": getattr(cfg.gateway, "idle_timeout_ms", None),
                "overrides": extra,
            }
    return {
        "benchmark": "public_flood",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "revision": git_revision(),
        "settings": settings,
        "steps": steps,
        "note": "peak_rss_mb is the gateway process's VmHWM after the step: the step's own "
        "peak where peak_reset (VmHWM reset before it), else the peak since start "
        "(peak_grew then says whether this step raised it)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--connections",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[8, 32],
        help="flood steps: connections per step, comma-separated (default 8,32)",
    )
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls per connection")
    parser.add_argument("--message-bytes", type=int, default=4_000_000)
    parser.add_argument(
        "--subscribers", type=int, default=100, help="WebSocket subscribers step (0: skip)"
    )
    parser.add_argument(
        "--subscriber-sources",
        type=int,
        default=25,
        help="loopback addresses the subscribers come from, 127.0.0.1 on (clients)",
    )
    parser.add_argument("--readers", type=int, default=100, help="slow page readers step (0: skip)")
    parser.add_argument(
        "--idle-connections", type=int, default=2000, help="slowloris step (0: skip)"
    )
    parser.add_argument(
        "--idle-sources",
        type=int,
        default=1,
        help="loopback addresses the idle connections come from, 127.0.0.1 on (clients)",
    )
    parser.add_argument("--history-batches", type=int, default=150)
    parser.add_argument("--hold", type=float, default=10.0, help="s the subscribers stay")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--output", type=Path, default=RESULTS / "public_flood.json")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.calls > 1000 or min(args.connections) < 1:
        parser.error("--calls must be 1..1000 and --connections positive")
    if not 0 <= args.subscribers <= 1000 or not 1 <= args.history_batches <= 1000:
        parser.error("--subscribers must be 0..1000 and --history-batches 1..1000")
    if not 0 <= args.readers <= 200:
        parser.error("--readers must be 0..200")
    if not 0 <= args.idle_connections <= 10_000:
        parser.error("--idle-connections must be 0..10000")
    if not 1 <= args.idle_sources <= 254 or not 1 <= args.subscriber_sources <= 254:
        parser.error("--idle-sources and --subscriber-sources must be 1..254")
    if not 0 <= args.hold <= 60:
        parser.error("--hold must be 0..60 s")
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
