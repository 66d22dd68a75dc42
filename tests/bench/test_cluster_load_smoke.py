"""Smoke run of bench/cluster_load.py: a real 4-node cluster, one tiny step (--quick), with
tracing on (every trace sampled, exported to a devkit.otlp_receiver process): spans arrive,
the step has its per-stage breakdown and its costs per finalized vertex (CPU per service,
bytes sent, synced writes per batch, the share of the ML-DSA-87 verify bound)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.consensus.tracing import STAGES
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(420)]


def test_cluster_load_quick(tmp_path: Path) -> None:
    output = tmp_path / "cluster_load.json"
    plot = tmp_path / "cluster_load.png"
    argv = [
        sys.executable,
        "-m",
        "bench.cluster_load",
        "--quick",
        "--rates",
        "30",
        "--duration",
        "5",
        "--max-seconds",
        "300",
        "--verify-seconds",
        "1.5",
        "--tracing",
        "on",
        "--sampling",
        "1.0",
        "--output",
        str(output),
        "--plot",
        str(plot),
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(output.read_text())

    assert result["anchors"]["finalized"] > 0
    (step,) = result["steps"]
    assert step["offered_rate"] == 30
    latency = step["latency"]
    assert latency["count"] > 0, step["outcomes_whole_step"]
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"):
        value = latency[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert step["finalized_throughput"] > 0
    assert step["outcomes_whole_step"].get("finalized", 0) > 0
    # every node executed vertices, used CPU and memory, and stayed up
    assert len(step["nodes"]) == 4
    for node in step["nodes"].values():
        assert node["metrics"]["executed_vertices_per_s"] > 0
        assert 0 < node["cpu_cores"] < 4
        assert 50 < node["rss_mb_max"] < 4000
    assert set(result["targets"]) == {
        "finality_p99_ms_at_200",
        "sustained_vertices_per_s",
        "rss_mb_per_node",
        "rss_mb_flat_at_half_max",
        "cpu_cores_per_node_at_200",
    }
    # a 5-s step is too short to judge memory as flat: reported as not judged, not as met
    flat = result["targets"]["rss_mb_flat_at_half_max"]
    assert flat["met"] is None and "600" in flat["note"], flat
    assert all(node["rss_trend"] is None for node in step["nodes"].values())
    # nor are the page tables read during a short step (that disturbed the latency)
    assert all(node["resident_distinct_trend"] is None for node in step["nodes"].values())
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    # the machine's speed probed before the cluster started and after it stopped
    for probe in (result["speed"]["before"], result["speed"]["after"]):
        assert 0 < probe["sha3_8k_us"] < probe["verify_us"], result["speed"]
    tracing = result["parameters"]["tracing"]
    assert tracing["mode"] == "on" and tracing["sampling_ratio"] == 1.0
    assert (
        tracing["otlp_endpoint"] == result["parameters"]["settings"]["telemetry"]["otlp_endpoint"]
    )
    received = tracing["received"]
    assert received["spans"] > 0 and received["traces"] > 0, received
    assert {"cretoai-gateway", "cretoai-consensus"} <= set(received["by_service"]), received
    # every vertex sampled: its hand-offs between processes are timed, hop by hop
    hops = {(h["from"], h["to"]): h for h in received["hops"]["hops"]}
    for pair in (
        ("transport.send", "transport.receive"),
        ("consensus.persist", "/cretoai.v1.Storage/WriteState"),
        ("consensus.storage_commit", "/cretoai.v1.Storage/CommitBatch"),
    ):
        assert hops[pair]["start_gap"]["count"] > 0, received["hops"]
        assert hops[pair]["start_gap"]["p50_ms"] >= 0, received["hops"]
    assert received["hops"]["durations"]["pbft.commit"]["count"] > 0
    assert step["cpu"]["trace_receiver_cores"] >= 0
    assert step["generator"]["vertices_per_request"] == 1.0  # no --client-batch
    # the VM's steal time, over the step and per second (a stall can be the host's)
    assert 0 <= step["cpu"]["steal_cores"] <= step["cpu"]["machine_busy_cores"]
    assert result["idle_baseline"]["steal_cores"] >= 0
    seconds = [row["machine"] for row in step["cluster_series_per_s"] if "machine" in row]
    assert seconds and all(0 <= m["steal_cores"] <= m["busy_cores"] + 0.05 for m in seconds)
    # the series' own scrapes (only the samples it reads): each node's executed seq grows,
    # and its transport sent bytes
    last = step["cluster_series_per_s"][-1]
    for node in step["nodes"]:
        assert last[node]["seq"] > 0 and last[node]["out_mb_s"] is not None, last
        # each service's RSS every second, summing to the node's
        by_service = last[node]["rss_mb_by_service"]
        assert set(by_service) == {"gateway", "consensus", "transport", "storage"}, by_service
        assert all(mb > 0 for mb in by_service.values()), by_service
        assert abs(sum(by_service.values()) - last[node]["rss_mb"]) < 0.5, last[node]
    assert any(
        row[n]["out_mb_s"]
        for row in step["cluster_series_per_s"]
        for n in step["nodes"]
        if row.get(n)
    ), step["cluster_series_per_s"]
    # the per-stage breakdown (cretoai_consensus_stage_seconds) over the window
    assert set(STAGES) <= set(step["stages"]), step["stages"]
    for name in STAGES:
        stage = step["stages"][name]
        assert stage["count"] > 0, (name, stage)
        assert 0 <= stage["p50_ms"] <= stage["p99_ms"], (name, stage)
    for node in step["nodes"].values():
        assert node["metrics"]["stages"]["commit"]["count"] > 0
    assert_cost_figures(result, step)
    assert plot.stat().st_size > 10_000


#: UDP payload bytes over MSG frame bytes sent, at least: above 1 in steady state (QUIC's
#: headers and ACKs), a little below it when the step ends with frames queued in QUIC.
WIRE_OVER_FRAMES_AT_LEAST = 0.9


def assert_cost_figures(result: dict[str, Any], step: dict[str, Any]) -> None:
    """CPU, bytes and synced writes per finalized vertex or batch; the verify bound."""
    services = {"gateway", "consensus", "transport", "storage"}
    by_service = step["cpu_ms_per_finalized_vertex_by_service"]
    assert set(by_service) == services
    assert all(0 < v < 10_000 for v in by_service.values()), by_service
    assert step["cpu_ms_per_finalized_vertex_cluster"] == pytest.approx(
        sum(by_service.values()), rel=0.02
    )
    for node in step["nodes"].values():
        assert set(node["cpu_ms_per_finalized_vertex_by_service"]) == services
        # a vertex is ~8.3 KB inside the cluster and every node sends something per vertex
        assert 500 < node["msg_frame_bytes_out_per_finalized_vertex"] < 10_000_000
        # the UDP payloads carry the MSG frames and QUIC's headers and ACKs beside them; the
        # frame counter counts a frame when it is handed to QUIC, so frames still buffered
        # under the congestion window at the last scrape are counted on one side only
        # (CI saw wire at 0.986 x frames in a 5-s step)
        assert (
            node["wire_bytes_out_per_finalized_vertex"]
            > WIRE_OVER_FRAMES_AT_LEAST * node["msg_frame_bytes_out_per_finalized_vertex"]
        )
        assert node["datagrams_out_per_finalized_vertex"] > 0
        storage = node["metrics"]["storage"]
        assert storage["scraped"] and storage["wal_syncs"] > 0
        assert 0 < storage["wal_syncs_per_batch"] < 50, storage
        assert storage["writes_by_op"].get("commit", 0) > 0
    wire = step["wire_bytes_per_finalized_vertex"]
    assert wire["cluster"] == sum(wire["by_node"].values()) and wire["cluster"] > 8000
    frames = step["msg_frame_bytes_per_finalized_vertex"]
    assert wire["cluster"] > WIRE_OVER_FRAMES_AT_LEAST * frames["cluster"]
    assert frames["cluster"] > 8000
    assert wire["cluster_with_ipv4_udp_headers"] > wire["cluster"]
    assert step["datagrams_per_finalized_vertex"]["cluster"] > 0
    writes = step["synced_writes_per_batch"]
    assert 1 <= writes["storage_wal_syncs_mean"] < 50
    assert 0 < writes["consensus_persists_mean"] < 50
    # a signing-mark sync is one kind of consensus persist
    assert 0 < writes["mark_file_syncs_mean"] <= writes["consensus_persists_mean"]
    bound = result["verify_bound"]
    assert bound["vertices_per_s"] > 10 and bound["nodes"] == 4
    assert set(bound["configs"]) == {"threads_1", "threads_2", "processes_2"}
    assert step["verify_bound_ratio"] == pytest.approx(
        step["finalized_throughput"] / bound["vertices_per_s"], abs=0.002
    )
    # measured again once the cluster stopped, and the step's ratio to that too
    after = result["verify_bound_after"]
    assert after["vertices_per_s"] > 10 and after["measured"].startswith("after the cluster")
    assert step["verify_bound_ratio_after"] == pytest.approx(
        step["finalized_throughput"] / after["vertices_per_s"], abs=0.002
    )
    assert step["time_to_429_ms"]["count"] == step["http_status"].get("429", 0)
    # the bound's per-verification cost taken from the run: positive, and a fraction
    assert 0 < step["verify_bound_ratio_in_run"] < 1


def test_cluster_load_batched_client(tmp_path: Path) -> None:
    """--client-batch with a linger longer than the gap between one gateway's vertices:
    requests carry several vertices (POST /v1/vertices:batch), all are finalized, and the
    step says how many vertices a request held."""
    output = tmp_path / "cluster_load.json"
    argv = [
        sys.executable, "-m", "bench.cluster_load",
        "--quick", "--rates", "8", "--duration", "6", "--max-seconds", "240",
        "--verify-seconds", "0",
        "--client-batch", "8", "--client-linger-ms", "1200",
        # what is tested is the client's batching, not admission: on a slow machine (a
        # verify bound of ~600 vertices/s, 2026-12-05) a vertex pending 1 s at 20/s was
        # refused 429 overloaded, and 12-25 of 100 were
        "--set", "consensus.admission_max_wait_ms=3000",
        "--output", str(output), "--plot", "",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    (step,) = json.loads(output.read_text())["steps"]
    # 8/s over 4 gateways is one vertex per gateway every 500 ms: a 1200-ms linger
    # gathers about 2-3 per request (a 20-ms one would send them alone)
    assert step["generator"]["vertices_per_request"] > 1.5, step["generator"]
    assert step["outcomes_whole_step"].get("finalized", 0) > 0
    assert set(step["outcomes_whole_step"]) == {"finalized"}, step["outcomes_whole_step"]
    assert step["latency"]["count"] > 0
