"""bench.event_costs: the model's arithmetic on hand-made unit costs, where the unit costs
come from in the measurements, and (slow) one real measurement with tiny counts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.event_costs import (
    CALL_READ,
    CALL_WRITE_LARGE,
    CALL_WRITE_SMALL,
    EVENTS,
    MARK_FSYNC,
    MESSAGE_RECEIVE,
    MESSAGE_RECEIVE_LARGE,
    MESSAGE_SEND,
    NODES,
    SIGN,
    UNIT_KEYS,
    VERIFY_PBFT,
    VERIFY_VERTEX,
    WAL_SYNC,
    Event,
    measured_reference,
    model,
    report,
    rounded,
    unit_costs_ms,
)
from tests.conftest import REPO


def test_the_floor_is_the_counts_times_the_costs() -> None:
    events = (
        Event("a", 2.0, "x", "one"),
        Event("b", 3.0, "y", "two"),
        Event("c", 5.0, "x", "one", added=False),
    )
    result = model({"x": 1.5, "y": 0.5}, measured_cluster_ms=36.0, cores=2, events=events, nodes=4)
    rows = {row["event"]: row for row in result["rows"]}
    assert rows["a"]["cpu_ms_per_batch"] == 3.0
    assert rows["b"]["cpu_ms_per_batch"] == 1.5
    # inside another event's cost: shown with its unit cost, not added
    assert rows["c"]["cpu_ms_per_batch"] == 0.0 and rows["c"]["unit_cpu_ms"] == 1.5
    assert result["floor_cpu_ms_per_batch_node"] == 4.5
    assert result["floor_cpu_ms_per_batch_cluster"] == 18.0
    assert rows["a"]["share"] == pytest.approx(3.0 / 4.5)
    assert rows["c"]["share"] == 0.0
    assert sum(row["share"] for row in result["rows"]) == pytest.approx(1.0)
    assert result["by_category"]["one"]["cpu_ms_per_batch"] == 3.0
    assert result["by_category"]["two"]["share"] == pytest.approx(1.5 / 4.5)
    assert result["measured_over_floor"] == pytest.approx(2.0)
    assert result["implied_batches_per_s"] == pytest.approx(2000.0 / 18.0)


def test_the_default_events_with_unit_costs_of_one_ms() -> None:
    costs = dict.fromkeys(UNIT_KEYS, 1.0)
    result = model(costs, measured_cluster_ms=None, cores=2, vertices_per_batch=1.1)
    added = sum(e.per_batch for e in EVENTS if e.added)
    assert result["floor_cpu_ms_per_batch_node"] == pytest.approx(added)
    assert result["floor_cpu_ms_per_batch_cluster"] == pytest.approx(added * NODES)
    assert sum(row["share"] for row in result["rows"]) == pytest.approx(1.0)
    assert sum(c["share"] for c in result["by_category"].values()) == pytest.approx(1.0)
    assert result["measured_over_floor"] is None
    assert result["measured_per_batch_over_floor"] is None
    # every unit the events name is measured
    assert {e.unit for e in EVENTS} <= set(UNIT_KEYS)
    # the WAL syncs happen inside the storage calls: never added twice
    assert [e.unit for e in EVENTS if not e.added] == [WAL_SYNC]
    measured = model(costs, measured_cluster_ms=added * NODES * 3, vertices_per_batch=1.1)
    assert measured["measured_over_floor"] == pytest.approx(3.0)
    assert measured["measured_per_batch_over_floor"] == pytest.approx(3.3)


def test_a_zero_floor_has_no_ratio_nor_bound() -> None:
    result = model(dict.fromkeys(UNIT_KEYS, 0.0), measured_cluster_ms=170.0)
    assert result["floor_cpu_ms_per_batch_node"] == 0.0
    assert result["measured_over_floor"] is None
    assert result["implied_batches_per_s"] is None
    assert all(row["share"] == 0.0 for row in result["rows"])


def measurements() -> dict[str, Any]:
    def ops(cpu: float) -> dict[str, Any]:
        return {"ops": 10, "cpu_ms_mean": cpu, "cpu_ms_median": cpu, "latency_ms": {}}

    def call(client: float, storage: float) -> dict[str, Any]:
        return {
            "calls": 10,
            "cpu_ms_per_call": {"client": client, "storage": storage},
            "latency_ms": {},
        }

    def message(a: float, b: float, client: float) -> dict[str, Any]:
        return {
            "cpu_ms_per_message": {"transport_a": a, "transport_b": b, "client": client},
            "datagrams_per_message": {},
            "one_way_latency_ms": {},
        }

    return {
        "crypto": {
            "backend": "cryptography",
            "sign_pbft": ops(1.2),
            "verify_pbft": ops(0.3),
            "verify_vertex": ops(0.31),
        },
        "synced_writes": {
            "rocksdb_300B": ops(0.2),
            "rocksdb_9KB": ops(0.4),
            "mark_fsync": ops(0.25),
        },
        "storage_calls": {
            "paced": {
                "read": call(1.0, 1.25),
                "write_300B": call(1.1, 1.8),
                "write_9KB": call(1.2, 2.0),
            },
            "closed_loop": {
                "read": call(0.4, 0.6),
                "write_300B": call(0.4, 0.9),
                "write_9KB": call(0.4, 1.0),
            },
        },
        "transport": {"paced": {"5KB": message(1.7, 1.5, 0.8), "8.3KB": message(1.6, 1.4, 0.6)}},
    }


def test_unit_costs_come_from_the_paced_figures() -> None:
    costs = unit_costs_ms(measurements())
    assert set(costs) == set(UNIT_KEYS)
    assert costs[SIGN] == 1.2
    assert costs[VERIFY_PBFT] == 0.3
    assert costs[VERIFY_VERTEX] == 0.31
    assert costs[CALL_READ] == pytest.approx(2.25)  # client + storage, paced
    assert costs[CALL_WRITE_SMALL] == pytest.approx(2.9)
    assert costs[CALL_WRITE_LARGE] == pytest.approx(3.2)
    # a message sent: A + half the client; received: B + half the client
    assert costs[MESSAGE_SEND] == pytest.approx(2.1)
    assert costs[MESSAGE_RECEIVE] == pytest.approx(1.9)
    assert costs[MESSAGE_RECEIVE_LARGE] == pytest.approx(1.7)
    assert costs[MARK_FSYNC] == 0.25
    assert costs[WAL_SYNC] == 0.2


def test_the_report_renders_every_row() -> None:
    measured = measurements()
    result = {
        "when": "2026-12-02T00:00:00Z",
        "machine": {"cpu": "test", "cores": 2},
        "load_average_at_start": [0.1, 0.1, 0.1],
        "measurements": measured,
        "model": rounded(model(unit_costs_ms(measured), measured_cluster_ms=170.0)),
    }
    text = "\n".join(report(result))
    for event in EVENTS:
        assert event.name in text
    assert "floor:" in text and "implied bound" in text and "x the floor" in text


def test_rounded_rounds_nested_floats_only() -> None:
    assert rounded({"a": [1.23456, 2], "b": {"c": 0.00001}, "d": "x"}) == {
        "a": [1.2346, 2],
        "b": {"c": 0.0},
        "d": "x",
    }


def test_the_measured_reference_is_the_10_per_s_step(tmp_path: Path) -> None:
    path = tmp_path / "cluster_load.json"
    assert measured_reference(path) is None
    path.write_text(
        json.dumps(
            {
                "when": "2026-12-02T01:28:11Z",
                "machine": {"git": {"commit": "abc"}},
                "steps": [
                    {"offered_rate": 2, "cpu_ms_per_finalized_vertex_cluster": 277.5},
                    {"offered_rate": 10, "cpu_ms_per_finalized_vertex_cluster": 173.0},
                ],
            }
        )
    )
    reference = measured_reference(path)
    assert reference is not None
    assert reference["cpu_ms"] == 173.0
    assert reference["commit"] == "abc"
    assert measured_reference(path, rate=25) is None


@pytest.mark.slow
def test_a_short_real_measurement(tmp_path: Path) -> None:
    output = tmp_path / "event_costs.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.event_costs",
            "--seconds", "0.6", "--crypto-ops", "20",
            "--measured-cluster-ms", "170", "--output", str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "floor:" in done.stdout
    result = json.loads(output.read_text())
    for field in (
        "benchmark",
        "when",
        "machine",
        "parameters",
        "measurements",
        "unit_costs_ms",
        "counts",
        "model",
        "measured_reference",
        "total_s",
    ):
        assert field in result
    assert set(result["unit_costs_ms"]) == set(UNIT_KEYS)
    for name, cost in result["unit_costs_ms"].items():
        assert math.isfinite(cost) and cost > 0, name
    # the library's own hop, beside ours: positive CPU on both sides, and the server's
    # threads switched at least once per call (it has to wake up to answer)
    bare = result["measurements"]["bare_grpc"]
    assert bare["calls"] > 0 and bare["server_threads"] >= 1
    assert all(math.isfinite(v) and v > 0 for v in bare["cpu_ms_per_call"].values()), bare
    assert bare["server_context_switches_per_call"] >= 1, bare
    transport = result["measurements"]["transport"]["paced"]
    for phase in transport.values():
        assert phase["received"] == phase["sent"] > 0 and phase["in_order"]
    mod = result["model"]
    assert mod["floor_cpu_ms_per_batch_cluster"] == pytest.approx(
        mod["floor_cpu_ms_per_batch_node"] * NODES, rel=1e-3
    )
    assert sum(row["share"] for row in mod["rows"]) == pytest.approx(1.0, abs=1e-2)
    assert mod["measured_cluster_ms"] == 170.0
    assert mod["measured_over_floor"] > 0 and mod["implied_batches_per_s"] > 0
