"""Transport benchmark: idle peer RTT and one-way messages/s over QUIC on loopback.

    .venv/bin/python -m bench.transport_throughput [--messages-300 N] [--messages-5k N]

Starts two real transport services as processes (``python -m services.transport``,
keys and configs in a temporary directory, loopback only), then:

* **RTT** — ``PingPeer`` on an idle connection, sequentially: the transport's
  own measurement (PING frame handed to QUIC → PONG processed) and, for
  reference, the round trip seen by the gRPC caller;
* **throughput** — one ExchangeBatches stream writes N envelopes (``--batch``
  per gRPC message) to the peer as fast as the transport accepts them; another
  on the peer reads them; messages/s = N / (time from the first write to the
  last message read), checked in order. The producer respects backpressure (it
  waits while more than 1024 messages are queued on either side), so the figure
  is a sustainable rate without drops. The one-envelope-per-message Exchange
  stream is measured too, for reference.

Every loop is bounded in count and in time. Writes
``bench/results/transport_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import speed
from cretoai.v1 import transport_pb2
from devkit.transport import TransportProcess, eventually, make_cluster, spawnable

RESULT = Path(__file__).resolve().parent / "results" / "transport_throughput.json"
TARGET_RTT_P99_MS = 2.0
TARGET_MSGS_5K = 4000.0
TIME_LIMIT_S = 60.0
#: The producer checks the sender's queue for the peer and the peer's inbound queue
#: every PACE_EVERY messages and waits while more than PACE_DEPTH wait in either
#: (each holds 4096 by default, then drops the oldest).
PACE_EVERY = 512
PACE_DEPTH = 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = speed.cpu()["model"] or platform.processor() or ""
    versions = {}
    for package in ("aioquic", "grpcio", "cryptography", "protobuf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


async def measure_rtt(sender: TransportProcess, peer_id: str, samples: int) -> dict[str, Any]:
    transport_ms: list[float] = []
    caller_ms: list[float] = []
    deadline = time.monotonic() + TIME_LIMIT_S
    for _ in range(samples):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        reply = await sender.stub.PingPeer(
            transport_pb2.PingPeerRequest(node_id=peer_id, timeout_ms=2000), timeout=5
        )
        caller_ms.append((time.perf_counter() - t0) * 1000)
        transport_ms.append(reply.rtt_ms)
        await asyncio.sleep(0.002)  # idle between probes
    return {
        "samples": len(transport_ms),
        "p50_ms": round(percentile(transport_ms, 50), 4),
        "p99_ms": round(percentile(transport_ms, 99), 4),
        "mean_ms": round(statistics.fmean(transport_ms), 4),
        "max_ms": round(max(transport_ms), 4),
        "grpc_caller_p50_ms": round(percentile(caller_ms, 50), 4),
        "grpc_caller_p99_ms": round(percentile(caller_ms, 99), 4),
    }


async def backlog(sender: TransportProcess, receiver: TransportProcess) -> int:
    """Messages waiting: in the sender's queue for the peer, and in the peer's inbound queue."""
    queued = (await sender.peers())[receiver.node_id].send_queue_depth
    stats = await receiver.stub.GetStats(transport_pb2.GetTransportStatsRequest(), timeout=5)
    return max(queued, int(stats.counters.get("recv_queue_depth", 0)))


async def measure_throughput(
    sender: TransportProcess,
    receiver: TransportProcess,
    *,
    size: int,
    count: int,
    batch: int,
) -> dict[str, Any]:
    """``batch`` > 1: ExchangeBatches with that many envelopes per gRPC message; 1: Exchange."""
    batched = batch > 1
    inbound: Any = receiver.stub.ExchangeBatches() if batched else receiver.stub.Exchange()
    outbound: Any = sender.stub.ExchangeBatches() if batched else sender.stub.Exchange()

    def wrap(envelopes: list[transport_pb2.Envelope]) -> Any:
        return transport_pb2.EnvelopeBatch(envelopes=envelopes) if batched else envelopes[0]

    def unwrap(message: Any) -> list[transport_pb2.Envelope]:
        return list(message.envelopes) if batched else [message]

    # warm-up: one message end to end, so the streams are open on both sides
    await outbound.write(wrap([transport_pb2.Envelope(to=receiver.node_id, payload=b"warm")]))
    first = unwrap(await asyncio.wait_for(inbound.read(), 10))
    assert first[0].payload == b"warm"
    payload = os.urandom(size - 8)
    received = 0
    in_order = True

    async def read_all() -> None:
        nonlocal received, in_order
        while received < count:
            for envelope in unwrap(await inbound.read()):
                if int.from_bytes(envelope.payload[:8], "big") != received:
                    in_order = False
                received += 1

    before = await sender.peers()
    cpu_before = [cpu_seconds(p.proc.pid if p.proc else 0) for p in (sender, receiver)]
    own_before = time.process_time()
    started = time.perf_counter()
    reader = asyncio.create_task(read_all())
    paced = 0.0
    for first_index in range(0, count, batch):
        if first_index and first_index % PACE_EVERY < batch:
            # respect backpressure: the transport drops the oldest when a queue is
            # full, so a producer that wants everything delivered watches the depth
            t0 = time.perf_counter()
            while await backlog(sender, receiver) > PACE_DEPTH:  # noqa: ASYNC110 - other processes
                await asyncio.sleep(0.002)
            paced += time.perf_counter() - t0
        envelopes = [
            transport_pb2.Envelope(to=receiver.node_id, payload=i.to_bytes(8, "big") + payload)
            for i in range(first_index, min(count, first_index + batch))
        ]
        await outbound.write(wrap(envelopes))
    sent_s = time.perf_counter() - started
    timed_out = False
    try:
        await asyncio.wait_for(reader, TIME_LIMIT_S)
    except TimeoutError:
        timed_out = True
        reader.cancel()
    elapsed = time.perf_counter() - started
    own_cpu = time.process_time() - own_before
    cpu_after = [cpu_seconds(p.proc.pid if p.proc else 0) for p in (sender, receiver)]
    inbound.cancel()
    outbound.cancel()
    after = await sender.peers()
    receiver_counters = (
        await receiver.stub.GetStats(transport_pb2.GetTransportStatsRequest(), timeout=5)
    ).counters
    return {
        "api": "ExchangeBatches" if batched else "Exchange",
        "batch": batch,
        "message_bytes": size,
        "messages": count,
        "received": received,
        "in_order": in_order,
        "dropped_sender": after[receiver.node_id].dropped - before[receiver.node_id].dropped,
        "dropped_receiver_total": int(receiver_counters.get("dropped.recv_queue_full", 0)),
        "timed_out": timed_out,
        "elapsed_s": round(elapsed, 3),
        "write_s": round(sent_s, 3),
        "paced_s": round(paced, 3),
        "cpu_s": {
            "sender_transport": round(cpu_after[0] - cpu_before[0], 2),
            "receiver_transport": round(cpu_after[1] - cpu_before[1], 2),
            "benchmark_client": round(own_cpu, 2),
        },
        "messages_per_s": round(received / elapsed, 1),
        "megabytes_per_s": round(received * size / elapsed / 1e6, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cretoai-bench-") as tmp:
        spec = make_cluster(Path(tmp), 2, transport={"reconnect_min_ms": 50})
        # default timers and windows (make_cluster's test-speed timers reset to defaults)
        for data in spec.data:
            for key in ("reconnect_max_ms", "handshake_timeout_ms", "keepalive_ms"):
                data["transport"].pop(key, None)
            data["transport"]["idle_timeout_ms"] = 30_000
            data["telemetry"] = {"log_level": "warning"}
        sender, receiver = spawnable(spec, 0), spawnable(spec, 1)
        await sender.start()
        await receiver.start()
        try:

            async def connected() -> bool:
                return (await sender.peers())[receiver.node_id].connected

            await eventually(connected, timeout=20, what="peers connected")
            await asyncio.sleep(0.5)
            rtt = await measure_rtt(sender, receiver.node_id, args.rtt_samples)
            small = await measure_throughput(
                sender, receiver, size=300, count=args.messages_300, batch=args.batch
            )
            large = await measure_throughput(
                sender, receiver, size=5 * 1024, count=args.messages_5k, batch=args.batch
            )
            # reference: the one-envelope-per-gRPC-message Exchange stream
            single_small = await measure_throughput(
                sender, receiver, size=300, count=min(args.messages_300, 3000), batch=1
            )
            single_large = await measure_throughput(
                sender, receiver, size=5 * 1024, count=min(args.messages_5k, 3000), batch=1
            )
        finally:
            await sender.stop()
            await receiver.stop()
    return {
        "benchmark": "transport_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "setup": "two transport processes on 127.0.0.1, default transport settings; "
        "the benchmark process drives both over gRPC",
        "rtt_idle": rtt,
        "throughput": {"300B": small, "5KB": large},
        "throughput_single_exchange": {"300B": single_small, "5KB": single_large},
        "targets": {
            "rtt_p99_ms": {
                "target": TARGET_RTT_P99_MS,
                "measured": rtt["p99_ms"],
                "met": rtt["p99_ms"] <= TARGET_RTT_P99_MS,
            },
            "messages_per_s_5KB": {
                "target": TARGET_MSGS_5K,
                "measured": large["messages_per_s"],
                "met": large["messages_per_s"] >= TARGET_MSGS_5K,
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rtt-samples", type=int, default=1000)
    parser.add_argument("--messages-300", type=int, default=20_000)
    parser.add_argument("--messages-5k", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="envelopes per gRPC message")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not 2 <= args.batch <= 1000:
        parser.error("--batch must be within [2, 1000]")
    for name in ("rtt_samples", "messages_300", "messages_5k"):
        if not 1 <= getattr(args, name) <= 200_000:
            parser.error(f"--{name.replace('_', '-')} must be within [1, 200000]")
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.output)
    shown = ("rtt_idle", "throughput", "throughput_single_exchange")
    print(json.dumps({key: result[key] for key in shown}, indent=2))
    print(json.dumps(result["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
