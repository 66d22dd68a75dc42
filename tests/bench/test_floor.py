"""bench/floor.py: its arithmetic on made-up snapshots, and a short real run (16 processes,
QUIC on loopback, RocksDB, ML-DSA-87) whose figures must be present and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.floor import summarise, window_figures
from tests.conftest import REPO


def _snapshot(t: float, stored: int, verify_s: float, cpu: dict[str, float]) -> dict[str, Any]:
    stats = [
        {"stored_vertices": stored, "bad": 0, "verify_thread_cpu_s": verify_s} for _ in range(4)
    ]
    return {"t": t, "busy": 2 * t, "cpu": cpu, "stats": stats}


def test_a_window_counts_vertices_stored_on_every_node_and_cpu_by_role() -> None:
    before = _snapshot(0.0, 0, 0.0, {"C0": 0.0, "C1": 0.0, "T0": 0.0, "S0": 0.0, "L0": 0.0})
    # 4 nodes stored 100 vertices each in 2 s; consensus used 0.3 s, transport 0.1, storage
    # 0.05 and the load 0.01; the verifying threads 0.2 s in all
    after = _snapshot(2.0, 100, 0.05, {"C0": 0.2, "C1": 0.1, "T0": 0.1, "S0": 0.05, "L0": 0.01})
    figures = window_figures(before, after)
    assert figures["vertices_stored_per_node"] == 100
    assert figures["throughput"] == 50.0
    assert figures["cpu_ms_per_vertex_by_role"] == {
        "consensus": 3.0,
        "load": 0.1,
        "storage": 0.5,
        "transport": 1.0,
    }
    assert figures["cpu_ms_per_vertex_cluster"] == 4.5  # the nodes' processes, not the load
    assert figures["verify_ms_per_vertex_cluster"] == 2.0
    assert figures["machine_busy_cores"] == 2.0


def test_the_summary_is_the_median_window_against_the_bound() -> None:
    def window(throughput: float, ms: float) -> dict[str, Any]:
        return {
            "throughput": throughput,
            "cpu_ms_per_vertex_cluster": ms,
            "cpu_ms_per_vertex_by_role": {"consensus": ms / 2},
        }

    windows = [window(500, 4.0), window(700, 2.8), window(600, 3.3)]
    summary = summarise(windows, {"vertices_per_s": 1500.0})
    assert summary["throughput_median"] == 600
    assert summary["cpu_ms_per_vertex_cluster_median"] == 3.3
    assert summary["cpu_ms_per_vertex_by_role_median"] == {"consensus": 1.65}
    assert summary["share_of_verify_bound"] == 0.4
    assert summary["target_within_floor"] is True
    below = summarise(windows, {"vertices_per_s": 1600.0})
    assert below["share_of_verify_bound"] == 0.375
    assert below["target_within_floor"] is False
    assert summarise(windows, None)["target_within_floor"] is None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_run_stores_every_batch_on_every_node(tmp_path: Path) -> None:
    output = tmp_path / "floor.json"
    argv = [
        sys.executable, "-m", "bench.floor", "--seconds", "1", "--windows", "2",
        "--warmup", "1", "--bound-seconds", "0.6", "--batch", "16", "--window", "2",
        "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(output.read_text())
    assert len(result["windows"]) == 2
    for figures in result["windows"]:
        assert figures["vertices_stored_per_node"] > 0
        assert figures["bad_signatures"] == 0
        roles = figures["cpu_ms_per_vertex_by_role"]
        assert set(roles) == {"consensus", "gateway", "load", "storage", "transport"}
        assert all(ms > 0 for ms in roles.values()), roles
        # every node verified every vertex: the verifying threads' CPU is part of
        # consensus's (thread CPU against the process's CPU sampled at the window's edges:
        # where consensus does little else the two differ by a few per cent either way)
        assert 0 < figures["verify_ms_per_vertex_cluster"] < 1.1 * roles["consensus"]
    assert result["load"]["acked_batches"] > 0
    summary = result["summary"]
    assert summary["verify_bound_vertices_per_s"] > 0
    assert 0 < summary["share_of_verify_bound"] < 5
    # no process outlived the run
    leftover = subprocess.run(
        ["pgrep", "-f", "bench.floor --role"], capture_output=True, text=True, check=False
    )
    assert leftover.stdout == ""
