"""The cost figures of bench.cluster_load (no cluster): CPU, bytes and synced writes per
finalized vertex or batch, the overload summary, and the ML-DSA-87 verify bound."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from bench.cluster_load import (
    SHED_AT_ONCE_MS,
    datagram_metrics,
    overload_summary,
    per_finalized_vertex,
    storage_metrics,
    traceback_exception,
)
from bench.verify_bound import ratio, summarise
from tests.bench.test_stage_breakdown import scrape_of
from tests.conftest import REPO


def node(
    cores: dict[str, float | None],
    bytes_out_per_s: float,
    syncs: float | None,
    *,
    udp_bytes_out_per_s: float | None = None,
    datagrams_out_per_s: float | None = None,
    marks: float | None = 1.0,
) -> dict[str, Any]:
    known = [c for c in cores.values() if c is not None]
    return {
        "cpu_cores": sum(known),
        "cpu_cores_by_service": cores,
        "metrics": {
            "msg_frame_bytes_out_per_s": bytes_out_per_s,
            "udp_payload_bytes_out_per_s": udp_bytes_out_per_s,
            "udp_datagrams_out_per_s": datagrams_out_per_s,
            "storage": {
                "wal_syncs_per_batch": syncs,
                "consensus_persists_per_batch": 2.0,
                "mark_file_syncs_per_batch": marks,
                "barrier_writes": 0 if syncs is not None else None,
            },
        },
    }


def test_cost_per_finalized_vertex_per_node_and_service() -> None:
    nodes = {
        "node1": node(
            {"gateway": 0.05, "consensus": 0.2},
            400_000,
            3.0,
            udp_bytes_out_per_s=450_000,
            datagrams_out_per_s=100,
            marks=1.5,
        ),
        "node2": node(  # restarted
            {"gateway": 0.05, "consensus": None},
            100_000,
            None,
            udp_bytes_out_per_s=120_000,
            datagrams_out_per_s=60,
            marks=None,
        ),
    }
    figures = per_finalized_vertex(nodes, throughput=50.0, seconds=10.0)
    assert nodes["node1"]["cpu_ms_per_finalized_vertex"] == 5.0  # 0.25 core / 50 per s
    assert nodes["node1"]["cpu_ms_per_finalized_vertex_by_service"] == {
        "gateway": 1.0,
        "consensus": 4.0,
    }
    assert nodes["node2"]["cpu_ms_per_finalized_vertex_by_service"]["consensus"] is None
    assert nodes["node1"]["msg_frame_bytes_out_per_finalized_vertex"] == 8000
    assert nodes["node1"]["wire_bytes_out_per_finalized_vertex"] == 9000
    assert nodes["node1"]["datagrams_out_per_finalized_vertex"] == 2.0
    assert figures["cpu_ms_per_finalized_vertex_cluster"] == 6.0
    # a service restarted on one node has no cluster-wide figure
    assert figures["cpu_ms_per_finalized_vertex_by_service"] == {"gateway": 2.0, "consensus": None}
    assert figures["msg_frame_bytes_per_finalized_vertex"] == {
        "cluster": 10_000,
        "by_node": {"node1": 8000, "node2": 2000},
    }
    # UDP payloads: 450 + 120 KB/s over 50 vertices/s; 28 header bytes per datagram beside
    assert figures["wire_bytes_per_finalized_vertex"] == {
        "cluster": 11_400,
        "cluster_with_ipv4_udp_headers": round(11_400 + 28 * 3.2),
        "by_node": {"node1": 9000, "node2": 2400},
    }
    assert figures["datagrams_per_finalized_vertex"] == {
        "cluster": 3.2,
        "by_node": {"node1": 2.0, "node2": 1.2},
    }
    writes = figures["synced_writes_per_batch"]
    assert writes["storage_wal_syncs_mean"] == 3.0  # the node without figures left out
    assert writes["storage_wal_syncs_by_node"] == {"node1": 3.0, "node2": None}
    assert writes["consensus_persists_mean"] == 2.0
    assert writes["mark_file_syncs_mean"] == 1.5
    assert writes["mark_file_syncs_by_node"] == {"node1": 1.5, "node2": None}
    assert writes["storage_barrier_writes"] == 0


def test_verifications_share_of_the_cpu_over_the_same_window() -> None:
    nodes = {
        "node1": node({"consensus": 0.4, "storage": 0.1}, 1, 1.0),
        "node2": node({"consensus": 0.3, "storage": 0.2}, 1, 1.0),
    }
    nodes["node1"]["metrics"]["vertex_verify_cpu_cores"] = 0.15
    nodes["node2"]["metrics"]["vertex_verify_cpu_cores"] = 0.1
    figures = per_finalized_vertex(nodes, throughput=100.0, seconds=10.0)
    assert figures["vertex_verify_share_of_cpu"] == 0.25  # 0.25 of 1.0 core
    assert figures["vertex_verify_cpu_ms_per_finalized_vertex"] == 2.5
    # no verification counts: no in-run ratio
    assert figures["verify_bound_ratio_in_run"] is None
    # 1,000 and 1,500 vertex verifications in the 10 s: 2.5 core-s / 2,500 = 1 ms each;
    # the cluster spends 10 ms per finalized vertex, so 2 nodes x 1 / 10 = 0.2 of the bound
    nodes["node1"]["metrics"]["signature_verifications"] = {"vertex": 1000, "consensus": 7}
    nodes["node2"]["metrics"]["signature_verifications"] = {"vertex": 1500}
    figures = per_finalized_vertex(nodes, throughput=100.0, seconds=10.0)
    assert figures["verify_bound_ratio_in_run"] == 0.2
    # a node without the counter (an older consensus) leaves the share unknown
    del nodes["node2"]["metrics"]["vertex_verify_cpu_cores"]
    figures = per_finalized_vertex(nodes, throughput=100.0, seconds=10.0)
    assert figures["vertex_verify_share_of_cpu"] is None
    assert figures["verify_bound_ratio_in_run"] is None


def test_a_transport_without_datagram_counters_gives_no_wire_figure() -> None:
    nodes = {
        "node1": node({"gateway": 0.05}, 400_000, 1.0, udp_bytes_out_per_s=450_000),
        "node2": node({"gateway": 0.05}, 400_000, 1.0),  # an older transport
    }
    figures = per_finalized_vertex(nodes, throughput=50.0, seconds=10.0)
    wire = figures["wire_bytes_per_finalized_vertex"]
    assert wire["cluster"] is None and wire["by_node"] == {"node1": 9000, "node2": None}
    assert wire["cluster_with_ipv4_udp_headers"] is None
    assert figures["msg_frame_bytes_per_finalized_vertex"]["cluster"] == 16_000


def test_datagram_figures_come_from_the_endpoint_counters() -> None:
    registry = CollectorRegistry()
    sent = Counter("cretoai_transport_datagrams_sent", "d", registry=registry)
    sent_bytes = Counter("cretoai_transport_datagram_bytes_sent", "b", registry=registry)
    got = Counter("cretoai_transport_datagrams_received", "d", registry=registry)
    got_bytes = Counter("cretoai_transport_datagram_bytes_received", "b", registry=registry)
    sent.inc(7)  # before the window
    before = scrape_of(registry)
    sent.inc(200)
    sent_bytes.inc(1_000_000)
    got.inc(100)
    got_bytes.inc(400_000)
    figures = datagram_metrics(before, scrape_of(registry), seconds=10.0)
    assert figures == {
        "udp_datagrams_out_per_s": 20.0,
        "udp_payload_bytes_out_per_s": 100_000,
        "udp_datagrams_in_per_s": 10.0,
        "udp_payload_bytes_in_per_s": 40_000,
        "udp_payload_bytes_per_datagram_out": 5000,
    }
    assert set(datagram_metrics({}, {}, seconds=10.0).values()) == {None}


def test_nothing_finalized_gives_no_cost_figures() -> None:
    nodes = {"node1": node({"gateway": 0.05}, 1000, 1.0)}
    figures = per_finalized_vertex(nodes, throughput=0.0, seconds=10.0)
    assert figures["cpu_ms_per_finalized_vertex_cluster"] is None
    assert figures["wire_bytes_per_finalized_vertex"]["cluster"] is None
    assert nodes["node1"]["msg_frame_bytes_out_per_finalized_vertex"] is None
    assert figures["datagrams_per_finalized_vertex"]["cluster"] is None


def test_synced_writes_are_counted_from_the_storage_and_consensus_metrics() -> None:
    registry = CollectorRegistry()
    sync = Histogram("cretoai_storage_wal_sync_seconds", "s", registry=registry)
    group = Histogram("cretoai_storage_writes_per_sync", "g", registry=registry, buckets=(1, 4))
    apply = Histogram("cretoai_storage_write_apply_seconds", "a", ["op"], registry=registry)
    persist = Histogram("cretoai_consensus_persist_seconds", "p", registry=registry)
    mark = Histogram("cretoai_consensus_mark_sync_seconds", "m", registry=registry)
    barrier = Counter("cretoai_storage_barrier_writes", "b", registry=registry)
    sync.observe(0.001)  # before the window
    before = scrape_of(registry)
    for i in range(5):
        sync.observe(0.002)
        persist.observe(0.004)
        if i % 2:
            mark.observe(0.001)
    barrier.inc()
    group.observe(1)
    group.observe(3)
    apply.labels("commit").observe(0.001)
    apply.labels("state").observe(0.001)
    apply.labels("state").observe(0.001)
    figures = storage_metrics(before, scrape_of(registry), batches=2)
    assert figures["scraped"] is True
    assert figures["wal_syncs"] == 5 and figures["wal_syncs_per_batch"] == 2.5
    assert figures["writes_per_sync_mean"] == 2.0
    assert figures["writes_by_op"] == {"commit": 1, "state": 2}
    assert figures["consensus_persists_per_batch"] == 2.5
    assert figures["mark_file_syncs"] == 2 and figures["mark_file_syncs_per_batch"] == 1.0
    assert figures["mark_sync"]["count"] == 2
    assert figures["barrier_writes"] == 1
    # a node whose storage and consensus did not answer their metrics endpoints
    missing = storage_metrics({}, {}, batches=2)
    assert missing["wal_syncs_per_batch"] is None and missing["barrier_writes"] is None
    assert missing["mark_file_syncs_per_batch"] is None and missing["mark_file_syncs"] is None


def overload_step(statuses: dict[str, int], p99_429: float | None) -> dict[str, Any]:
    return {
        "offered_rate": 500,
        "finalized_throughput": 90.0,
        "submitted_in_window": sum(statuses.values()),
        "outcomes": {"finalized": statuses.get("200", 0)},
        "http_status": statuses,
        "time_to_429_ms": {"p50_ms": 3.0 if p99_429 else None, "p99_ms": p99_429},
        "latency": {"p99_ms": 900.0},
    }


def test_overload_summary() -> None:
    shed = overload_summary(overload_step({"200": 1800, "429": 8200}, 12.0), 100.0, 5)
    assert shed["finalized_share_of_sustained_max"] == 0.9
    assert shed["not_finalized"] == 8200 and shed["answered_429_share_of_not_finalized"] == 1.0
    assert shed["shed_at_once"] is True and shed["other_statuses"] == {}
    slow = overload_summary(overload_step({"200": 1800, "429": 8200}, 400.0), 100.0, 5)
    assert slow["time_to_429_p99_ms"] > SHED_AT_ONCE_MS and slow["shed_at_once"] is False
    timeouts = overload_summary(overload_step({"200": 1800, "429": 7000, "504": 1200}, 5), 100, 5)
    assert timeouts["shed_at_once"] is False and timeouts["other_statuses"] == {"504": 1200}
    kept_up = overload_summary(overload_step({"200": 2000}, None), 100.0, 5)
    assert kept_up["shed_at_once"] is None and kept_up["not_finalized"] == 0


def config(processes: int, threads: int, per_s: float) -> dict[str, Any]:
    return {
        "processes": processes,
        "threads_per_process": threads,
        "verifications_per_s": per_s,
        "other_processes_cores": 0.01,
        "backend": "cryptography",
    }


def test_the_verify_bound_takes_the_better_two_worker_configuration() -> None:
    configs = {
        "threads_1": config(1, 1, 3000.0),
        "threads_2": config(1, 2, 3100.0),  # the GIL serialises
        "processes_2": config(2, 1, 5800.0),
    }
    bound = summarise(configs, 4, seconds=1.0, wall_s=4.0)
    assert bound["bound_config"] == "processes_2"
    assert bound["vertices_per_s"] == 1450.0
    assert bound["speedup_2_workers"] == {"threads_2": 1.03, "processes_2": 1.93}
    assert ratio(145.0, bound) == 0.1
    assert ratio(145.0, None) is None


@pytest.mark.slow
def test_the_verify_bound_measures_real_verifications() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.verify_bound", "--seconds", "0.6", "--nodes", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bound = json.loads(done.stdout)
    assert set(bound["configs"]) == {"threads_1", "threads_2", "processes_2"}
    for figures in bound["configs"].values():
        assert figures["verifications"] > 0 and figures["failed"] == 0
        assert 0 < figures["cpu_cores"] <= 2.5
    assert bound["vertices_per_s"] == pytest.approx(bound["verifications_per_s"] / 4, abs=0.1)
    assert 50 < bound["verifications_per_s"] < 1_000_000


def test_a_traceback_is_named_by_its_exception_line() -> None:
    lines = [
        'ts=1 level=info msg="started"',
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "    main()",
        "",
        "ConnectionError: storage unavailable",
        "later line",
    ]
    assert traceback_exception(lines, 1) == "ConnectionError: storage unavailable"
    assert traceback_exception(lines[:4], 1) == ""
