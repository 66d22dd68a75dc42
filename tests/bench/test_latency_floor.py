"""bench/latency_floor.py: its percentiles, and a short real run (16 processes, QUIC on
loopback, RocksDB, ML-DSA-87) in which every vertex is committed and answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.latency_floor import decode_submission, encode_submission, percentiles, share_in_run
from tests.conftest import REPO


def test_percentiles_are_nearest_rank() -> None:
    figures = percentiles([float(v) for v in range(100, 0, -1)])  # 1..100 ms, unordered
    assert (figures["count"], figures["p50_ms"], figures["p90_ms"]) == (100, 50, 90)
    assert (figures["p99_ms"], figures["max_ms"], figures["mean_ms"]) == (99, 100, 50.5)
    assert percentiles([7.0])["p99_ms"] == 7.0
    assert percentiles([])["p50_ms"] is None


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("entry", "rate"), [("all", 20), ("primary", 20), ("all", 150)])
def test_a_short_run_commits_and_answers_every_vertex(
    tmp_path: Path, entry: str, rate: int
) -> None:
    output = tmp_path / "latency_floor.json"
    argv = [
        sys.executable, "-m", "bench.latency_floor", "--rate", str(rate), "--seconds", "2",
        "--warmup", "1", "--entry", entry, "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(output.read_text())
    load = result["load"]
    sent, measured = 3 * rate, 2 * rate
    assert load["sent"] == sent and load["measured"] == measured
    assert load["unanswered_in_window"] == 0
    assert load["latency"]["count"] == measured and load["latency"]["p50_ms"] > 0
    counts = result["consensus_counts"]
    assert [c["bad"] for c in counts] == [0, 0, 0, 0]
    # every vertex committed; a node may trail the last answers by a message or two
    assert max(c["committed"] for c in counts) == sent
    assert min(c["committed"] for c in counts) >= sent - 10
    if rate > 100:  # more arrive than one batch at a time commits: the primary batches
        assert max(c["batches"] for c in counts) < sent
    assert result["cpu"]["cores_by_role"]["consensus"] > 0
    assert set(result["targets"]) == {"p50_le_25_ms", "p99_le_50_ms", "p99_le_100_ms"}
    assert [c["mark_syncs"] for c in counts] == [0, 0, 0, 0]  # not asked for


def test_a_client_message_round_trips() -> None:
    vertices = [(i.to_bytes(8, "big"), bytes([i]) * (100 + i)) for i in range(3)]
    assert decode_submission(encode_submission(vertices)) == vertices
    assert decode_submission(encode_submission([])) == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_short_saturated_run_reports_throughput_per_vertex_cost_and_the_share(
    tmp_path: Path,
) -> None:
    output = tmp_path / "latency_floor.json"
    argv = [
        sys.executable, "-m", "bench.latency_floor", "--window", "2", "--client-batch", "16",
        "--batch-max", "32", "--seconds", "2", "--warmup", "1", "--bound-seconds", "0.6",
        "--tls", "--execute-write", "--mark-sync", "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(output.read_text())
    load, counts = result["load"], result["consensus_counts"]
    assert load["answered_in_window"] > 0 and load["message_latency"]["count"] > 0
    assert load["throughput_per_s"] == round(load["answered_in_window"] / 2, 1)
    assert [c["bad"] for c in counts] == [0, 0, 0, 0]
    assert all(c["tls"] for c in counts)  # the internal hops were mutual TLS
    assert result["parameters"]["mark_sync"] is True
    # the signing mark synced before each signed message sent: a PRE-PREPARE or PREPARE
    # and a COMMIT per batch. The counts are read while the last batches may be in flight:
    # a few more for batches signed and not yet committed, and a few fewer for a batch the
    # others' COMMITs committed here while this node's own COMMIT mark was still syncing.
    marks = [(c["batches"], c["mark_syncs"]) for c in counts]
    assert all(b > 8 and 2 * b - 4 <= m <= 2 * b + 8 for b, m in marks), marks
    # what was answered was committed everywhere (a node may trail by a batch)
    assert min(c["committed"] for c in counts) >= load["answered_in_window"] - 32
    assert max(c["batches"] for c in counts) < max(c["committed"] for c in counts)
    cpu = result["cpu"]
    assert cpu["cluster_ms_per_vertex"] > 0
    assert cpu["cluster_ms_per_vertex_by_role"]["consensus"] > 0
    bound = result["verify_bound"]["vertices_per_s"]
    assert result["targets"]["share_of_verify_bound"] == round(load["throughput_per_s"] / bound, 3)
    # every node verified every vertex it stored, on its verifying threads' clocks
    assert all(c["vertex_verifications"] >= c["committed"] for c in counts)
    assert all(c["vertex_verify_cpu_ns"] > 0 for c in counts)
    in_run = result["targets"]["share_of_verify_bound_in_run"]
    assert in_run == share_in_run(counts, cpu["cluster_ms_per_vertex"]) and 0 < in_run < 1


def test_the_in_run_share_is_four_verifications_of_the_cpu_per_vertex() -> None:
    # 1,000 verifications at 0.3 ms each over the nodes; 2.4 ms of cluster CPU per vertex
    counts = [{"vertex_verifications": 250, "vertex_verify_cpu_ns": 75_000_000}] * 4
    assert share_in_run(counts, 2.4) == 0.5  # 4 x 0.3 / 2.4
    assert share_in_run([{"committed": 1}] * 4, 2.4) is None  # an older stand-in
    assert share_in_run(counts, None) is None
