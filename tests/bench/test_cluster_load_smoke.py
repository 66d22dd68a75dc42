"""Smoke run of bench/cluster_load.py: a real 4-node cluster, one tiny step (--quick), with
tracing on (every trace sampled, exported to a devkit.otlp_receiver process): spans arrive
and the step has its per-stage breakdown."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

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
        "cpu_cores_per_node_at_200",
    }
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    tracing = result["parameters"]["tracing"]
    assert tracing["mode"] == "on" and tracing["sampling_ratio"] == 1.0
    assert (
        tracing["otlp_endpoint"] == result["parameters"]["settings"]["telemetry"]["otlp_endpoint"]
    )
    received = tracing["received"]
    assert received["spans"] > 0 and received["traces"] > 0, received
    assert {"cretoai-gateway", "cretoai-consensus"} <= set(received["by_service"]), received
    assert step["cpu"]["trace_receiver_cores"] >= 0
    # the per-stage breakdown (cretoai_consensus_stage_seconds) over the window
    assert set(STAGES) <= set(step["stages"]), step["stages"]
    for name in STAGES:
        stage = step["stages"][name]
        assert stage["count"] > 0, (name, stage)
        assert 0 <= stage["p50_ms"] <= stage["p99_ms"], (name, stage)
    for node in step["nodes"].values():
        assert node["metrics"]["stages"]["commit"]["count"] > 0
    assert plot.stat().st_size > 10_000
