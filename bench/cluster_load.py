"""Cluster benchmark: finalized throughput and client-observed finality latency of a real
local cluster at fixed offered loads (open loop), with RSS and CPU per node.

    .venv/bin/python -m bench.cluster_load [--rates 10,25,50,100,200,400,800,1000] [--duration 20]
                                           [--warmup 3] [--nodes 4] [--quick]

What it does:

* **cluster** — ``init_cluster`` + ``Supervisor`` (as ``cretoai-node cluster up`` does) in a
  temporary directory on free loopback ports: ``--nodes`` nodes x four service processes,
  default settings (``--set SECTION.FIELD=VALUE`` overrides one, e.g.
  ``--set consensus.batch_timeout_ms=10``). Stopped at the end, whatever happens.
* **vertices** — 1 KB random payloads, client-signed with ML-DSA-87 (``public_key``,
  ``signature``, ``timestamp_ms``; one client key per gateway), two parents each, chosen
  among vertices finalized on every node before the step (the previous step's, or 8
  anchors submitted first). Every step's vertices are **pre-signed** in a pool of
  ``--sign-workers`` processes (and encoded to JSON) before the step starts, while the
  cluster idles, so the generator's signing is not on the measured path.
* **load** — open loop: vertex *i* of a step is due at ``t0 + i / rate``, whatever the
  completions; submissions go round-robin to every node's gateway as
  ``POST /v1/vertices?wait=true`` (the response arrives once the vertex is executed, with
  its certificate). Each step runs ``--warmup`` seconds then ``--duration`` measured
  seconds at the same rate, then waits for the answers still outstanding (bounded by the
  gateway's wait timeout) and for every node to execute the same last sequence number.
* **finality latency** — from the vertex's *due* time (not the moment the generator got to
  send it, so a late generator cannot hide queueing: no coordinated omission) to the moment
  the client has read the 200 answer, for vertices due inside the measured window.
* **finalized throughput** — 200-finalized answers received inside the measured window /
  its length; the executed-vertex counters of every node are reported beside it.
* **max sustained throughput** — the highest offered load whose step finalized ≥ 95 % of the
  offered rate, with p99 ≤ 1 s, and at least 99 % of the window's submissions finalized
  (so that failures cannot hide outside the latency percentiles).
* **resources** — per node, its four service processes together: RSS (``VmRSS``, sampled
  every second; the maximum is reported) and CPU (``utime + stime`` delta over the window,
  in cores); the generator's own CPU and what the rest of the machine used meanwhile (from
  ``/proc/stat``), since everything shares the same cores.
* **stages** — per step, p50/p99 of each stage of ``cretoai_consensus_stage_seconds`` (the
  window's bucket deltas over all nodes, interpolated as ``histogram_quantile`` does).
* **tracing** — ``--tracing default|off|on`` (``on``: ``--sampling``, exported over OTLP to
  a ``devkit.otlp_receiver`` process, whose CPU is reported apart).
* **errors** — HTTP status and error codes, client-side failures, consensus / transport /
  gateway counters from each node's Prometheus endpoints, warning and error lines of the
  services' logs.

Every loop is bounded in count and time (``--max-seconds`` for the whole run; a step is
skipped, not started, once the budget is spent, and the steps above one that finalized
less than half its offered load are skipped, above 200 vertices/s, unless ``--no-skip``;
when a step leaves a backlog that does not drain in ``--quiesce-timeout`` s, the next step
gets a fresh cluster). Writes ``bench/results/cluster_load.json`` and a plot,
``bench/results/cluster_load.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench import speed
from bench.resident import distinct_resident_mb
from bench.verify_bound import measure as measure_verify_bound
from bench.verify_bound import ratio as verify_ratio
from cretoai import registry
from cretoai.config import NodeConfig, load_config
from cretoai.crypto import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.telemetry import DEFAULT_SAMPLING_RATIO
from cretoai.v1 import gateway_pb2, vertex_pb2
from cretoai.vertex import make_vertex, vertex_hash
from devkit.ports import free_base_port, free_tcp_port
from devkit.wire import length_delimited
from node.clusterinit import init_cluster
from node.supervisor import Supervisor

RESULTS = Path(__file__).resolve().parent / "results"
RESULT = RESULTS / "cluster_load.json"
PLOT = RESULTS / "cluster_load.png"

DEFAULT_RATES = (10, 25, 50, 100, 200, 400, 800, 1000)
QUICK_RATES = (25, 50)
PAYLOAD_BYTES = 1024
PARENTS = 2
ANCHORS = 8

#: Targets (the node's performance goals).
TARGET_P99_MS = 100.0
TARGET_P99_AT_RATE = 200
TARGET_SUSTAINED = 1000.0
TARGET_RSS_MB = 400.0
TARGET_CORES = 0.25
TARGET_CORES_AT_RATE = 200
#: Issue #14's memory target: RSS <= TARGET_RSS_MB per node, *flat* over a step of at least
#: RSS_FLAT_MIN_STEP_S at half the maximum rate. "Flat" here: the least-squares slope of the
#: node's 1-s RSS samples over the second half of the step's window is at most
#: RSS_FLAT_MB_PER_MIN (60 MB an hour at most, if it went on).
RSS_FLAT_MIN_STEP_S = 600.0
RSS_FLAT_MB_PER_MIN = 1.0
#: Seconds between samples of each node's resident pages counted once (bench.resident:
#: ~0.05 CPU-s per node, so not every second).
DISTINCT_EVERY_S = 10.0
#: A step is "at half the maximum rate" when its finalized throughput is within this share
#: of half the maximum finalized rate (``--maximum-rate``, else the run's highest).
HALF_MAX_TOLERANCE = 0.2

#: What "sustained" means.
SUSTAIN_SHARE = 0.95
SUSTAIN_P99_MS = 1000.0
SUSTAIN_FINALIZED_SHARE = 0.99
#: Steps above one that finalized less than this share of its offered load are skipped
#: (except those up to the targets' rate, whose figures the targets need).
SATURATED_SHARE = 0.5
ALWAYS_RUN_UP_TO = max(TARGET_P99_AT_RATE, TARGET_CORES_AT_RATE)

#: The highest offered load a step may have (vertices/s).
MAX_RATE = 5000
#: An overload step "shed at once": at least this share of what was not finalized was
#: answered 429, with a p99 time to that answer (from sending) at most this many ms.
SHED_SHARE = 0.99
SHED_AT_ONCE_MS = 100.0
#: A step during which other processes used more than this many cores is flagged
#: ("machine_shared"): its figures say less about the node.
OTHER_LOAD_WARNING = 0.15
#: Submissions outstanding at once, at most (beyond it the generator counts a
#: "generator_cap" miss instead of sending; the open file limit is the real bound).
INFLIGHT_CAP = 12_000
#: The per-stage histogram of the consensus service (absent in older builds: tolerated).
STAGE_METRIC = "cretoai_consensus_stage_seconds"
#: Every service's event-loop lag (cretoai.serving.watch_loop_lag), by ``service``.
LOOP_LAG_METRIC = "cretoai_service_event_loop_lag_seconds"
STATUS_RE = re.compile(rb'"status":\s*"([a-z_]+)"')
NUMBER_RE = re.compile(r"\d+(\.\d+)?")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- machine and process figures --------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def refusal_kind(error: Any) -> str:
    """An API error's message with its numbers elided, so that refusals group by the part of
    the node that answered ("… waited N ms …")."""
    message = error.get("message", "") if isinstance(error, dict) else ""
    return NUMBER_RE.sub("N", str(message))[:120]


def time_to_429_by_refusal(out: Outcomes, indices: Iterable[int]) -> dict[str, Any]:
    """The window's 429s grouped by their message (see :func:`refusal_kind`): which part of
    the node refused late, most frequent first."""
    times: dict[str, list[float]] = {}
    for i in indices:
        if out.status[i] == 429:
            times.setdefault(out.refusal[i], []).append(out.done[i] - out.sent[i])
    ranked = sorted(times.items(), key=lambda kv: -len(kv[1]))
    return {kind: summary_ms(seconds) for kind, seconds in ranked}


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    if not seconds:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1e3, 2),
        "p90_ms": round(percentile(seconds, 90) * 1e3, 2),
        "p99_ms": round(percentile(seconds, 99) * 1e3, 2),
        "max_ms": round(max(seconds) * 1e3, 2),
        "mean_ms": round(sum(seconds) / len(seconds) * 1e3, 2),
    }


def rss_trend(
    series: Sequence[Mapping[str, Any]], node: str, start_t: float, end_t: float
) -> dict[str, Any] | None:
    """How ``node``'s RSS moved over a step's window (``series``: the sampler's rows, ``t``
    in seconds from the step's start): its maximum, and over the window's second half the
    least-squares slope in MB a minute and the growth from the median of its first minute
    to that of its last. None with fewer than 10 samples in the second half."""
    window = [row for row in series if start_t <= row["t"] < end_t and row.get(node)]
    rows = [(float(row["t"]), float(row[node]["rss_mb"])) for row in window]
    middle = (start_t + end_t) / 2
    second = [(t, mb) for t, mb in rows if t >= middle]
    if len(second) < 10 or second[-1][0] <= second[0][0]:
        return None
    slope, _ = statistics.linear_regression([t for t, _ in second], [mb for _, mb in second])
    first_minute = [mb for t, mb in second if t < second[0][0] + 60]
    last_minute = [mb for t, mb in second if t >= second[-1][0] - 60]
    by_service: dict[str, list[tuple[float, float]]] = {}
    for row in window:
        if row["t"] >= middle:
            for service, mb in (row[node].get("rss_mb_by_service") or {}).items():
                by_service.setdefault(service, []).append((float(row["t"]), float(mb)))
    peak = max(window, key=lambda row: float(row[node]["rss_mb"]))
    return {
        "max_mb": round(max(mb for _, mb in rows), 1),
        # which process holds the peak: the split at the sample of the maximum, and each
        # process's own maximum over the window
        "at_max_by_service": {
            service: round(float(mb), 1)
            for service, mb in (peak[node].get("rss_mb_by_service") or {}).items()
        },
        "at_max_t": round(float(peak["t"]) - start_t, 1),
        "max_mb_by_service": {
            service: round(
                max(
                    float((row[node].get("rss_mb_by_service") or {}).get(service, 0.0))
                    for row in window
                ),
                1,
            )
            for service in (peak[node].get("rss_mb_by_service") or {})
        },
        "second_half_s": round(second[-1][0] - second[0][0], 1),
        "second_half_slope_mb_per_min": round(slope * 60, 2),
        "second_half_growth_mb": round(
            statistics.median(last_minute) - statistics.median(first_minute), 1
        ),
        # which process grows
        "second_half_slope_mb_per_min_by_service": {
            service: round(
                statistics.linear_regression([t for t, _ in p], [mb for _, mb in p])[0] * 60, 2
            )
            for service, p in by_service.items()
            if len(p) >= 10 and p[-1][0] > p[0][0]
        },
        "samples": len(rows),
    }


def distinct_trend(
    series: Sequence[Mapping[str, Any]], node: str, start_t: float, end_t: float
) -> dict[str, Any] | None:
    """:func:`rss_trend` of the node's resident pages counted once (the sampler's
    ``distinct`` rows, every DISTINCT_EVERY_S): the maximum, and the least-squares slope
    over the window's second half. None without at least 5 samples there (a step shorter
    than about 100 s, or frame numbers hidden from a user other than root)."""
    rows = [
        (float(row["t"]), float(row[node]))
        for row in series
        if start_t <= row["t"] < end_t and row.get(node) is not None
    ]
    middle = (start_t + end_t) / 2
    second = [(t, mb) for t, mb in rows if t >= middle]
    if len(second) < 5 or second[-1][0] <= second[0][0]:
        return None
    slope, _ = statistics.linear_regression([t for t, _ in second], [mb for _, mb in second])
    return {
        "max_mb": round(max(mb for _, mb in rows), 1),
        "second_half_slope_mb_per_min": round(slope * 60, 2),
        "samples": len(rows),
    }


def largest_distinct_resident_mb(nodes: Mapping[str, Any]) -> float | None:
    """The largest node's ``resident_mb_end_distinct``; None when no node's could be read."""
    known = [n.get("resident_mb_end_distinct") for n in nodes.values()]
    return max((mb for mb in known if mb is not None), default=None)


def each_page_once(nodes: Mapping[str, Any]) -> dict[str, float | None]:
    """The largest node's maximum and slope of its resident pages counted once (None
    when a node's could not be read)."""
    trends = [n.get("resident_distinct_trend") for n in nodes.values()]
    if not trends or any(t is None for t in trends):
        return {"max_mb_each_page_once": None, "slope_mb_per_min_each_page_once": None}
    return {
        "max_mb_each_page_once": max(t["max_mb"] for t in trends),
        "slope_mb_per_min_each_page_once": max(t["second_half_slope_mb_per_min"] for t in trends),
    }


def rss_flat_at_half_max(
    steps: Sequence[Mapping[str, Any]], maximum: float | None
) -> dict[str, Any]:
    """Issue #14's memory target, read from the run's steps: every node at most
    TARGET_RSS_MB and flat (RSS_FLAT_MB_PER_MIN) over a step of at least
    RSS_FLAT_MIN_STEP_S whose finalized throughput is half ``maximum`` (the maximum
    finalized rate; within HALF_MAX_TOLERANCE). ``met`` is None when the run has no such
    step: the long steps are then reported, not judged."""
    target = (
        f"<= {TARGET_RSS_MB:g} MB per node and slope <= {RSS_FLAT_MB_PER_MIN:g} MB/min over the "
        f"second half of a >= {RSS_FLAT_MIN_STEP_S:g}-s step at half the maximum rate"
    )
    long_steps = [
        s
        for s in steps
        if s["window_s"] >= RSS_FLAT_MIN_STEP_S * 0.99
        and all(n.get("rss_trend") for n in s["nodes"].values())
    ]
    measured = [
        {
            "offered_rate": s["offered_rate"],
            "finalized_throughput": s["finalized_throughput"],
            "max_mb": max(n["rss_trend"]["max_mb"] for n in s["nodes"].values()),
            "slope_mb_per_min": max(
                n["rss_trend"]["second_half_slope_mb_per_min"] for n in s["nodes"].values()
            ),
            "growth_mb": max(n["rss_trend"]["second_half_growth_mb"] for n in s["nodes"].values()),
            # reported beside, not judged: the node's RAM with shared pages counted once
            "end_mb_each_page_once": largest_distinct_resident_mb(s["nodes"]),
            **each_page_once(s["nodes"]),
        }
        for s in long_steps
    ]
    for m in measured:
        m["flat_and_under"] = bool(
            m["max_mb"] <= TARGET_RSS_MB and m["slope_mb_per_min"] <= RSS_FLAT_MB_PER_MIN
        )
        if m["max_mb_each_page_once"] is not None:
            m["flat_and_under_each_page_once"] = bool(
                m["max_mb_each_page_once"] <= TARGET_RSS_MB
                and m["slope_mb_per_min_each_page_once"] <= RSS_FLAT_MB_PER_MIN
            )
    if not measured:
        note = f"no step of >= {RSS_FLAT_MIN_STEP_S:g} s (--duration)"
        return {"target": target, "measured": None, "met": None, "note": note}
    if not maximum:
        note = "no maximum rate (--maximum-rate: the finalized/s of a saturation run)"
        return {"target": target, "measured": measured, "met": None, "note": note}
    half = maximum / 2
    at_half = [
        m for m in measured if abs(m["finalized_throughput"] - half) <= HALF_MAX_TOLERANCE * half
    ]
    if not at_half:
        note = (
            f"no long step finalized within {HALF_MAX_TOLERANCE:.0%} of {half:g}/s, half of "
            f"{maximum:g}/s (--maximum-rate: the finalized/s of a saturation run)"
        )
        return {"target": target, "measured": measured, "met": None, "note": note}
    return {
        "target": target,
        "maximum_rate": maximum,
        "measured": measured,
        "met": all(m["flat_and_under"] for m in at_half),
    }


def mean_by_service(nodes: dict[str, Any], key: str) -> dict[str, float | None]:
    """The mean over the nodes of ``nodes[*][key][service]`` (None where none has it)."""
    values: dict[str, list[float]] = {}
    for figures in nodes.values():
        for service, value in (figures.get(key) or {}).items():
            values.setdefault(service, [])
            if value is not None:
                values[service].append(value)
    return {s: round(sum(v) / len(v), 1) if v else None for s, v in sorted(values.items())}


def proc_runqueue_seconds(pid: int) -> float | None:
    """Time the main thread of ``pid`` (a service's event loop) was runnable but waited
    for a CPU, from /proc/<pid>/schedstat; None when it is gone or the kernel lacks it."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc/<pid>/stat; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def machine_steal_seconds() -> float:
    """CPU seconds the hypervisor gave to others while this VM wanted them, since boot
    (/proc/stat steal; part of what :func:`machine_busy_seconds` counts as busy)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(fields[7]) / CLK_TCK if len(fields) > 7 else 0.0


def client_batch_warning(
    client_batch: int, linger_ms: float, rate: float, nodes: int, step: Mapping[str, Any]
) -> str | None:
    """What to say when ``--client-batch`` did not batch: each gateway's client gets a
    vertex every ``nodes / rate`` s, so a shorter linger sends them (almost) alone."""
    achieved = step.get("generator", {}).get("vertices_per_request")
    if client_batch <= 1 or achieved is None or achieved >= client_batch / 2:
        return None
    gap_ms = nodes / rate * 1000
    return (
        f"--client-batch {client_batch} sent {achieved:g} vertices per request: each "
        f"gateway's client gets one every {gap_ms:.0f} ms, so a {linger_ms:g}-ms linger "
        f"cannot fill a request (about {client_batch * gap_ms:.0f} ms would)"
    )


def machine() -> dict[str, Any]:
    cpu = speed.cpu()["model"] or platform.processor() or ""
    versions = {}
    for package in (
        "cretoai-node",
        "aiohttp",
        "grpcio",
        "protobuf",
        "cryptography",
        "aioquic",
        "rocksdict",
        "opentelemetry-sdk",
        "liboqs-python",
        "matplotlib",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "crypto_backend": str(getattr(get_backend("auto"), "name", "?")),
        "packages": versions,
        "git": git_revision(),
    }


def git_revision() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    changed = sorted({line[3:] for line in dirty if line.strip()})
    return {"commit": head, "uncommitted_changes": changed}


# -- pre-signing ------------------------------------------------------------------------

_SIGNING_KEYS: list[NodeKey] = []


def _sign_init(seeds: list[bytes]) -> None:
    backend = get_backend("auto")
    _SIGNING_KEYS[:] = [
        NodeKey(private=backend.private_key_from_seed(s), path=Path("<bench client>"))
        for s in seeds
    ]


@dataclass(frozen=True)
class SignJob:
    nonce: int
    start: int
    count: int
    targets: int
    parents: tuple[str, ...]
    #: "json": a REST body; "protobuf": a serialized ``Vertex`` (the public gRPC API).
    encoding: str = "json"


def _sign_chunk(job: SignJob) -> list[tuple[bytes, str]]:
    """Vertices ``start .. start+count`` of a step: (body, hash hex). In a worker."""
    out = []
    for index in range(job.start, job.start + job.count):
        rng = random.Random(job.nonce * 1_000_003 + index)
        payload = job.nonce.to_bytes(8, "big") + index.to_bytes(8, "big")
        payload += rng.randbytes(PAYLOAD_BYTES - len(payload))
        parents = rng.sample(job.parents, min(PARENTS, len(job.parents)))
        key = _SIGNING_KEYS[index % job.targets % len(_SIGNING_KEYS)]
        vertex = make_vertex(
            key, payload, [bytes.fromhex(p) for p in parents], int(time.time() * 1000)
        )
        if job.encoding == "protobuf":
            out.append((vertex.SerializeToString(), vertex_hash(vertex).hex()))
            continue
        body = {
            "payload": base64.b64encode(payload).decode(),
            "parents": parents,
            "public_key": vertex.creator.hex(),
            "signature": vertex.signature.hex(),
            "timestamp_ms": vertex.timestamp_ms,
        }
        out.append((json.dumps(body, separators=(",", ":")).encode(), vertex_hash(vertex).hex()))
    return out


class Signer:
    """A pool of processes that sign vertices (spawned: no forked event loop or children)."""

    def __init__(self, workers: int, keys: int) -> None:
        self.seeds = [os.urandom(32) for _ in range(keys)]
        context = multiprocessing.get_context("spawn")
        self.pool = context.Pool(workers, initializer=_sign_init, initargs=(self.seeds,))
        self.workers = workers
        self.nonce = int.from_bytes(os.urandom(6), "big")

    async def sign(
        self, count: int, targets: int, parents: Sequence[str], encoding: str = "json"
    ) -> list[tuple[bytes, str]]:
        self.nonce += 1
        chunk = 100
        jobs = [
            SignJob(self.nonce, start, min(chunk, count - start), targets, tuple(parents), encoding)
            for start in range(0, count, chunk)
        ]
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(None, lambda: self.pool.map(_sign_chunk, jobs))
        return [item for part in results for item in part]

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


# -- the cluster ------------------------------------------------------------------------

#: gateway.client_vertices_per_s of the benchmark's clusters: far above any rate offered.
BENCH_CLIENT_RATE = 1_000_000.0
#: gateway.grpc_max_concurrent_rpcs (and per client) of the benchmark's clusters with
#: ``--api grpc``: the generator's calls in flight, not the listener's bound, are measured.
BENCH_GRPC_CALLS = 1024


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``SECTION.FIELD=VALUE`` (VALUE a TOML scalar, else a string) into init_cluster extra."""
    extra: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        section, dot, fieldname = name.partition(".")
        if not sep or not dot or not section or not fieldname:
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        extra.setdefault(section, {})[fieldname] = value
    return extra


#: The hand-offs between processes on a vertex's path, as (parent span, child span,
#: whether the parent waits for the child's reply): how long the child took to start
#: after its parent (the message or call on its way) and, for a call, how long the parent
#: took to end after the child did (the reply on its way back). The spans are those of
#: services/consensus/tracing.py and of the services' gRPC and transport instrumentation.
HOPS = (
    ("POST /v1/vertices", "/cretoai.v1.Consensus/SubmitVertices", False),
    ("/cretoai.v1.Consensus/SubmitVertices", "transport.send", False),
    ("pbft.send", "transport.send", False),
    ("transport.send", "transport.receive", False),
    ("transport.receive", "consensus.batch", False),
    ("consensus.persist", "/cretoai.v1.Storage/WriteState", True),
    ("consensus.storage_commit", "/cretoai.v1.Storage/CommitBatch", True),
)
#: Spans whose own duration is reported beside the hops.
TIMED_SPANS = (
    "pbft.pre_prepare",
    "pbft.prepare",
    "pbft.commit",
    "consensus.persist",
    "/cretoai.v1.Storage/WriteState",
    "consensus.execute",
    "/cretoai.v1.Storage/CommitBatch",
)


def span_hops(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Per :data:`HOPS` pair, over every parent-child instance received: ``start_gap``
    (the child's start after its parent's) and, for a call, ``reply_gap`` (the parent's
    end after the child's), ms, p50 and p90; per :data:`TIMED_SPANS`, the span's own
    duration. With every vertex sampled this is where a vertex's finality goes, hop by
    hop (docs/benchmarks.md, "Where a vertex's time goes at 10/s")."""
    by_id = {s["span_id"]: s for s in spans}

    def summary(values: list[float]) -> dict[str, Any]:
        ordered = sorted(values)
        return {
            "count": len(ordered),
            "p50_ms": round(statistics.median(ordered), 2),
            "p90_ms": round(ordered[int(len(ordered) * 0.9)], 2),
        }

    calls = {(parent, child): call for parent, child, call in HOPS}
    gaps: dict[tuple[str, str], tuple[list[float], list[float]]] = {
        pair: ([], []) for pair in calls
    }
    durations: dict[str, list[float]] = {name: [] for name in TIMED_SPANS}
    for span in spans:
        if span["name"] in durations:
            durations[span["name"]].append((span["end_ns"] - span["start_ns"]) / 1e6)
        parent = by_id.get(span.get("parent_span_id") or "")
        if parent is None or (parent["name"], span["name"]) not in gaps:
            continue
        starts, replies = gaps[(parent["name"], span["name"])]
        starts.append((span["start_ns"] - parent["start_ns"]) / 1e6)
        replies.append((parent["end_ns"] - span["end_ns"]) / 1e6)
    hops = []
    for (parent_name, child_name), (starts, replies) in gaps.items():
        if not starts:
            continue
        hop: dict[str, Any] = {"from": parent_name, "to": child_name, "start_gap": summary(starts)}
        if calls[(parent_name, child_name)]:
            hop["reply_gap"] = summary(replies)
        hops.append(hop)
    return {
        "hops": hops,
        "durations": {name: summary(v) for name, v in durations.items() if v},
    }


class TraceSink:
    """``python -m devkit.otlp_receiver`` as a process on loopback ports: where the nodes
    export their spans when tracing is on (standing in for Jaeger; its CPU is reported
    apart). Stopped by its pid."""

    def __init__(self) -> None:
        self.grpc_port = free_tcp_port()
        self.http_port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def launch(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "devkit.otlp_receiver",
                "--listen", f"127.0.0.1:{self.grpc_port}",
                "--query", f"127.0.0.1:{self.http_port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 30) -> None:
        """Until its HTTP side answers (bounded); fails at once if it exited."""
        assert self.process is not None, "not launched"
        deadline = time.perf_counter() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"otlp receiver exited ({self.process.returncode})")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{self.http_port}/healthz") as resp:
                    if resp.status == 200:
                        return
            if time.perf_counter() > deadline:
                raise TimeoutError(f"otlp receiver not answering after {timeout:.0f}s")
            await asyncio.sleep(0.2)

    def cpu_seconds(self) -> float:
        if self.process is None:
            return 0.0
        return proc_cpu_seconds(self.process.pid) or 0.0

    async def spans(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """How many spans and traces it received, by service."""
        try:
            async with session.get(
                f"http://127.0.0.1:{self.http_port}/spans", timeout=aiohttp.ClientTimeout(total=60)
            ) as resp:
                spans = (await resp.json())["spans"]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            return {"error": repr(exc)}
        by_service = Counter(s["service_name"] for s in spans)
        return {
            "spans": len(spans),
            "traces": len({s["trace_id"] for s in spans}),
            "by_service": dict(sorted(by_service.items())),
            "hops": span_hops(spans),
        }

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tracing_overrides(args: argparse.Namespace, sink: TraceSink | None) -> dict[str, Any]:
    """The ``[telemetry]`` settings of ``--tracing``: off (ratio 0, no exporter), on (the
    ratio ``--sampling``, exported to ``sink``), default (the config's defaults)."""
    if args.tracing == "off":
        return {"sampling_ratio": 0.0, "otlp_endpoint": ""}
    if args.tracing == "on":
        assert sink is not None
        return {"sampling_ratio": args.sampling, "otlp_endpoint": sink.endpoint}
    return {}


class Cluster:
    """A real local cluster under a temporary directory: ``async with Cluster(...) as c``.

    ``restart_fresh()`` replaces it with a new, empty one (new keys, ports and data) when
    an overloaded step left a backlog that would spill into the next step."""

    def __init__(
        self,
        directory: Path,
        nodes: int,
        extra: dict[str, dict[str, Any]],
        keep_logs: Path | None = None,
    ) -> None:
        self.root = directory
        self.keep_logs = keep_logs
        self.nodes = nodes
        self.extra = extra
        self.configs: list[NodeConfig] = []
        self.supervisor: Supervisor | None = None
        self.events: list[str] = []
        self.incarnations = 0
        self.logs: dict[str, Any] = {}
        #: The OTLP receiver the nodes export to (tracing on), else None.
        self.sink: TraceSink | None = None

    async def start(self) -> None:
        self.incarnations += 1
        base = free_base_port(20 * self.nodes + 20)
        layout = init_cluster(
            self.root / f"cluster{self.incarnations}",
            self.nodes,
            http_port=base + 20 * self.nodes,
            base_port=base,
            extra=self.extra,
        )
        self.configs = [load_config(n.config, environ={}) for n in layout.nodes]
        self.supervisor = Supervisor(self.configs, log_dir=lambda c: c.data_dir.parent / "logs")
        self.supervisor.on_event = lambda m: self.events.append(f"{time.time():.1f} {m}")
        try:
            await self.supervisor.start(timeout=120)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.supervisor is not None:
            supervisor, self.supervisor = self.supervisor, None
            await supervisor.stop()
            for name, summary in self.log_summary().items():
                self.logs[f"cluster{self.incarnations}/{name}"] = summary
            if self.keep_logs is not None:
                for cfg in self.configs:
                    shutil.copytree(
                        cfg.data_dir.parent / "logs",
                        self.keep_logs / f"cluster{self.incarnations}" / cfg.node.name,
                        dirs_exist_ok=True,
                    )

    async def restart_fresh(self) -> None:
        self.events.append(f"{time.time():.1f} benchmark: replacing the cluster by a fresh one")
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def names(self) -> list[str]:
        return [c.node.name for c in self.configs]

    def gateway(self, index: int) -> str:
        return f"http://{self.configs[index].gateway.http}"

    def pids(self) -> dict[str, dict[str, int]]:
        assert self.supervisor is not None
        out: dict[str, dict[str, int]] = {}
        for child in self.supervisor.children:
            if child.process is not None and child.process.returncode is None:
                out.setdefault(child.node, {})[child.service] = child.process.pid
        return out

    def restarts(self) -> dict[str, int]:
        assert self.supervisor is not None
        out: dict[str, int] = {}
        for child in self.supervisor.children:
            out[child.node] = out.get(child.node, 0) + child.restarts
        return out

    def metrics_urls(self) -> dict[str, dict[str, str]]:
        return {
            c.node.name: {
                "gateway": f"http://{c.gateway.metrics}/metrics",
                "consensus": f"http://{c.consensus.metrics}/metrics",
                "transport": f"http://{c.transport.metrics}/metrics",
                "storage": f"http://{c.storage.metrics}/metrics",
            }
            for c in self.configs
        }

    def settings(self) -> dict[str, Any]:
        cfg = self.configs[0]
        return {
            "consensus": {
                k: getattr(cfg.consensus, k)
                for k in (
                    "batch_max_count",
                    "batch_max_bytes",
                    "batch_timeout_ms",
                    "checkpoint_interval",
                    "watermark_window",
                    "pool_max",
                    "verify_threads",
                    "tick_ms",
                )
            },
            "gateway": {"wait_timeout_ms": cfg.gateway.wait_timeout_ms},
            "telemetry": {
                "sampling_ratio": cfg.telemetry.sampling_ratio,
                "log_level": cfg.telemetry.log_level,
                "otlp_endpoint": cfg.telemetry.otlp_endpoint,
            },
            "overrides": self.extra,
        }

    def log_summary(self, samples: int = 6) -> dict[str, Any]:
        """Warning/error lines per node and service, with a few distinct messages."""
        out: dict[str, Any] = {}
        msg_re = re.compile(r'msg=("(?:[^"\\]|\\.)*"|\S+)')
        for cfg in self.configs:
            for path in sorted((cfg.data_dir.parent / "logs").glob("*.log")):
                counts: Counter[str] = Counter()
                seen: Counter[str] = Counter()
                lines = path.read_text(errors="replace").splitlines()
                for number, line in enumerate(lines):
                    if "level=error" in line or "Traceback" in line:
                        level = "error"
                    elif "level=warning" in line:
                        level = "warning"
                    else:
                        continue
                    counts[level] += 1
                    match = msg_re.search(line)
                    text = match.group(1) if match else line[:160]
                    if line.startswith("Traceback"):  # name it by its exception line
                        text = "Traceback: " + traceback_exception(lines, number)[:160]
                    seen[f"{level}: {text}"] += 1
                if counts:
                    out[f"{cfg.node.name}/{path.stem}"] = {
                        **counts,
                        "top": [f"{n} x {m}" for m, n in seen.most_common(samples)],
                    }
        return out


def traceback_exception(lines: Sequence[str], start: int, limit: int = 200) -> str:
    """The exception line of the traceback starting at ``lines[start]``: the first line
    after it that is not indented (within ``limit`` lines), else ''."""
    for line in lines[start + 1 : start + 1 + limit]:
        if line and not line[0].isspace():
            return line.strip()
    return ""


# -- metrics ----------------------------------------------------------------------------

Scrape = dict[str, float]  # "name{label=value,...}" -> value


#: The samples the once-a-second series reads (``Sampler._scrapes``): it asks for these
#: only (prometheus_client's ``name[]``), since a full exposition costs the service about
#: 12 ms of CPU under load, which the node's figures would otherwise carry.
SERIES_SAMPLES = (
    "cretoai_consensus_last_executed_seq",
    "cretoai_consensus_view",
    "cretoai_consensus_pool_requests",
    "cretoai_consensus_inbox_depth",
    "cretoai_transport_send_queue_depth",
    "cretoai_transport_send_queue_bytes",
    "cretoai_transport_bytes_total",
    "cretoai_transport_datagram_bytes_sent_total",
    "cretoai_transport_dropped_total",
)


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    # Uncompressed: on loopback, gzip only costs the service CPU.
    headers = {"Accept-Encoding": "identity"}
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("cretoai_"):
            continue
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return out


async def scrape_all(
    session: aiohttp.ClientSession, urls: dict[str, dict[str, str]]
) -> dict[str, Scrape]:
    """Per node: the union of its gateway, consensus and transport metrics."""
    keys = [(node, url) for node, by_service in urls.items() for url in by_service.values()]
    results = await asyncio.gather(*(scrape(session, url) for _, url in keys))
    out: dict[str, Scrape] = {node: {} for node in urls}
    for (node, _), result in zip(keys, results, strict=True):
        out[node].update(result)
    return out


def total(snapshot: Scrape, name: str, **match: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``match``."""
    result = 0.0
    for key, value in snapshot.items():
        base, _, labels = key.partition("{")
        if base != name:
            continue
        pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
        if all(pairs.get(k) == v for k, v in match.items()):
            result += value
    return result


def by_label(before: Scrape, after: Scrape, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in after.items():
        base, _, labels = key.partition("{")
        if base != name:
            continue
        pairs = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
        delta = value - before.get(key, 0.0)
        if delta:
            out[pairs.get(label, "")] = out.get(pairs.get(label, ""), 0.0) + delta
    return {k: round(v) for k, v in sorted(out.items())}


def histogram(before: Scrape, after: Scrape, name: str) -> dict[str, Any]:
    """A histogram's delta between two scrapes: count, mean, and bucket upper bounds of p50/p99."""
    buckets: dict[float, float] = {}
    for key, value in after.items():
        if not key.startswith(f"{name}_bucket{{"):
            continue
        le = re.search(r"le=([^,}]+)", key)
        if le is None:
            continue
        bound = float(le.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + value - before.get(key, 0.0)
    count = total(after, f"{name}_count") - total(before, f"{name}_count")
    sum_s = total(after, f"{name}_sum") - total(before, f"{name}_sum")
    if count <= 0:
        return {"count": 0}
    result: dict[str, Any] = {"count": int(count), "mean_ms": round(sum_s / count * 1e3, 2)}
    for q in (50, 99):
        bound = next((b for b, c in sorted(buckets.items()) if c >= count * q / 100), math.inf)
        result[f"p{q}_at_most_ms"] = None if math.isinf(bound) else round(bound * 1e3, 1)
    return result


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of cumulative ``le`` buckets, interpolated linearly inside
    the bucket it falls in, as PromQL's histogram_quantile does; None without samples.
    In the +Inf bucket: the highest finite bound."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def histogram_by_label(
    pairs: Iterable[tuple[Scrape, Scrape]], name: str, label: str
) -> dict[str, dict[str, Any]]:
    """A labelled histogram's delta over one or more (before, after) scrapes (summed, e.g.
    over nodes), per value of ``label``: count, mean and p50/p99 (from the buckets)."""
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for before, after in pairs:
        for key, value in after.items():
            base, _, labels = key.partition("{")
            if base not in (f"{name}_bucket", f"{name}_sum", f"{name}_count"):
                continue
            pairs_ = dict(p.split("=", 1) for p in labels.rstrip("}").split(",") if p)
            which = pairs_.get(label, "")
            delta = value - before.get(key, 0.0)
            if base.endswith("_bucket"):
                bound = float(pairs_["le"])
                per = buckets.setdefault(which, {})
                per[bound] = per.get(bound, 0.0) + delta
            elif base.endswith("_sum"):
                sums[which] = sums.get(which, 0.0) + delta
            else:
                counts[which] = counts.get(which, 0.0) + delta
    out: dict[str, dict[str, Any]] = {}
    for which, count in sorted(counts.items()):
        if count <= 0:
            out[which] = {"count": 0}
            continue
        p50 = bucket_quantile(buckets.get(which, {}), 0.50)
        p99 = bucket_quantile(buckets.get(which, {}), 0.99)
        out[which] = {
            "count": int(count),
            "mean_ms": round(sums.get(which, 0.0) / count * 1e3, 3),
            "p50_ms": None if p50 is None else round(p50 * 1e3, 3),
            "p99_ms": None if p99 is None else round(p99 * 1e3, 3),
        }
    return out


def node_metrics(before: Scrape, after: Scrape, seconds: float) -> dict[str, Any]:
    def delta(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    batches = delta("cretoai_consensus_batches_executed_total")
    vertices = delta("cretoai_consensus_vertices_executed_total")
    sent = delta("cretoai_transport_bytes_total", direction="out")
    return {
        "executed_vertices_per_s": round(vertices / seconds, 1),
        "executed_by_outcome": by_label(
            before, after, "cretoai_consensus_vertices_executed_total", "outcome"
        ),
        "batches": int(batches),
        "vertices_per_batch": round(vertices / batches, 1) if batches else None,
        "view_changes": int(delta("cretoai_consensus_view_changes_total")),
        "view_end": int(total(after, "cretoai_consensus_view")),
        "last_executed_seq_end": int(total(after, "cretoai_consensus_last_executed_seq")),
        "pool_size_end": int(total(after, "cretoai_consensus_pool_requests")),
        "inbox_depth_end": int(total(after, "cretoai_consensus_inbox_depth")),
        "consensus_finality": histogram(before, after, "cretoai_consensus_finality_seconds"),
        "execute": histogram(before, after, "cretoai_consensus_execute_seconds"),
        "persist": histogram(before, after, "cretoai_consensus_persist_seconds"),
        "stages": histogram_by_label([(before, after)], STAGE_METRIC, "stage"),
        "event_loop_lag": histogram_by_label([(before, after)], LOOP_LAG_METRIC, "service"),
        "gateway_finality_wait": histogram(before, after, "cretoai_gateway_finality_wait_seconds"),
        "signature_verifications": by_label(
            before, after, "cretoai_consensus_signature_verifications_total", "kind"
        ),
        "verify_cache_hits": int(delta("cretoai_consensus_vertex_verify_cache_hits_total")),
        "vertex_verify_cpu_cores": round(
            delta("cretoai_consensus_vertex_verify_cpu_seconds_total") / seconds, 4
        ),
        "storage_retries": int(delta("cretoai_consensus_storage_retries_total")),
        "outbound_dropped": int(delta("cretoai_consensus_outbound_dropped_total")),
        "byzantine_events": int(delta("cretoai_consensus_byzantine_events_total")),
        "gateway_submissions": by_label(
            before, after, "cretoai_gateway_submissions_total", "outcome"
        ),
        "msg_frame_bytes_out_per_s": round(sent / seconds),
        "msg_frame_bytes_out_per_executed_vertex": round(sent / vertices) if vertices else None,
        "transport_messages_out_per_s": round(
            delta("cretoai_transport_messages_total", direction="out") / seconds, 1
        ),
        "msg_frame_bytes_per_message_out": round(
            sent / delta("cretoai_transport_messages_total", direction="out")
        )
        if delta("cretoai_transport_messages_total", direction="out")
        else None,
        **datagram_metrics(before, after, seconds),
        "transport_dropped": by_label(before, after, "cretoai_transport_dropped_total", "reason"),
        "transport_reconnects": int(delta("cretoai_transport_reconnects_total")),
        "send_queue_depth_end": int(total(after, "cretoai_transport_send_queue_depth")),
        "storage": storage_metrics(before, after, batches),
    }


#: IPv4 (20) + UDP (8) header bytes of one datagram: not in the datagram byte counters.
IPV4_UDP_HEADER_BYTES = 28


def datagram_metrics(before: Scrape, after: Scrape, seconds: float) -> dict[str, Any]:
    """What one node's transport endpoint put on (and read from) its UDP socket over the
    window: every QUIC packet (ACK-only, retransmissions, handshakes), STUN and Retry, as
    UDP payload bytes (``cretoai_transport_datagram*_total``); None for a transport that
    does not expose them."""
    known = any(k.startswith("cretoai_transport_datagrams_sent_total") for k in after)
    if not known or seconds <= 0:
        return {
            "udp_datagrams_out_per_s": None,
            "udp_payload_bytes_out_per_s": None,
            "udp_datagrams_in_per_s": None,
            "udp_payload_bytes_in_per_s": None,
            "udp_payload_bytes_per_datagram_out": None,
        }

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    sent = delta("cretoai_transport_datagrams_sent_total")
    sent_bytes = delta("cretoai_transport_datagram_bytes_sent_total")
    return {
        "udp_datagrams_out_per_s": round(sent / seconds, 1),
        "udp_payload_bytes_out_per_s": round(sent_bytes / seconds),
        "udp_datagrams_in_per_s": round(
            delta("cretoai_transport_datagrams_received_total") / seconds, 1
        ),
        "udp_payload_bytes_in_per_s": round(
            delta("cretoai_transport_datagram_bytes_received_total") / seconds
        ),
        "udp_payload_bytes_per_datagram_out": round(sent_bytes / sent) if sent else None,
    }


def storage_metrics(before: Scrape, after: Scrape, batches: float) -> dict[str, Any]:
    """Synced writes of one node over the window: the storage writer's WAL syncs (one per
    group of writes, ``cretoai_storage_wal_sync_seconds``), its barrier writes
    (checkpoints, ``cretoai_storage_barrier_writes_total``), its writes by kind, the
    consensus persists (``cretoai_consensus_persist_seconds``: each one synced WriteState
    and/or one fdatasync of the signing mark) and the signing-mark syncs alone (count of
    ``cretoai_consensus_mark_sync_seconds``), per executed batch."""

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    syncs = delta("cretoai_storage_wal_sync_seconds_count")
    grouped = delta("cretoai_storage_writes_per_sync_sum")
    groups = delta("cretoai_storage_writes_per_sync_count")
    persists = delta("cretoai_consensus_persist_seconds_count")
    marks = delta("cretoai_consensus_mark_sync_seconds_count")
    scraped = any(k.startswith("cretoai_storage_") for k in after)
    # a consensus without the mark-sync metric (older build, or no mark file) says nothing
    marks_known = any(k.startswith("cretoai_consensus_mark_sync_seconds_count") for k in after)
    return {
        "scraped": scraped,
        "wal_syncs": int(syncs),
        "wal_syncs_per_batch": round(syncs / batches, 2) if batches and scraped else None,
        "writes_per_sync_mean": round(grouped / groups, 2) if groups else None,
        "writes_by_op": by_label(before, after, "cretoai_storage_write_apply_seconds_count", "op"),
        "wal_sync": histogram(before, after, "cretoai_storage_wal_sync_seconds"),
        "commit": histogram(before, after, "cretoai_storage_commit_seconds"),
        "consensus_persists": int(persists),
        "consensus_persists_per_batch": round(persists / batches, 2) if batches else None,
        "mark_file_syncs": int(marks) if marks_known else None,
        "mark_file_syncs_per_batch": round(marks / batches, 2) if batches and marks_known else None,
        "mark_sync": histogram(before, after, "cretoai_consensus_mark_sync_seconds"),
        "barrier_writes": int(delta("cretoai_storage_barrier_writes_total")) if scraped else None,
    }


# -- one step ---------------------------------------------------------------------------


@dataclass
class Outcomes:
    """What happened to each submission of a step (indexed like the pre-signed vertices)."""

    due: list[float]
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # HTTP status; 0 = no answer
    outcome: list[str] = field(default_factory=list)
    #: A refusal's message with its numbers elided (which part of the node refused).
    refusal: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.due)
        self.sent = [math.nan] * n
        self.done = [math.nan] * n
        self.status = [0] * n
        self.outcome = ["not_sent"] * n
        self.refusal = [""] * n


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, dict[str, float]]  # node -> service -> cpu seconds (by pid)
    pids: dict[str, dict[str, int]]
    machine_busy: float
    own_cpu: float
    metrics: dict[str, Scrape]
    #: Per node and service: its main thread's runqueue wait, seconds (schedstat).
    runqueue: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: CPU seconds of the trace receiver (tracing on), else 0.
    sink_cpu: float = 0.0
    #: The machine's steal time (a VM: CPU its host gave to others), seconds since boot.
    machine_steal: float = 0.0


async def snapshot(cluster: Cluster, session: aiohttp.ClientSession) -> Snapshot:
    metrics = await scrape_all(session, cluster.metrics_urls())
    pids = cluster.pids()
    cpu = {
        node: {s: proc_cpu_seconds(pid) or 0.0 for s, pid in services.items()}
        for node, services in pids.items()
    }
    runqueue = {
        node: {s: proc_runqueue_seconds(pid) for s, pid in services.items()}
        for node, services in pids.items()
    }
    return Snapshot(
        at=time.perf_counter(),
        cpu=cpu,
        runqueue=runqueue,
        pids=pids,
        machine_busy=machine_busy_seconds()[0],
        own_cpu=time.process_time(),
        metrics=metrics,
        sink_cpu=cluster.sink.cpu_seconds() if cluster.sink is not None else 0.0,
        machine_steal=machine_steal_seconds(),
    )


async def submit(
    session: aiohttp.ClientSession, url: str, body: bytes, index: int, out: Outcomes
) -> None:
    out.sent[index] = time.perf_counter()
    out.outcome[index] = "in_flight"
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            raw = await resp.read()
            out.status[index] = resp.status
            if resp.status == 200:
                match = STATUS_RE.search(raw)
                out.outcome[index] = match.group(1).decode() if match else "unparsed_200"
            else:
                try:
                    error = json.loads(raw)["error"]
                    out.outcome[index] = str(error["code"])
                    out.refusal[index] = refusal_kind(error)
                except (ValueError, KeyError, TypeError):
                    out.outcome[index] = f"http_{resp.status}"
    except TimeoutError:
        out.outcome[index] = "client_timeout"
    except aiohttp.ClientError as exc:
        out.outcome[index] = f"client_{type(exc).__name__}"
    out.done[index] = time.perf_counter()


def _vertex_status(batch_status: int, outcome: str) -> int:
    """A vertex's HTTP status inside a batch answer: the batch's unless it was 200; then
    200 for an accepted vertex, 429 for an overloaded refusal, 0 for another refusal
    (its code is the outcome)."""
    if batch_status != 200:
        return batch_status
    if outcome in ("finalized", "rejected", "pending"):
        return 200
    return 429 if outcome == "overloaded" else 0


async def submit_batch(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], indices: list[int], out: Outcomes
) -> None:
    """Several vertices in one ``POST /v1/vertices:batch?wait=true``: each gets the batch's
    answer time and its own outcome (the per-vertex result, in order)."""
    sent = time.perf_counter()
    for index in indices:
        out.sent[index] = sent
        out.outcome[index] = "in_flight"
    outcomes: list[str]
    refusals: list[str] = []
    status = 0
    try:
        async with session.post(
            url, data=b'{"vertices":[' + b",".join(bodies) + b"]}",
            headers={"Content-Type": "application/json"},
        ) as resp:  # fmt: skip
            raw = await resp.read()
            status = resp.status
            if resp.status == 200:
                results = json.loads(raw)["results"]
                outcomes = [
                    str(r["error"]["code"]) if "error" in r else str(r.get("status"))
                    for r in results
                ]
                refusals = [refusal_kind(r.get("error")) for r in results]
            else:
                try:
                    error = json.loads(raw)["error"]
                    outcomes = [str(error["code"])] * len(indices)
                    refusals = [refusal_kind(error)] * len(indices)
                except (ValueError, KeyError, TypeError):
                    outcomes = [f"http_{resp.status}"] * len(indices)
    except TimeoutError:
        outcomes = ["client_timeout"] * len(indices)
    except aiohttp.ClientError as exc:
        outcomes = [f"client_{type(exc).__name__}"] * len(indices)
    except (ValueError, KeyError, TypeError):
        outcomes = ["unparsed_200"] * len(indices)
    done = time.perf_counter()
    for index, outcome in zip(indices, outcomes, strict=False):
        out.outcome[index] = outcome
        out.status[index] = _vertex_status(status, outcome)
        out.done[index] = done
    for index, refusal in zip(indices, refusals, strict=False):
        out.refusal[index] = refusal


#: A refused call's gRPC code as the HTTP status the REST API gives for it (docs/gateway.md).
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: A per-vertex error's gRPC status (google.rpc.Code numbering) as an HTTP status.
_CODE_TO_HTTP = {code.value[0]: status for code, status in GRPC_TO_HTTP.items()}


SubmitCall = grpc.aio.UnaryUnaryMultiCallable[bytes, gateway_pb2.GatewaySubmitBatchResponse]


def grpc_batch_request(bodies: Sequence[bytes]) -> bytes:
    """A ``GatewaySubmitBatchRequest`` with ``wait`` set, from serialized vertices (their
    bytes go on the wire as they are: no parse and re-serialisation in the generator)."""
    parts = [length_delimited(1, body) for body in bodies]  # field 1: vertices
    parts.append(b"\x10\x01")  # field 2 (wait) = true
    return b"".join(parts)


def grpc_outcome(result: gateway_pb2.GatewaySubmitResult) -> tuple[str, int]:
    """One vertex's outcome in a ``SubmitVertices`` answer and its HTTP-like status (the
    REST outcome names: "finalized", "rejected", "pending", or the error's code)."""
    if result.HasField("error"):
        status = _CODE_TO_HTTP.get(result.error.status, 0)
        return result.error.code, status
    name = vertex_pb2.VertexStatus.Name(result.status).removeprefix("VERTEX_STATUS_").lower()
    return name, 200


async def submit_batch_grpc(
    call: SubmitCall,
    bodies: list[bytes],
    indices: list[int],
    out: Outcomes,
    timeout: float,
) -> None:
    """Several vertices in one public gRPC ``SubmitVertices`` with ``wait``: each gets the
    call's answer time and its own outcome, as :func:`submit_batch`."""
    sent = time.perf_counter()
    for index in indices:
        out.sent[index] = sent
        out.outcome[index] = "in_flight"
    try:
        reply = await call(grpc_batch_request(bodies), timeout=timeout)
        pairs = [grpc_outcome(r) for r in reply.results]
        outcomes = [o for o, _ in pairs]
        statuses = [s for _, s in pairs]
        refusals = [refusal_kind({"message": r.error.message}) for r in reply.results]
    except grpc.aio.AioRpcError as exc:
        status = GRPC_TO_HTTP.get(exc.code(), 0)
        kind = "overloaded" if status == 429 else f"grpc_{exc.code().name.lower()}"
        outcomes = [kind] * len(indices)
        statuses = [status] * len(indices)
        refusals = [refusal_kind({"message": exc.details() or ""})] * len(indices)
    done = time.perf_counter()
    for index, outcome, status, refusal in zip(indices, outcomes, statuses, refusals, strict=False):
        out.outcome[index] = outcome
        out.status[index] = status
        out.refusal[index] = refusal
        out.done[index] = done


def client_description(args: argparse.Namespace) -> str:
    """How the run's load generator sends (recorded in the result's parameters)."""
    grouped = (
        f"up to {args.client_batch} vertices per request per gateway (sent when full or "
        f"when the first has waited {args.client_linger_ms:g} ms), open loop"
    )
    if args.api == "grpc":
        return (
            f"grpc.aio, the public gRPC SubmitVertices with wait, {grouped}, "
            "one channel per gateway"
        )
    if args.client_batch == 1:
        return (
            "aiohttp, POST /v1/vertices?wait=true, open loop, round-robin over every gateway, "
            "no connection limit"
        )
    return f"aiohttp, POST /v1/vertices:batch?wait=true with {grouped}, no connection limit"


def runqueue_wait_s() -> float:
    """Time this process's main thread spent runnable but waiting for a CPU (schedstat)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Sampler:
    """Once a second during a step: each node's RSS (summed over its processes; the maximum
    is kept) and a few consensus/transport figures (a time series, to see stalls and
    storms); and, every 20 ms, how late the generator's event loop wakes up."""

    def __init__(
        self, cluster: Cluster, session: aiohttp.ClientSession, t0: float, *, distinct: bool
    ) -> None:
        self.cluster = cluster
        self._sample_distinct = distinct
        self.session = session
        self.t0 = t0
        self.rss_peak: dict[str, float] = {}
        self.series: list[dict[str, Any]] = []
        #: Every DISTINCT_EVERY_S: ``{"t": s, node: MB each page once (None: unreadable)}``.
        self.distinct: list[dict[str, Any]] = []
        self.loop_lag: list[float] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._previous: dict[str, tuple[float, float, float]] = {}
        self._machine: tuple[float, float, float] | None = None  # (at, busy s, steal s)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._rss()),
            asyncio.create_task(self._scrapes()),
            asyncio.create_task(self._lag()),
        ]
        if self._sample_distinct:
            self._tasks.append(asyncio.create_task(self._distinct()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _lag(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.02)
            self.loop_lag.append(time.perf_counter() - before - 0.02)

    async def _pause(self, since: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._stop.wait(), max(0.05, 1.0 - (time.perf_counter() - since))
            )

    async def _rss(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for node, services in self.cluster.pids().items():
                rss = sum(proc_rss_mb(pid) or 0.0 for pid in services.values())
                self.rss_peak[node] = max(self.rss_peak.get(node, 0.0), rss)
            await self._pause(now)

    async def _distinct(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            row: dict[str, Any] = {}
            for node, services in self.cluster.pids().items():
                row[node] = await asyncio.to_thread(distinct_resident_mb, services.values())
            row["t"] = round(time.perf_counter() - self.t0, 1)
            self.distinct.append(row)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(),
                    max(0.05, DISTINCT_EVERY_S - (time.perf_counter() - started)),
                )

    async def _scrapes(self) -> None:
        """The metrics endpoints answer late when a service is starved: rows are then sparse."""
        only = "?" + "&".join(f"name[]={name}" for name in SERIES_SAMPLES)
        urls = {
            n: {k: u[k] + only for k in ("consensus", "transport")}
            for n, u in self.cluster.metrics_urls().items()
        }
        while not self._stop.is_set():
            started = time.perf_counter()
            scrapes = await scrape_all(self.session, urls)
            now = time.perf_counter()
            row: dict[str, Any] = {"t": round(now - self.t0, 1)}
            busy, steal = machine_busy_seconds()[0], machine_steal_seconds()
            if self._machine is not None and now > self._machine[0]:
                span = now - self._machine[0]
                row["machine"] = {
                    "busy_cores": round((busy - self._machine[1]) / span, 2),
                    "steal_cores": round((steal - self._machine[2]) / span, 2),
                }
            self._machine = (now, busy, steal)
            pids = self.cluster.pids()
            for node, snap in scrapes.items():
                if not snap:
                    row[node] = None
                    continue
                sent = total(snap, "cretoai_transport_bytes_total", direction="out")
                wire = total(snap, "cretoai_transport_datagram_bytes_sent_total")
                rss = {
                    service: round(proc_rss_mb(pid) or 0.0, 1)
                    for service, pid in pids.get(node, {}).items()
                }
                last_t, last_sent, last_wire = self._previous.get(node, (now, sent, wire))
                self._previous[node] = (now, sent, wire)
                row[node] = {
                    "seq": int(total(snap, "cretoai_consensus_last_executed_seq")),
                    "view": int(total(snap, "cretoai_consensus_view")),
                    "pool": int(total(snap, "cretoai_consensus_pool_requests")),
                    "inbox": int(total(snap, "cretoai_consensus_inbox_depth")),
                    "send_queue": int(total(snap, "cretoai_transport_send_queue_depth")),
                    "send_queue_mb": round(
                        total(snap, "cretoai_transport_send_queue_bytes") / 1e6, 1
                    ),
                    "out_mb_s": round((sent - last_sent) / (now - last_t) / 1e6, 2)
                    if now > last_t
                    else None,
                    "wire_out_mb_s": round((wire - last_wire) / (now - last_t) / 1e6, 2)
                    if now > last_t
                    else None,
                    "dropped_total": int(total(snap, "cretoai_transport_dropped_total")),
                    "rss_mb": round(sum(rss.values()), 1),
                    "rss_mb_by_service": rss,
                }
            self.series.append(row)
            await self._pause(started)


async def wait_quiet(
    cluster: Cluster, session: aiohttp.ClientSession, timeout: float
) -> dict[str, Any]:
    """Until every node has executed the same last seq and holds an empty pool (bounded)."""
    started = time.perf_counter()
    seqs: list[int] = []
    while time.perf_counter() - started < timeout:
        seqs, pools = [], []
        for i in range(cluster.nodes):
            try:
                async with session.get(
                    cluster.gateway(i) + "/v1/status", timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    status = await resp.json()
                seqs.append(int(status["last_executed_seq"]))
                pools.append(int(status["pool_size"]))
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                seqs.append(-1)
                pools.append(-1)
        if len(set(seqs)) == 1 and seqs[0] >= 0 and not any(pools):
            return {
                "quiet": True,
                "seconds": round(time.perf_counter() - started, 2),
                "seq": seqs[0],
            }
        await asyncio.sleep(0.25)
    return {"quiet": False, "seconds": round(time.perf_counter() - started, 2), "seqs": seqs}


async def run_step(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    signer: Signer,
    *,
    rate: float,
    warmup: float,
    duration: float,
    parents: Sequence[str],
    drain_timeout: float,
    quiesce_timeout: float,
    verify_bound: dict[str, Any] | None = None,
    client_batch: int = 1,
    client_linger: float = 0.02,
    api: str = "rest",
) -> tuple[dict[str, Any], list[str]]:
    """One offered load. Returns the step's figures and hashes usable as the next parents.

    ``client_batch`` > 1: each gateway's vertices go ``client_batch`` at a time in
    ``POST /v1/vertices:batch?wait=true``, sent when the last is due or when the first
    has waited ``client_linger`` s (the wait counts in the latency: it is from due time).
    ``api="grpc"``: the same, each request a public gRPC ``SubmitVertices`` with ``wait``
    (one vertex per call when ``client_batch`` is 1).
    """
    count = math.ceil(rate * (warmup + duration))
    t_sign = time.perf_counter()
    encoding = "protobuf" if api == "grpc" else "json"
    signed = await signer.sign(count, cluster.nodes, parents, encoding)
    sign_s = time.perf_counter() - t_sign
    urls = [cluster.gateway(i) + "/v1/vertices?wait=true" for i in range(cluster.nodes)]
    load_before = os.getloadavg()[0]
    await asyncio.sleep(1.0)  # let the machine settle after signing

    t0 = time.perf_counter() + 0.2
    out = Outcomes(due=[t0 + i / rate for i in range(count)])
    window = (t0 + warmup, t0 + warmup + duration)
    # only where the memory target is judged: reading 16 processes' page tables every
    # DISTINCT_EVERY_S showed in the latency (p99 at 10/s 148-165 ms against 92-133)
    long_step = duration >= RSS_FLAT_MIN_STEP_S * 0.99
    sampler = Sampler(cluster, session, t0, distinct=long_step)
    sampler.start()
    runqueue_before = runqueue_wait_s()
    snaps: list[Snapshot] = []

    async def window_edges() -> None:
        for edge in window:
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            snaps.append(await snapshot(cluster, session))

    edges = asyncio.create_task(window_edges())
    tasks: set[asyncio.Task[None]] = set()
    lag: list[float] = []
    capped = 0
    batch_urls = [cluster.gateway(i) + "/v1/vertices:batch?wait=true" for i in range(cluster.nodes)]
    buffers: list[list[int]] = [[] for _ in range(cluster.nodes)]
    request_sizes: list[int] = []  # vertices per request sent
    channels = (
        [grpc.aio.insecure_channel(c.gateway.grpc) for c in cluster.configs]
        if api == "grpc"
        else []
    )
    calls: list[SubmitCall] = [
        ch.unary_unary(
            "/cretoai.v1.Gateway/SubmitVertices",
            request_serializer=None,
            response_deserializer=gateway_pb2.GatewaySubmitBatchResponse.FromString,
        )
        for ch in channels
    ]
    call_timeout = cluster.configs[0].gateway.wait_timeout_ms / 1000 + 10

    def flush(gateway: int) -> None:
        indices, buffers[gateway] = buffers[gateway], []
        request_sizes.append(len(indices))
        bodies = [signed[i][0] for i in indices]
        task = asyncio.create_task(
            submit_batch_grpc(calls[gateway], bodies, indices, out, call_timeout)
            if calls
            else submit_batch(session, batch_urls[gateway], bodies, indices, out)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for index, (body, _) in enumerate(signed):
        delay = out.due[index] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append(time.perf_counter() - out.due[index])
        if len(tasks) >= INFLIGHT_CAP:
            out.outcome[index] = "generator_cap"
            capped += 1
            continue
        if client_batch > 1 or calls:
            gateway = index % len(urls)
            buffers[gateway].append(index)
            now = time.perf_counter()
            for g, held in enumerate(buffers):
                if held and (len(held) >= client_batch or now - out.due[held[0]] >= client_linger):
                    flush(g)
            continue
        request_sizes.append(1)
        task = asyncio.create_task(submit(session, urls[index % len(urls)], body, index, out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for g, held in enumerate(buffers):
        if held:
            flush(g)
    await edges
    if tasks:
        _, still = await asyncio.wait(set(tasks), timeout=drain_timeout)
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
    for channel in channels:
        await channel.close()
    out.outcome = ["no_answer_in_drain" if o == "in_flight" else o for o in out.outcome]
    await sampler.stop()
    runqueue = runqueue_wait_s() - runqueue_before
    rss_peak = sampler.rss_peak
    quiet = await wait_quiet(cluster, session, timeout=quiesce_timeout)

    start, end = snaps
    seconds = end.at - start.at
    in_window = [i for i, due in enumerate(out.due) if window[0] <= due < window[1]]
    finalized_in_window = [i for i in in_window if out.outcome[i] == "finalized"]
    latencies = [out.done[i] - out.due[i] for i in finalized_in_window]
    completed_in_window = sum(
        1
        for i, outcome in enumerate(out.outcome)
        if outcome == "finalized" and window[0] <= out.done[i] < window[1]
    )
    throughput = completed_in_window / duration
    statuses = Counter(str(out.status[i]) for i in in_window if out.outcome[i] != "not_sent")
    outcomes = Counter(out.outcome[i] for i in in_window)
    all_outcomes = Counter(out.outcome)
    nodes: dict[str, Any] = {}
    for node in cluster.names:
        cpu_by_service: dict[str, float | None] = {}
        for service in reversed(registry.NAMES):  # stop order: the gateway first
            pid_a = start.pids.get(node, {}).get(service)
            pid_b = end.pids.get(node, {}).get(service)
            if pid_a is None or pid_a != pid_b:
                cpu_by_service[service] = None  # restarted: the delta is meaningless
                continue
            spent = end.cpu[node][service] - start.cpu[node][service]
            cpu_by_service[service] = round(spent / seconds, 3)
        rss_by_service = {
            s: round(proc_rss_mb(pid) or 0.0, 1) for s, pid in end.pids.get(node, {}).items()
        }
        known = [v for v in cpu_by_service.values() if v is not None]
        waited: dict[str, float | None] = {}
        for service, before in start.runqueue.get(node, {}).items():
            after = end.runqueue.get(node, {}).get(service)
            same = start.pids.get(node, {}).get(service) == end.pids.get(node, {}).get(service)
            waited[service] = (
                round((after - before) / seconds * 1e3, 1)
                if before is not None and after is not None and same
                else None
            )
        nodes[node] = {
            "cpu_cores": round(sum(known), 3),
            "cpu_cores_by_service": cpu_by_service,
            "runqueue_wait_ms_per_s_by_service": waited,
            "rss_mb_max": round(rss_peak.get(node, 0.0), 1),
            "rss_mb_end": round(sum(rss_by_service.values()), 1),
            "rss_mb_end_by_service": rss_by_service,
            # the same moment, each physical page counted once (shared code once)
            "resident_mb_end_distinct": distinct_resident_mb(end.pids.get(node, {}).values()),
            "rss_trend": rss_trend(sampler.series, node, window[0] - t0, window[1] - t0),
            "resident_distinct_trend": distinct_trend(
                sampler.distinct, node, window[0] - t0, window[1] - t0
            ),
            "metrics": node_metrics(
                start.metrics.get(node, {}), end.metrics.get(node, {}), seconds
            ),
        }
    per_vertex = per_finalized_vertex(nodes, throughput, seconds)
    cluster_cores = sum(n["cpu_cores"] for n in nodes.values())
    own_cores = (end.own_cpu - start.own_cpu) / seconds
    sink_cores = (end.sink_cpu - start.sink_cpu) / seconds
    busy_cores = (end.machine_busy - start.machine_busy) / seconds
    steal_cores = (end.machine_steal - start.machine_steal) / seconds
    others = busy_cores - steal_cores - cluster_cores - own_cores - sink_cores
    finalized_share = len(finalized_in_window) / len(in_window) if in_window else 0.0
    latency = summary_ms(latencies)
    p99 = latency["p99_ms"]
    sustained = bool(
        throughput >= SUSTAIN_SHARE * rate
        and p99 is not None
        and p99 <= SUSTAIN_P99_MS
        and finalized_share >= SUSTAIN_FINALIZED_SHARE
    )
    executed = [n["metrics"]["executed_vertices_per_s"] for n in nodes.values()]
    timeline = []
    for second in range(math.ceil(warmup + duration) + int(drain_timeout) + 1):
        lo, hi = t0 + second, t0 + second + 1
        done_here = [
            out.done[i] - out.due[i]
            for i in range(count)
            if out.outcome[i] == "finalized" and lo <= out.done[i] < hi
        ]
        if not done_here and lo > window[1]:
            break
        timeline.append(
            {
                "t": second,
                "finalized": len(done_here),
                "p99_ms": round(percentile(done_here, 99) * 1e3, 1) if done_here else None,
            }
        )
    step = {
        "offered_rate": rate,
        "window_s": round(seconds, 3),
        "warmup_s": warmup,
        "submitted_in_window": sum(1 for i in in_window if out.outcome[i] != "not_sent"),
        "submitted_rate": round(
            sum(1 for i in in_window if out.outcome[i] not in ("not_sent", "generator_cap"))
            / duration,
            1,
        ),
        "finalized_throughput": round(throughput, 1),
        "finalized_share_of_offered": round(throughput / rate, 3),
        "finalized_share_of_window_submissions": round(finalized_share, 4),
        "executed_vertices_per_s_by_node": executed,
        "latency": latency,
        "sustained": sustained,
        "http_status": dict(sorted(statuses.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "outcomes_whole_step": dict(sorted(all_outcomes.items())),
        "errors_429": statuses.get("429", 0),
        "errors_503": statuses.get("503", 0),
        "errors_504": statuses.get("504", 0),
        "time_to_429_ms": summary_ms(
            [out.done[i] - out.sent[i] for i in in_window if out.status[i] == 429]
        ),
        "time_to_429_from_due_ms": summary_ms(
            [out.done[i] - out.due[i] for i in in_window if out.status[i] == 429]
        ),
        "time_to_429_by_refusal": time_to_429_by_refusal(out, in_window),
        **per_vertex,
        "verify_bound_ratio": verify_ratio(throughput, verify_bound),
        "generator": {
            "presign_s": round(sign_s, 2),
            "presigned": count,
            "send_lag_ms": summary_ms(lag),
            "event_loop_lag_ms": summary_ms(sampler.loop_lag),
            "runqueue_wait_s": round(runqueue, 2),
            "inflight_capped": capped,
            "cpu_cores": round(own_cores, 3),
            # what --client-batch achieved: a linger shorter than the gap between one
            # gateway's vertices sends them one at a time whatever the batch size
            "vertices_per_request": round(sum(request_sizes) / len(request_sizes), 2)
            if request_sizes
            else None,
        },
        "cpu": {
            "cluster_cores": round(cluster_cores, 3),
            "generator_cores": round(own_cores, 3),
            "machine_busy_cores": round(busy_cores, 3),
            "steal_cores": round(steal_cores, 3),
            "trace_receiver_cores": round(sink_cores, 3),
            "other_processes_cores": round(max(0.0, others), 3),
            "load_average_1m_before": round(load_before, 2),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "machine_shared": others > OTHER_LOAD_WARNING,
        "stages": histogram_by_label(
            [(start.metrics.get(n, {}), end.metrics.get(n, {})) for n in cluster.names],
            STAGE_METRIC,
            "stage",
        ),
        "event_loop_lag": histogram_by_label(
            [(start.metrics.get(n, {}), end.metrics.get(n, {})) for n in cluster.names],
            LOOP_LAG_METRIC,
            "service",
        ),
        "runqueue_wait_ms_per_s": mean_by_service(nodes, "runqueue_wait_ms_per_s_by_service"),
        "nodes": nodes,
        "quiesce": quiet,
        "restarts": cluster.restarts(),
        "timeline_per_s": timeline,
        "cluster_series_per_s": sampler.series,
    }
    final_hashes = [signed[i][1] for i in range(count) if out.outcome[i] == "finalized"]
    return step, final_hashes[-64:]


def per_vertex(per_s: float | None, throughput: float, places: int = 0) -> float | None:
    """A rate per second over the finalized throughput; None without either."""
    if per_s is None or not throughput:
        return None
    value = round(per_s / throughput, places)
    return value if places else int(value)


def cluster_sum(by_node: dict[str, float | None], places: int = 0) -> float | None:
    """The sum over the nodes; None when a node has no figure (a partial sum would mislead)."""
    values = list(by_node.values())
    if not values or any(v is None for v in values):
        return None
    value = round(sum(v for v in values if v is not None), places)
    return value if places else int(value)


def mean_known(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None, rounded to 2 places; None when none is."""
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None


def per_finalized_vertex(
    nodes: dict[str, Any], throughput: float, seconds: float
) -> dict[str, Any]:
    """What each finalized vertex cost: CPU ms per node and service (also set in ``nodes``),
    bytes and datagrams the transports put on the wire (UDP payloads, and the MSG frames
    inside them), synced writes per executed batch. Per node in ``nodes``;
    returns the step-level figures (cluster totals, per service summed over the nodes)."""

    def per(value: float | None, scale: float = 1.0) -> float | None:
        return round(value / throughput * scale, 2) if value is not None and throughput else None

    by_service_total: dict[str, float] = {}
    unknown: set[str] = set()
    wire: dict[str, float | None] = {}
    datagrams: dict[str, float | None] = {}
    frames: dict[str, float | None] = {}
    for name, figures in nodes.items():
        figures["cpu_ms_per_finalized_vertex"] = per(figures["cpu_cores"], 1e3)
        figures["cpu_ms_per_finalized_vertex_by_service"] = {
            service: per(cores, 1e3) for service, cores in figures["cpu_cores_by_service"].items()
        }
        for service, cores in figures["cpu_cores_by_service"].items():
            if cores is None:
                unknown.add(service)
            else:
                by_service_total[service] = by_service_total.get(service, 0.0) + cores
        metrics = figures["metrics"]
        figures["wire_bytes_out_per_finalized_vertex"] = wire[name] = per_vertex(
            metrics.get("udp_payload_bytes_out_per_s"), throughput
        )
        figures["datagrams_out_per_finalized_vertex"] = datagrams[name] = per_vertex(
            metrics.get("udp_datagrams_out_per_s"), throughput, places=2
        )
        figures["msg_frame_bytes_out_per_finalized_vertex"] = frames[name] = per_vertex(
            metrics.get("msg_frame_bytes_out_per_s"), throughput
        )
    storage = {n: f["metrics"]["storage"] for n, f in nodes.items()}
    syncs = [s["wal_syncs_per_batch"] for s in storage.values()]
    persists = [s["consensus_persists_per_batch"] for s in storage.values()]
    marks = [s.get("mark_file_syncs_per_batch") for s in storage.values()]
    cluster_cores = sum(f["cpu_cores"] for f in nodes.values())
    verify_cores = [f["metrics"].get("vertex_verify_cpu_cores") for f in nodes.values()]
    verify_total = None if None in verify_cores else sum(verify_cores)
    verified = [
        f["metrics"].get("signature_verifications", {}).get("vertex") for f in nodes.values()
    ]
    verified_total = None if None in verified else sum(verified)
    wire_total = cluster_sum(wire)
    datagram_total = cluster_sum(datagrams, places=2)
    return {
        "cpu_ms_per_finalized_vertex_cluster": per(cluster_cores, 1e3),
        "cpu_ms_per_finalized_vertex_by_service": {
            service: None if service in unknown else per(cores, 1e3)
            for service, cores in by_service_total.items()
        },
        # Verification's share of the cluster's CPU, over the same seconds: what the
        # share of the verify bound would be with the bound measured in place and at
        # the same moments (the bound before the run drifts with the machine).
        "vertex_verify_cpu_ms_per_finalized_vertex": per(verify_total, 1e3),
        "vertex_verify_share_of_cpu": round(verify_total / cluster_cores, 3)
        if verify_total is not None and cluster_cores
        else None,
        # The share of the verify bound with the bound's cost per verification measured in
        # this run (vertex verification CPU / vertex verifications): nodes x that cost /
        # the cluster's CPU per finalized vertex. What the ratio would be if the run's
        # per-vertex costs filled the machine's cores as the bound's workers do; immune
        # to the machine's speed drifting between the bound's measurement and the run.
        "verify_bound_ratio_in_run": round(
            len(nodes) * (verify_total * seconds / verified_total) / (cluster_cores / throughput),
            3,
        )
        if verify_total is not None and verified_total and cluster_cores and throughput
        else None,
        "wire_bytes_per_finalized_vertex": {
            "cluster": wire_total,
            "cluster_with_ipv4_udp_headers": None
            if wire_total is None or datagram_total is None
            else round(wire_total + IPV4_UDP_HEADER_BYTES * datagram_total),
            "by_node": wire,
        },
        "datagrams_per_finalized_vertex": {"cluster": datagram_total, "by_node": datagrams},
        "msg_frame_bytes_per_finalized_vertex": {"cluster": cluster_sum(frames), "by_node": frames},
        "synced_writes_per_batch": {
            "storage_wal_syncs_mean": mean_known(syncs),
            "storage_wal_syncs_by_node": dict(zip(storage, syncs, strict=True)),
            "consensus_persists_mean": mean_known(persists),
            "consensus_persists_by_node": dict(zip(storage, persists, strict=True)),
            "mark_file_syncs_mean": mean_known(marks),
            "mark_file_syncs_by_node": dict(zip(storage, marks, strict=True)),
            "storage_barrier_writes": sum(s.get("barrier_writes") or 0 for s in storage.values()),
        },
    }


async def anchors(
    cluster: Cluster, session: aiohttp.ClientSession, signer: Signer
) -> tuple[list[str], dict[str, Any]]:
    """Vertices without parents, finalized everywhere: the first step's parents."""
    signed = await signer.sign(ANCHORS, cluster.nodes, [])
    codes: Counter[int] = Counter()
    final: list[str] = []
    for index, (body, h) in enumerate(signed):
        url = cluster.gateway(index % cluster.nodes) + "/v1/vertices?wait=true"
        for _ in range(5):
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    codes[resp.status] += 1
                    if resp.status == 200:
                        final.append(h)
                        break
            except (aiohttp.ClientError, TimeoutError):
                codes[0] += 1
            await asyncio.sleep(1.0)
    quiet = await wait_quiet(cluster, session, timeout=60)
    if not final:
        raise RuntimeError(f"no anchor vertex was finalized (HTTP statuses {dict(codes)})")
    return final, {"finalized": len(final), "http_status": dict(codes), "quiesce": quiet}


async def idle_baseline(
    cluster: Cluster, session: aiohttp.ClientSession, seconds: float
) -> dict[str, Any]:
    """CPU and RSS per node with no load at all (the cost of timers, keep-alives, pings)."""
    start = await snapshot(cluster, session)
    await asyncio.sleep(seconds)
    end = await snapshot(cluster, session)
    elapsed = end.at - start.at
    nodes: dict[str, dict[str, Any]] = {}
    for node, services in end.pids.items():
        cores = {
            s: round((end.cpu[node][s] - start.cpu[node].get(s, 0.0)) / elapsed, 3)
            for s in services
        }
        rss = {s: round(proc_rss_mb(pid) or 0.0, 1) for s, pid in services.items()}
        nodes[node] = {
            "cpu_cores": round(sum(cores.values()), 3),
            "cpu_cores_by_service": cores,
            "rss_mb": round(sum(rss.values()), 1),
            "rss_mb_by_service": rss,
        }
    cluster_cores = sum(n["cpu_cores"] for n in nodes.values())
    busy = (end.machine_busy - start.machine_busy) / elapsed
    steal = (end.machine_steal - start.machine_steal) / elapsed
    own = (end.own_cpu - start.own_cpu) / elapsed
    return {
        "seconds": round(elapsed, 2),
        "nodes": nodes,
        "cluster_cores": round(cluster_cores, 3),
        "machine_busy_cores": round(busy, 3),
        "steal_cores": round(steal, 3),
        "other_processes_cores": round(max(0.0, busy - steal - cluster_cores - own), 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def verify_bound_now(args: argparse.Namespace, backend: str, when: str) -> dict[str, Any]:
    """The verify bound measured now (off the event loop), saying ``when`` in the result."""
    print(f"verify bound, {when} ({args.verify_seconds:g} s) …", file=sys.stderr, flush=True)
    bound = await asyncio.to_thread(measure_verify_bound, args.verify_seconds, args.nodes, backend)
    bound["measured"] = f"{when} (nothing else of this run running)"
    return bound


def raise_priority(step: int) -> dict[str, Any]:
    """Favour the generator's main thread by ``step`` nice levels (after the cluster started,
    so that the services keep the default), so that its open-loop schedule holds.

    With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``)
    the CPU is shared between sessions first, and each service runs in a session of its
    own: a thread's nice value then only matters inside its session, so the session's
    autogroup nice is lowered too (``/proc/self/autogroup``). Needs the privilege;
    reports what was applied."""
    applied: dict[str, Any] = {"requested": -step, "thread_nice": None, "autogroup": None}
    if step <= 0:
        return applied
    with contextlib.suppress(OSError):
        applied["thread_nice"] = os.nice(-step)
    autogroup = Path("/proc/self/autogroup")
    with contextlib.suppress(OSError):
        autogroup.write_text(f"{-step}\n")
    with contextlib.suppress(OSError):
        applied["autogroup"] = autogroup.read_text().strip()
    with contextlib.suppress(OSError):
        applied["autogroup_enabled"] = (
            Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        )
    return applied


async def wait_ready(cluster: Cluster, session: aiohttp.ClientSession, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    for i in range(cluster.nodes):
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(cluster.gateway(i) + "/readyz") as resp:
                    if resp.status == 200:
                        break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{cluster.names[i]} not ready after {timeout:.0f}s")
            await asyncio.sleep(0.25)


# -- the run ----------------------------------------------------------------------------


def targets(
    steps: list[dict[str, Any]], sustained: float | None, maximum: float | None = None
) -> dict[str, Any]:
    """The targets, from the run's steps. ``maximum``: the maximum finalized rate, for the
    memory target at half of it."""
    by_rate = {s["offered_rate"]: s for s in steps}
    at_p99 = by_rate.get(TARGET_P99_AT_RATE)
    at_cpu = by_rate.get(TARGET_CORES_AT_RATE)
    rss = max((n["rss_mb_max"] for s in steps for n in s["nodes"].values()), default=None)
    p99 = at_p99["latency"]["p99_ms"] if at_p99 else None
    cores = max(n["cpu_cores"] for n in at_cpu["nodes"].values()) if at_cpu else None
    highest = max((s["offered_rate"] for s in steps), default=0)
    return {
        "finality_p99_ms_at_200": {
            "target": f"<= {TARGET_P99_MS:g} ms at {TARGET_P99_AT_RATE} vertices/s",
            "measured": p99,
            "met": p99 is not None and p99 <= TARGET_P99_MS,
            **({} if at_p99 else {"note": f"no step at {TARGET_P99_AT_RATE} vertices/s"}),
        },
        "sustained_vertices_per_s": {
            "target": f">= {TARGET_SUSTAINED:g} vertices/s",
            "measured": sustained,
            "met": sustained is not None and sustained >= TARGET_SUSTAINED,
            **(
                {"note": f"the highest offered load was {highest} vertices/s"}
                if highest < TARGET_SUSTAINED
                else {}
            ),
        },
        "rss_mb_per_node": {
            "target": f"<= {TARGET_RSS_MB:g} MB per node (4 services), at every offered load",
            "measured": rss,
            "met": rss is not None and rss <= TARGET_RSS_MB,
        },
        "rss_mb_flat_at_half_max": rss_flat_at_half_max(steps, maximum),
        "cpu_cores_per_node_at_200": {
            "target": f"<= {TARGET_CORES:g} core per node at {TARGET_CORES_AT_RATE} vertices/s",
            "measured": cores,
            "met": cores is not None and cores <= TARGET_CORES,
            **({} if at_cpu else {"note": f"no step at {TARGET_CORES_AT_RATE} vertices/s"}),
        },
    }


def overload_summary(step: dict[str, Any], base: float, factor: float) -> dict[str, Any]:
    """An overload step (``factor`` x the sustained maximum ``base``): the finalized throughput
    as a share of ``base``, and whether what was not finalized was answered 429, at once."""
    finalized = step["outcomes"].get("finalized", 0)
    submitted = step["submitted_in_window"]
    not_finalized = max(0, submitted - finalized)
    answered_429 = step["http_status"].get("429", 0)
    share_429 = answered_429 / not_finalized if not_finalized else None
    p99_429 = step["time_to_429_ms"]["p99_ms"]
    others = {
        status: count
        for status, count in step["http_status"].items()
        if status not in ("200", "429") and count
    }
    return {
        "factor": factor,
        "sustained_max": base,
        "offered_rate": step["offered_rate"],
        "finalized_throughput": step["finalized_throughput"],
        "finalized_share_of_sustained_max": round(step["finalized_throughput"] / base, 3)
        if base
        else None,
        "submitted_in_window": submitted,
        "not_finalized": not_finalized,
        "answered_429": answered_429,
        "answered_429_share_of_not_finalized": None if share_429 is None else round(share_429, 4),
        "other_statuses": others,
        "time_to_429_p50_ms": step["time_to_429_ms"]["p50_ms"],
        "time_to_429_p99_ms": p99_429,
        "time_to_429_by_refusal": step.get("time_to_429_by_refusal", {}),
        # None: everything was finalized, nothing to shed (not an overload after all)
        "shed_at_once": None
        if share_429 is None
        else bool(share_429 >= SHED_SHARE and p99_429 is not None and p99_429 <= SHED_AT_ONCE_MS),
        "latency_p99_ms_of_finalized": step["latency"]["p99_ms"],
    }


async def overload_step(
    args: argparse.Namespace,
    steps: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    latest_start: float,
    one_step: Callable[[float, bool], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """``--overload FACTOR``: one more step at FACTOR x the sustained maximum (this run's, or
    ``--overload-base``); its summary is also the step's ``overload``."""
    factor = args.overload
    if args.overload_base is not None:
        base, source = float(args.overload_base), "--overload-base"
    else:
        passing = [s["offered_rate"] for s in steps if s["sustained"]]
        if not passing:
            reason = "overload: no step was sustained, nothing to multiply (see --overload-base)"
            skipped.append({"offered_rate": None, "reason": reason})
            return {"factor": factor, "skipped": reason}
        base, source = float(max(passing)), "max_sustained_throughput of this run's steps"
    rate: float = round(base * factor, 1)
    if rate.is_integer():
        rate = int(rate)
    if not 1 <= rate <= MAX_RATE:
        reason = f"overload: {rate:g}/s is outside [1, {MAX_RATE}]"
        skipped.append({"offered_rate": rate, "reason": reason})
        return {"factor": factor, "sustained_max": base, "skipped": reason}
    if time.perf_counter() > latest_start:
        skipped.append({"offered_rate": rate, "reason": "overload: time budget"})
        return {"factor": factor, "sustained_max": base, "skipped": "time budget"}
    step = await one_step(rate, False)
    summary = {**overload_summary(step, base, factor), "sustained_max_from": source}
    step["overload"] = summary
    return summary


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    deadline = started + args.max_seconds
    load_start = os.getloadavg()
    extra = parse_overrides(args.set)
    # The generator is one client address standing for many clients: the per-client
    # rate limit would measure itself, not the node (an explicit --set wins).
    extra.setdefault("gateway", {}).setdefault("client_vertices_per_s", BENCH_CLIENT_RATE)
    if args.api == "grpc":  # likewise the public gRPC listener's calls per client address
        extra["gateway"].setdefault("grpc_max_concurrent_rpcs", BENCH_GRPC_CALLS)
        extra["gateway"].setdefault("grpc_max_concurrent_rpcs_per_client", BENCH_GRPC_CALLS)
    sink = TraceSink() if args.tracing == "on" else None
    telemetry = tracing_overrides(args, sink)
    if telemetry:
        extra.setdefault("telemetry", {}).update(telemetry)
    # The SDK's own variables would override the config (the services inherit them).
    env_dropped = {}
    if args.tracing != "default":
        for name in (
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ):
            if name in os.environ:
                env_dropped[name] = os.environ.pop(name)
    tracing: dict[str, Any] = {"mode": args.tracing, **telemetry, "env_dropped": env_dropped}
    backend = str(extra.get("crypto", {}).get("backend", "auto"))
    speed_probes: dict[str, Any] = {"cpu": speed.cpu(), "before": speed.probe()}
    bound: dict[str, Any] | None = None
    if args.verify_seconds > 0:
        # before anything else starts (the signing pool's imports would take CPU from it)
        bound = await verify_bound_now(args, backend, "before the cluster started")
        print(
            f"  {bound['verifications_per_s']:g} verifications/s ({bound['bound_config']}): "
            f"{bound['vertices_per_s']:g} vertices/s for {args.nodes} nodes",
            file=sys.stderr,
            flush=True,
        )
    signer = Signer(args.sign_workers, keys=args.nodes)
    steps: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    overload: dict[str, Any] | None = None
    try:
        if sink is not None:
            sink.launch()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as probe:
                await sink.wait_ready(probe)
        with tempfile.TemporaryDirectory(prefix="cretoai-cluster-load-") as tmp:
            async with Cluster(Path(tmp), args.nodes, extra, args.keep_logs) as cluster:
                cluster.sink = sink
                startup_s = time.perf_counter() - started
                connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
                wait_s = cluster.configs[0].gateway.wait_timeout_ms / 1000
                timeout = aiohttp.ClientTimeout(total=wait_s + 10, connect=10)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                    await wait_ready(cluster, session, timeout=60)
                    parents, anchor_info = await anchors(cluster, session, signer)
                    idle = await idle_baseline(cluster, session, args.idle)
                    generator_priority = raise_priority(args.generator_priority)
                    needed = args.warmup + args.duration + wait_s + args.quiesce_timeout

                    async def one_step(rate: float, more_to_come: bool) -> dict[str, Any]:
                        """Run one step; a fresh cluster after it if it left a backlog and
                        another step follows."""
                        nonlocal parents
                        print(f"step {rate} vertices/s …", file=sys.stderr, flush=True)
                        step, last = await run_step(
                            cluster,
                            session,
                            signer,
                            rate=rate,
                            warmup=args.warmup,
                            duration=args.duration,
                            parents=parents,
                            drain_timeout=wait_s + 5,
                            quiesce_timeout=args.quiesce_timeout,
                            verify_bound=bound,
                            client_batch=args.client_batch,
                            client_linger=args.client_linger_ms / 1000,
                            api=args.api,
                        )
                        steps.append(step)
                        print(
                            f"  finalized {step['finalized_throughput']}/s, "
                            f"p50 {step['latency']['p50_ms']} ms, "
                            f"p99 {step['latency']['p99_ms']} ms, "
                            f"cpu/node {max(n['cpu_cores'] for n in step['nodes'].values())}, "
                            f"cpu ms/vertex {step['cpu_ms_per_finalized_vertex_cluster']}, "
                            f"verify-bound ratio {step['verify_bound_ratio']} "
                            f"(in-run {step.get('verify_bound_ratio_in_run')}), "
                            f"verification's share of the CPU "
                            f"{step.get('vertex_verify_share_of_cpu')}, "
                            f"statuses {step['http_status']}, other processes "
                            f"{step['cpu']['other_processes_cores']} cores",
                            file=sys.stderr,
                            flush=True,
                        )
                        warning = client_batch_warning(
                            args.client_batch, args.client_linger_ms, rate, args.nodes, step
                        )
                        if warning:
                            print(f"  note: {warning}", file=sys.stderr, flush=True)
                        if last:
                            parents = last
                        if not step["quiesce"]["quiet"] and more_to_come:
                            # a backlog would spill into the next step: start afresh
                            print("  backlog left: fresh cluster", file=sys.stderr, flush=True)
                            step["fresh_cluster_after"] = True
                            await cluster.restart_fresh()
                            await wait_ready(cluster, session, timeout=60)
                            parents, _ = await anchors(cluster, session, signer)
                        return step

                    saturated = False
                    for position, rate in enumerate(args.rates):
                        if saturated and rate > ALWAYS_RUN_UP_TO and not args.no_skip:
                            skipped.append({"offered_rate": rate, "reason": "saturated below"})
                            continue
                        if time.perf_counter() + needed > deadline:
                            skipped.append({"offered_rate": rate, "reason": "time budget"})
                            continue
                        later = args.rates[position + 1 :]
                        step = await one_step(
                            rate,
                            bool(args.overload)
                            or any(
                                not saturated or args.no_skip or r <= ALWAYS_RUN_UP_TO
                                for r in later
                            ),
                        )
                        if step["finalized_share_of_offered"] < SATURATED_SHARE:
                            saturated = True
                    if args.overload:
                        overload = await overload_step(
                            args, steps, skipped, deadline - needed, one_step
                        )
                    if sink is not None:
                        await asyncio.sleep(6)  # the services export spans every 5 s
                        tracing["received"] = await sink.spans(session)
                settings = cluster.settings()
                events = cluster.events
            logs = cluster.logs
            clusters_started = cluster.incarnations
    finally:
        signer.close()
        if sink is not None:
            sink.stop()
    bound_after: dict[str, Any] | None = None
    if bound is not None:
        # Again once the cluster has stopped: the machine's speed drifts (the bound moved by
        # up to 30 % between runs minutes apart), and the ratio is only as good as its bound.
        bound_after = await verify_bound_now(args, backend, "after the cluster stopped")
        for step in steps:
            step["verify_bound_ratio_after"] = verify_ratio(
                step["finalized_throughput"], bound_after
            )
        print(
            f"  {bound_after['vertices_per_s']:g} vertices/s for {args.nodes} nodes "
            f"(before: {bound['vertices_per_s']:g})",
            file=sys.stderr,
            flush=True,
        )
    speed_probes["after"] = speed.probe()
    drifted = speed.drift(speed_probes["before"], speed_probes["after"])
    if drifted is not None:
        print(f"  {drifted}", file=sys.stderr, flush=True)
    passing = [s["offered_rate"] for s in steps if s["sustained"]]
    sustained = float(max(passing)) if passing else None
    return {
        "benchmark": "cluster_load",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            **machine(),
            "load_average_at_start": [round(x, 2) for x in load_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "parameters": {
            "nodes": args.nodes,
            "rates": list(args.rates),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "payload_bytes": PAYLOAD_BYTES,
            "parents_per_vertex": PARENTS,
            "client": client_description(args),
            "client_batch": args.client_batch,
            "client_linger_ms": args.client_linger_ms,
            "api": args.api,
            "maximum_rate": args.maximum_rate,
            "generator_priority": generator_priority,
            "signing": f"ML-DSA-87 client signatures, pre-signed before each step by "
            f"{args.sign_workers} processes; one client key per gateway",
            "settings": settings,
            "tracing": tracing,
            "verify_seconds": args.verify_seconds,
            "overload": {"factor": args.overload, "base": args.overload_base}
            if args.overload
            else None,
        },
        "definitions": {
            "latency": "vertex due time (open-loop schedule) -> 200 answer read by the client, "
            "over the vertices due in the measured window that were finalized",
            "finalized_throughput": "200-finalized answers received inside the measured window "
            "/ its length",
            "sustained": f"finalized throughput >= {SUSTAIN_SHARE:.0%} of the offered load, "
            f"p99 <= {SUSTAIN_P99_MS:g} ms and >= {SUSTAIN_FINALIZED_SHARE:.0%} of the "
            "window's submissions finalized; max_sustained_throughput is the highest offered "
            "load that meets all three",
            "cpu_cores": "utime+stime of the node's 4 service processes over the window / window",
            "steal_cores": "the machine's steal time over the window / window (/proc/stat: CPU "
            "the VM wanted and its host gave to others; counted in machine_busy_cores, not in "
            "other_processes_cores); per second in cluster_series_per_s[*].machine",
            "rss_mb_max": "max over 1 s samples of the sum of the 4 processes' VmRSS",
            "resident_mb_end_distinct": "at the step's end, the physical pages the node's 4 "
            "processes map, each counted once (/proc/PID/pagemap, root only, else null): "
            "VmRSS counts the shared library code in every process; rss_mb_end minus this is "
            "what the sum counts more than once",
            "rss_trend": "over the window's 1-s series: max_mb; over its second half the "
            "least-squares slope (MB/min) and the growth from the median of its first minute "
            "to that of its last",
            "resident_distinct_trend": f"the node's resident pages each counted once (as "
            f"resident_mb_end_distinct), sampled every {DISTINCT_EVERY_S:g} s over the "
            f"window of a step of >= {RSS_FLAT_MIN_STEP_S:g} s only (reading the page "
            "tables of 16 processes disturbs the latency): max_mb, and the least-squares "
            "slope over its second half (MB/min); "
            "targets.rss_mb_flat_at_half_max reports it beside the judged sum of VmRSS "
            "(max_mb_each_page_once, slope_mb_per_min_each_page_once)",
            "cpu_ms_per_finalized_vertex": "CPU cores / finalized throughput, in ms: per node "
            "(nodes.*), per node and service (nodes.*.cpu_ms_per_finalized_vertex_by_service), "
            "the cluster's total (cpu_ms_per_finalized_vertex_cluster) and per service summed "
            "over the nodes (step-level cpu_ms_per_finalized_vertex_by_service)",
            "vertex_verify_share_of_cpu": "cretoai_consensus_vertex_verify_cpu_seconds_total "
            "delta summed over the nodes (the verifying threads' CPU time) / the cluster's "
            "CPU over the same window: the share of the verify bound the step would reach "
            "with the bound measured in place and at the same moments "
            "(vertex_verify_cpu_ms_per_finalized_vertex: that CPU per finalized vertex)",
            "wire_bytes_per_finalized_vertex": "cretoai_transport_datagram_bytes_sent_total "
            "delta over the window / finalized vertices in it, per node and summed over the "
            "nodes: UDP payload bytes of every datagram sent (QUIC headers, ACK-only packets, "
            "retransmissions, handshakes included; IP and UDP headers not: "
            "cluster_with_ipv4_udp_headers adds 28 bytes per datagram)",
            "datagrams_per_finalized_vertex": "cretoai_transport_datagrams_sent_total delta / "
            "finalized vertices, per node and summed",
            "msg_frame_bytes_per_finalized_vertex": "cretoai_transport_bytes_total{direction=out} "
            "delta / finalized vertices: the transport's MSG frames only (what the wire bytes "
            "carry)",
            "synced_writes_per_batch": "per executed batch of the node: storage WAL syncs "
            "(count of cretoai_storage_wal_sync_seconds), consensus persists (count of "
            "cretoai_consensus_persist_seconds: one synced WriteState and/or one fdatasync of "
            "the signing mark each) and the signing-mark fdatasyncs alone (count of "
            "cretoai_consensus_mark_sync_seconds); storage_barrier_writes: checkpoints "
            "(cretoai_storage_barrier_writes_total) in the window, summed over the nodes",
            "speed": "bench.speed's probe of the machine (SHA3-256 of 8.3 KB, one ML-DSA-87 "
            "vertex verification, a fixed piece of Python; us each, medians of 5 batches) "
            "before the cluster started and after it stopped, with the CPU's model and flags",
            "verify_bound_ratio_in_run": "nodes x (cretoai_consensus_vertex_verify_cpu_seconds_"
            "total / cretoai_consensus_signature_verifications_total{kind=vertex}, summed over "
            "the nodes: CPU per vertex verification in this run) / the cluster's CPU per "
            "finalized vertex: the verify-bound ratio with the bound's per-verification cost "
            "taken from the run itself (for a saturated step: what the throughput would be "
            "against a bound measured at the same moments)",
            "verify_bound": "ML-DSA-87 verifications/s of 1 KB-payload vertex signatures on 2 "
            "workers (bench.verify_bound, measured before the cluster started) / nodes; "
            "verify_bound_ratio = finalized throughput / that; verify_bound_after and "
            "verify_bound_ratio_after: the same measured again once the cluster stopped (the "
            "machine's speed drifts: the two say how far)",
            "time_to_429_ms": "sending -> 429 answer read, over the window's 429 answers",
            "overload": f"a step at --overload x the sustained maximum; shed_at_once: >= "
            f"{SHED_SHARE:.0%} of the window's submissions not finalized answered 429 with p99 "
            f"time_to_429 <= {SHED_AT_ONCE_MS:g} ms",
        },
        "startup_s": round(startup_s, 1),
        "clusters_started": clusters_started,
        "anchors": anchor_info,
        "idle_baseline": idle,
        "steps": steps,
        "skipped": skipped,
        "max_sustained_throughput": sustained,
        "verify_bound": bound,
        "verify_bound_after": bound_after,
        "speed": speed_probes,
        "overload": overload,
        "targets": targets(
            steps,
            sustained,
            args.maximum_rate or max((s["finalized_throughput"] for s in steps), default=None),
        ),
        "supervisor_events": events,
        "service_logs": logs,
        "total_s": round(time.perf_counter() - started, 1),
    }


# -- plot -------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    steps = result["steps"]
    rates = [s["offered_rate"] for s in steps]
    names = sorted({n for s in steps for n in s["nodes"]})
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))

    def offered_axis(ax: Any) -> None:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(rates))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{r:g}" for r in rates])
        ax.set_xlim(min(rates) / 1.5, max(rates) * 1.5)
        ax.set_xlabel("offered load (vertices/s, open loop)")
        ax.grid(alpha=0.3, which="both")

    ax = axes[0][0]
    span = [min(rates) / 1.3, max(rates) * 1.3]
    ax.plot(span, span, color="0.6", linestyle="--", label="= offered")
    ax.plot(
        span,
        [SUSTAIN_SHARE * x for x in span],
        color="0.75",
        linestyle=":",
        label=f"{SUSTAIN_SHARE:.0%} of offered",
    )
    finalized = [max(s["finalized_throughput"], 0.1) for s in steps]
    ax.plot(rates, finalized, "o-", color="C0", label="finalized (client, 200 answers)")
    executed = [sum(s["executed_vertices_per_s_by_node"]) / len(names) for s in steps]
    ax.plot(rates, executed, "x:", color="C1", label="executed (node counters, mean)")
    for rate, step in zip(rates, steps, strict=True):
        mark, colour = ("pass", "green") if step["sustained"] else ("fail", "red")
        if step["machine_shared"]:
            mark += "\n(busy machine)"
        if "overload" in step:
            mark += f"\n({step['overload']['factor']:g}x overload)"
        ax.annotate(
            mark,
            (rate, max(step["finalized_throughput"], 0.1)),
            textcoords="offset points",
            xytext=(0, -8),
            ha="center",
            va="top",
            fontsize=8,
            color=colour,
        )
    ax.axhline(
        TARGET_SUSTAINED,
        color="red",
        alpha=0.5,
        linestyle="-.",
        label=f"target sustained {TARGET_SUSTAINED:g}/s",
    )
    bound = (result.get("verify_bound") or {}).get("vertices_per_s")
    if bound:
        ax.axhline(
            bound,
            color="purple",
            alpha=0.6,
            linestyle="--",
            label=f"ML-DSA-87 verify bound {bound:g}/s (2 workers / {len(names)} nodes)",
        )
    best = result["max_sustained_throughput"]
    ax.set_title(f"Throughput (max sustained: {f'{best:g}/s' if best else 'none'})")
    ax.set_yscale("log")
    ax.set_ylim(min(finalized) / 4, max(TARGET_SUSTAINED, bound or 0) * 2)
    ax.set_ylabel("vertices/s")
    offered_axis(ax)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[0][1]
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s-"), ("max_ms", "^:")):
        points = [
            (r, s["latency"][key])
            for r, s in zip(rates, steps, strict=True)
            if s["latency"][key] is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key.replace("_ms", ""))
    ax.plot(
        [TARGET_P99_AT_RATE],
        [TARGET_P99_MS],
        "r*",
        markersize=12,
        label=f"target: p99 <= {TARGET_P99_MS:g} ms at {TARGET_P99_AT_RATE}/s",
    )
    ax.axhline(SUSTAIN_P99_MS, color="0.6", linestyle=":", label="sustained: p99 <= 1 s")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    for rate, step in zip(rates, steps, strict=True):
        if step["latency"]["p50_ms"] is None:
            ax.annotate(
                "no vertex due in the\nwindow was finalized",
                (rate, SUSTAIN_P99_MS),
                textcoords="offset points",
                xytext=(10, 12),
                ha="right",
                fontsize=8,
                color="red",
            )
    ax.set_title("Client-observed finality latency (due time -> 200 final)")
    offered_axis(ax)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1][0]
    for name in names:
        ax.plot(rates, [s["nodes"][name]["cpu_cores"] for s in steps], "o-", label=name)
    ax.plot(rates, [s["cpu"]["generator_cores"] for s in steps], "k:", label="load generator")
    ax.plot(
        rates,
        [s["cpu"]["other_processes_cores"] for s in steps],
        color="0.6",
        linestyle="--",
        label="other processes on the machine",
    )
    cores = result["machine"]["cores"] or 1
    ax.axhline(
        TARGET_CORES,
        color="red",
        alpha=0.5,
        linestyle="-.",
        label=f"target {TARGET_CORES:g} core/node at {TARGET_CORES_AT_RATE}/s",
    )
    ax.set_ylim(0, max(cores / 2, TARGET_CORES * 1.5))
    ax.set_ylabel(f"cores (machine: {cores})")
    ax.set_title("CPU per node (its 4 service processes)")
    offered_axis(ax)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1][1]
    for name in names:
        ax.plot(rates, [s["nodes"][name]["rss_mb_max"] for s in steps], "o-", label=name)
    ax.axhline(
        TARGET_RSS_MB,
        color="red",
        alpha=0.5,
        linestyle="-.",
        label=f"target {TARGET_RSS_MB:g} MB/node",
    )
    top = max([TARGET_RSS_MB] + [s["nodes"][n]["rss_mb_max"] for s in steps for n in names])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("MB (max of 1 s samples)")
    ax.set_title("RSS per node (its 4 service processes)")
    offered_axis(ax)
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[0][2]
    services = sorted(
        {k for s in steps for k in s.get("cpu_ms_per_finalized_vertex_by_service", {})}
    )
    for service in services:
        points = [
            (r, s["cpu_ms_per_finalized_vertex_by_service"].get(service))
            for r, s in zip(rates, steps, strict=True)
        ]
        points = [(r, v) for r, v in points if v]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label=service, markersize=4)
    points = [
        (r, s.get("cpu_ms_per_finalized_vertex_cluster")) for r, s in zip(rates, steps, strict=True)
    ]
    points = [(r, v) for r, v in points if v]
    if points:
        ax.plot(*zip(*points, strict=True), "ks-", label="all (cluster)")
    ax.set_yscale("log")
    ax.set_ylabel("CPU ms per finalized vertex")
    ax.set_title("CPU per finalized vertex, per service (summed over the nodes)")
    offered_axis(ax)
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1][2]
    for key, style, label in (
        ("wire_bytes_per_finalized_vertex", "o-", "UDP payload bytes sent (KB)"),
        ("msg_frame_bytes_per_finalized_vertex", "x:", "of which MSG frames (KB)"),
    ):
        points = [(r, s.get(key, {}).get("cluster")) for r, s in zip(rates, steps, strict=True)]
        points = [(r, v / 1024) for r, v in points if v]
        if points:
            ax.plot(*zip(*points, strict=True), style, color="C0", label=label)
    ax.set_ylabel("KB sent per finalized vertex (cluster)", color="C0")
    ax.set_ylim(bottom=0)
    offered_axis(ax)
    twin = ax.twinx()
    for key, style, label in (
        ("storage_wal_syncs_mean", "s--", "storage WAL syncs / batch"),
        ("consensus_persists_mean", "^:", "consensus persists / batch"),
        ("mark_file_syncs_mean", "v-.", "signing-mark syncs / batch"),
    ):
        points = [
            (r, s.get("synced_writes_per_batch", {}).get(key))
            for r, s in zip(rates, steps, strict=True)
        ]
        points = [(r, v) for r, v in points if v is not None]
        if points:
            twin.plot(*zip(*points, strict=True), style, color="C3", label=label)
    twin.set_ylabel("synced writes per executed batch (per node, mean)", color="C3")
    twin.set_ylim(bottom=0)
    ax.set_title("Per finalized vertex: bytes on the wire; per batch: syncs")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper right")

    m = result["machine"]
    p = result["parameters"]
    fig.suptitle(
        f"cretoai cluster_load: {p['nodes']} nodes ({4 * p['nodes']} processes) + load "
        f"generator on one machine; {p['duration_s']:g} s per step; 1 KB ML-DSA-87 "
        f"client-signed vertices, POST ?wait=true\n{result['when']}, {m['cpu']}, "
        f"{m['cores']} cores, load average at start {m['load_average_at_start'][0]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per step: what is printed at the end."""

    def kb(value: float | None) -> float | None:
        return None if value is None else round(value / 1024, 1)

    return [
        {
            "offered": s["offered_rate"],
            "finalized/s": s["finalized_throughput"],
            "p50": s["latency"]["p50_ms"],
            "p99": s["latency"]["p99_ms"],
            "max": s["latency"]["max_ms"],
            "cpu/node": max(n["cpu_cores"] for n in s["nodes"].values()),
            "rss/node": max(n["rss_mb_max"] for n in s["nodes"].values()),
            "distinct_end/node": largest_distinct_resident_mb(s["nodes"]),
            "status": s["http_status"],
            "sustained": s["sustained"],
            "cpu_ms/vertex": s.get("cpu_ms_per_finalized_vertex_cluster"),
            "verify_share_of_cpu": s.get("vertex_verify_share_of_cpu"),
            "cpu_ms/vertex_by_service": s.get("cpu_ms_per_finalized_vertex_by_service"),
            "wire_KB/vertex": kb(s.get("wire_bytes_per_finalized_vertex", {}).get("cluster")),
            "frame_KB/vertex": kb(s.get("msg_frame_bytes_per_finalized_vertex", {}).get("cluster")),
            "datagrams/vertex": s.get("datagrams_per_finalized_vertex", {}).get("cluster"),
            "wal_syncs/batch": s.get("synced_writes_per_batch", {}).get("storage_wal_syncs_mean"),
            "persists/batch": s.get("synced_writes_per_batch", {}).get("consensus_persists_mean"),
            "mark_syncs/batch": s.get("synced_writes_per_batch", {}).get("mark_file_syncs_mean"),
            "verify_bound_ratio": s.get("verify_bound_ratio"),
            "verify_bound_ratio_after": s.get("verify_bound_ratio_after"),
            "verify_bound_ratio_in_run": s.get("verify_bound_ratio_in_run"),
            "time_to_429_p99": s.get("time_to_429_ms", {}).get("p99_ms"),
            "stages_p50_p99_ms": {
                name: [stage.get("p50_ms"), stage.get("p99_ms")]
                for name, stage in s["stages"].items()
            },
            **({"overload": True} if "overload" in s else {}),
        }
        for s in result["steps"]
    ]


_T = TypeVar("_T")
#: The exit status of a run ended by SIGTERM or SIGHUP (as the shell reports a kill).
TERMINATED_EXIT = 128 + signal.SIGTERM


async def until_terminated(main: Awaitable[_T]) -> _T:
    """``main``, cancelled by SIGTERM or SIGHUP as asyncio cancels it on Ctrl-C, so that
    its cleanup runs (the cluster's supervisor stopping every service).

    Those signals' default action ends the process at once; a benchmark is a session
    leader (``os.setsid``) whose services run in sessions of their own, and a run killed
    while its cluster started left all 16 of them running, orphaned (2026-12-04)."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    stopping = (signal.SIGTERM, signal.SIGHUP)
    for sig in stopping:
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in stopping:
            loop.remove_signal_handler(sig)


def run_until_terminated(main: Awaitable[_T]) -> _T | None:
    """:func:`until_terminated` in a new event loop; None when a signal ended it."""
    try:
        return asyncio.run(until_terminated(main))
    except asyncio.CancelledError:
        print("terminated: the cluster was stopped, no results written", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",") if x.strip()],
        default=None,
        help="offered loads, vertices/s, comma-separated (default "
        + ",".join(map(str, DEFAULT_RATES))
        + "; --quick: "
        + ",".join(map(str, QUICK_RATES))
        + ")",
    )
    parser.add_argument("--duration", type=float, default=None, help="measured s per step (20)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up s per step (3)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 short steps")
    parser.add_argument("--no-skip", action="store_true", help="run steps above saturation too")
    parser.add_argument(
        "--maximum-rate",
        type=float,
        default=None,
        help="finalized vertices/s of a saturation run, for the memory target at half the "
        "maximum rate (default: the highest finalized throughput of this run's steps)",
    )
    parser.add_argument("--sign-workers", type=int, default=2)
    parser.add_argument(
        "--quiesce-timeout",
        type=float,
        default=20.0,
        help="s to wait after a step for every node to execute its backlog; else the next "
        "step gets a fresh cluster",
    )
    parser.add_argument("--idle", type=float, default=None, help="idle baseline s (5)")
    parser.add_argument(
        "--generator-priority",
        type=int,
        default=15,
        help="lower the generator's nice value by this much once the cluster runs, so that "
        "its open-loop schedule holds on a busy machine (0: off; needs the privilege)",
    )
    parser.add_argument("--max-seconds", type=float, default=900.0, help="budget for the run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="a node setting for every node (repeatable)",
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, metavar="DIR", help="copy the services' logs here"
    )
    parser.add_argument(
        "--tracing",
        choices=("default", "off", "on"),
        default="default",
        help="default: the nodes' default [telemetry] settings; off: sampling_ratio 0, no "
        "exporter; on: --sampling, exported over OTLP to a devkit.otlp_receiver process",
    )
    parser.add_argument(
        "--sampling",
        type=float,
        default=DEFAULT_SAMPLING_RATIO,
        help=f"with --tracing on: the sampling ratio (default {DEFAULT_SAMPLING_RATIO:g}, "
        "the nodes' default)",
    )
    parser.add_argument(
        "--verify-seconds",
        type=float,
        default=3.0,
        help="s to measure the ML-DSA-87 verify bound before the cluster starts (0: skip)",
    )
    parser.add_argument(
        "--client-batch",
        type=int,
        default=1,
        metavar="N",
        help="submit N vertices per request (POST /v1/vertices:batch) per gateway (1: one "
        "POST /v1/vertices per vertex)",
    )
    parser.add_argument(
        "--api",
        choices=("rest", "grpc"),
        default="rest",
        help="the public API the load uses: REST (JSON) or gRPC (SubmitVertices with wait, "
        "--client-batch vertices per call)",
    )
    parser.add_argument(
        "--client-linger-ms",
        type=float,
        default=20.0,
        help="with --client-batch: send a partial batch once its first vertex waited this long",
    )
    parser.add_argument(
        "--overload",
        type=float,
        default=None,
        metavar="FACTOR",
        help="after the steps, one more at FACTOR x the highest sustained offered load (e.g. "
        "5): finalized share of it, 429s and time to 429",
    )
    parser.add_argument(
        "--overload-base",
        type=float,
        default=None,
        metavar="RATE",
        help="with --overload: the sustained maximum to multiply (default: this run's)",
    )
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument(
        "--plot", default=None, help="PNG path (default: beside --output; '' for none)"
    )
    args = parser.parse_args(argv)
    if args.rates is None:
        args.rates = list(QUICK_RATES if args.quick else DEFAULT_RATES)
    if args.duration is None:
        args.duration = 5.0 if args.quick else 20.0
    if args.idle is None:
        args.idle = 2.0 if args.quick else 5.0
    if not 1 <= args.quiesce_timeout <= 600:
        parser.error("--quiesce-timeout must be within [1, 600]")
    if not 1 <= args.idle <= 60 or not 0 <= args.generator_priority <= 19:
        parser.error("--idle must be within [1, 60] and --generator-priority within [0, 19]")
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if not args.rates or any(not 1 <= r <= MAX_RATE for r in args.rates):
        parser.error(f"--rates must be within [1, {MAX_RATE}]")
    if args.overload is not None and not 1 < args.overload <= 20:
        parser.error("--overload must be within (1, 20]")
    if args.overload_base is not None and (
        args.overload is None or not 1 <= args.overload_base <= MAX_RATE
    ):
        parser.error(f"--overload-base needs --overload and must be within [1, {MAX_RATE}]")
    if not 0 <= args.verify_seconds <= 30:
        parser.error("--verify-seconds must be within [0, 30]")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be within [1, 600] and --warmup within [0, 60]")
    if not 1 <= args.nodes <= 7:
        parser.error("--nodes must be within [1, 7]")
    if not 1 <= args.sign_workers <= 16:
        parser.error("--sign-workers must be within [1, 16]")
    if not 0.0 <= args.sampling <= 1.0:
        parser.error("--sampling must be within [0, 1]")
    if not 30 <= args.max_seconds <= 7200:
        parser.error("--max-seconds must be within [30, 7200]")
    if args.maximum_rate is not None and not 0 < args.maximum_rate <= MAX_RATE:
        parser.error(f"--maximum-rate must be within (0, {MAX_RATE}]")
    try:
        parse_overrides(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    args.rates = [int(r) if float(r).is_integer() else r for r in args.rates]
    with contextlib.suppress(OSError):
        os.setsid()  # an autogroup of its own (see raise_priority); fails if a group leader
    result = run_until_terminated(run(args))
    if result is None:
        return TERMINATED_EXIT
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    tmp.replace(args.output)
    plot_path = args.output.with_suffix(".png") if args.plot is None else args.plot
    if plot_path and result["steps"]:
        plot(result, Path(plot_path))
    for row in summary_table(result):
        print(json.dumps(row))
    if result.get("verify_bound"):
        bound = result["verify_bound"]
        print(
            json.dumps(
                {
                    "verify_bound_vertices_per_s": bound["vertices_per_s"],
                    "verifications_per_s": bound["verifications_per_s"],
                    "config": bound["bound_config"],
                    "speedup_2_workers": bound["speedup_2_workers"],
                    "after_the_run_vertices_per_s": (result.get("verify_bound_after") or {}).get(
                        "vertices_per_s"
                    ),
                }
            )
        )
    if result.get("overload"):
        print(json.dumps({"overload": result["overload"]}))
    print(json.dumps({"max_sustained_throughput": result["max_sustained_throughput"]}))
    print(json.dumps(result["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
