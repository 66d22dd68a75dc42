"""What an idle (and a lightly loaded) cluster costs: CPU per service, messages per node.

    .venv/bin/python -m bench.idle_cpu [--windows 3] [--window 30] [--settle 10] [--nodes 4]
                                       [--light-rate 2] [--light-seconds 20]
                                       [--set SECTION.FIELD=VALUE ...]

What it does:

* **cluster** — a real local cluster (``bench.cluster_load.Cluster``: ``init_cluster`` +
  ``Supervisor`` in a temporary directory, free loopback ports, default settings unless
  ``--set``), ``--nodes`` nodes x four service processes.
* **idle** — after ``--settle`` seconds with nothing submitted, ``--windows`` windows of
  ``--window`` seconds each: per process, its CPU (``utime + stime`` from
  ``/proc/<pid>/stat``) over the window in cores; per service (the sum over nodes), per
  node and for the whole cluster; the medians over the windows. Beside it, per node, the
  envelopes its transport sent (``cretoai_transport_messages_total{direction="out"}``)
  and the UDP datagrams (QUIC packets, ACKs included) per second, and what the rest of the
  machine used meanwhile (``/proc/stat`` minus the cluster): the machine is shared, so a
  window with a busy neighbour says less.
* **light load** — ``--light-rate`` vertices/s (client-signed, no parents, round-robin over
  the gateways, ``POST /v1/vertices?wait=true``, open loop) for ``--light-seconds``
  seconds: client-observed finality latency p50/p90/p99 and the cluster's CPU meanwhile.
  ``--light-rate 0`` skips it.

Writes ``bench/results/idle_cpu.json`` and prints a summary line per window.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster_load import (
    Cluster,
    machine,
    machine_busy_seconds,
    parse_overrides,
    proc_cpu_seconds,
    scrape,
    summary_ms,
    total,
)
from cretoai.crypto import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.vertex import make_vertex

RESULTS = Path(__file__).resolve().parent / "results"
RESULT = RESULTS / "idle_cpu.json"
SERVICES = ("gateway", "consensus", "transport", "storage")


def cpu_snapshot(pids: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    return {
        node: {svc: proc_cpu_seconds(pid) or 0.0 for svc, pid in by_service.items()}
        for node, by_service in pids.items()
    }


async def transport_counters(
    session: aiohttp.ClientSession, cluster: Cluster
) -> dict[str, dict[str, float]]:
    urls = cluster.metrics_urls()
    names = list(urls)
    scrapes = await asyncio.gather(*(scrape(session, urls[n]["transport"]) for n in names))
    return {
        name: {
            "messages_out": total(s, "cretoai_transport_messages_total", direction="out"),
            "messages_in": total(s, "cretoai_transport_messages_total", direction="in"),
            "datagrams_sent": total(s, "cretoai_transport_datagrams_sent_total"),
            "datagrams_received": total(s, "cretoai_transport_datagrams_received_total"),
        }
        for name, s in zip(names, scrapes, strict=True)
    }


class Window:
    """CPU per process, transport counters and the machine's busy time over one span."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session

    async def __aenter__(self) -> Window:
        self.pids = self.cluster.pids()
        self.counters0 = await transport_counters(self.session, self.cluster)
        self.cpu0 = cpu_snapshot(self.pids)
        self.machine0 = machine_busy_seconds()
        self.t0 = time.perf_counter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.cpu1 = cpu_snapshot(self.pids)
        self.machine1 = machine_busy_seconds()
        self.counters1 = await transport_counters(self.session, self.cluster)

    def result(self) -> dict[str, Any]:
        dt = self.elapsed
        per_node: dict[str, dict[str, float]] = {}
        for node, by_service in self.cpu1.items():
            per_node[node] = {
                svc: round((by_service[svc] - self.cpu0[node][svc]) / dt, 4) for svc in by_service
            }
            per_node[node]["total"] = round(sum(per_node[node].values()), 4)
        per_service = {
            svc: round(sum(n.get(svc, 0.0) for n in per_node.values()), 4) for svc in SERVICES
        }
        cluster_cores = round(sum(n["total"] for n in per_node.values()), 4)
        busy = (self.machine1[0] - self.machine0[0]) / dt
        rates = {
            node: {
                key: round((self.counters1[node][key] - self.counters0[node][key]) / dt, 2)
                for key in self.counters1[node]
            }
            for node in self.counters1
        }
        return {
            "seconds": round(dt, 2),
            "cluster_cores": cluster_cores,
            "per_service_cores": per_service,
            "per_node_cores": per_node,
            "other_processes_cores": round(max(0.0, busy - cluster_cores), 3),
            "transport_per_s": rates,
            "messages_out_per_node_per_s": round(
                statistics.mean(r["messages_out"] for r in rates.values()), 2
            ),
            "datagrams_sent_per_node_per_s": round(
                statistics.mean(r["datagrams_sent"] for r in rates.values()), 2
            ),
        }


def medians(windows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cluster_cores": round(statistics.median(w["cluster_cores"] for w in windows), 4),
        "per_service_cores": {
            svc: round(statistics.median(w["per_service_cores"][svc] for w in windows), 4)
            for svc in SERVICES
        },
        "messages_out_per_node_per_s": round(
            statistics.median(w["messages_out_per_node_per_s"] for w in windows), 2
        ),
        "datagrams_sent_per_node_per_s": round(
            statistics.median(w["datagrams_sent_per_node_per_s"] for w in windows), 2
        ),
        "other_processes_cores": round(
            statistics.median(w["other_processes_cores"] for w in windows), 3
        ),
    }


async def light_load(
    cluster: Cluster, session: aiohttp.ClientSession, rate: float, seconds: float
) -> dict[str, Any]:
    """``rate`` client-signed vertices/s for ``seconds`` s, open loop, ``?wait=true``."""
    backend = get_backend("auto")
    key = NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<bench>"))
    count = max(1, round(rate * seconds))
    bodies = []
    for i in range(count):
        payload = os.urandom(1024)
        vertex = make_vertex(key, payload, [], int(time.time() * 1000) + i)
        bodies.append(
            json.dumps(
                {
                    "payload": base64.b64encode(payload).decode(),
                    "parents": [],
                    "public_key": vertex.creator.hex(),
                    "signature": vertex.signature.hex(),
                    "timestamp_ms": vertex.timestamp_ms,
                }
            ).encode()
        )
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    gateways = [cluster.gateway(i) for i in range(cluster.nodes)]

    async def one(i: int, due: float) -> None:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        url = f"{gateways[i % len(gateways)]}/v1/vertices?wait=true"
        try:
            async with session.post(
                url,
                data=bodies[i],
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as resp:
                await resp.read()
                statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                if resp.status == 200:
                    latencies.append(time.perf_counter() - due)
        except (aiohttp.ClientError, TimeoutError) as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1

    async with Window(cluster, session) as window:
        t0 = time.perf_counter() + 0.5
        await asyncio.gather(*(one(i, t0 + i / rate) for i in range(count)))
    return {
        "rate": rate,
        "seconds": seconds,
        "submitted": count,
        "statuses": statuses,
        "latency": summary_ms(latencies),
        "window": window.result(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    extra = parse_overrides(args.set)
    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as tmp:
        async with Cluster(Path(tmp), args.nodes, extra) as cluster:
            settings = cluster.settings()
            async with aiohttp.ClientSession() as session:
                await asyncio.sleep(args.settle)
                windows = []
                for i in range(args.windows):
                    async with Window(cluster, session) as window:
                        await asyncio.sleep(args.window)
                    result = window.result()
                    windows.append(result)
                    print(
                        json.dumps(
                            {
                                "window": i,
                                "cluster_cores": result["cluster_cores"],
                                "per_service": result["per_service_cores"],
                                "msgs_out/node/s": result["messages_out_per_node_per_s"],
                                "datagrams/node/s": result["datagrams_sent_per_node_per_s"],
                                "other": result["other_processes_cores"],
                            }
                        ),
                        flush=True,
                    )
                light = None
                if args.light_rate > 0:
                    light = await light_load(cluster, session, args.light_rate, args.light_seconds)
                    print(
                        json.dumps(
                            {
                                "light_rate": args.light_rate,
                                "latency": light["latency"],
                                "statuses": light["statuses"],
                                "cluster_cores": light["window"]["cluster_cores"],
                            }
                        ),
                        flush=True,
                    )
            events = list(cluster.events)
            restarts = cluster.restarts()
        logs = cluster.logs
    return {
        "benchmark": "idle_cpu",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "parameters": {
            "nodes": args.nodes,
            "windows": args.windows,
            "window_s": args.window,
            "settle_s": args.settle,
            "light_rate": args.light_rate,
            "light_seconds": args.light_seconds,
            "settings": settings,
        },
        "idle_median": medians(windows),
        "idle_windows": windows,
        "light_load": light,
        "restarts": restarts,
        "events": events,
        "logs": logs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--light-rate", type=float, default=2.0)
    parser.add_argument("--light-seconds", type=float, default=20.0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    out = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(json.dumps({"idle_median": out["idle_median"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
