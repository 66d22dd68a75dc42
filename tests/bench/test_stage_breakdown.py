"""The benchmarks' arithmetic on scraped histograms and on repeated runs (no cluster):
quantiles from buckets as PromQL's histogram_quantile computes them, deltas per label
summed over nodes, a metric that is absent, and the tracing on/off comparison."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster_load import STAGE_METRIC, Scrape, bucket_quantile, histogram_by_label
from bench.tracing_overhead import compare


def scrape_of(registry: CollectorRegistry) -> Scrape:
    """What bench.cluster_load.scrape makes of a page."""
    out: Scrape = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = float(sample.value)
    return out


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.4: 40.0, math.inf: 40.0}
    assert bucket_quantile(buckets, 0.25) == pytest.approx(0.1)  # rank 10: the first bound
    assert bucket_quantile(buckets, 0.5) == pytest.approx(0.15)  # rank 20: half of (0.1, 0.2]
    assert bucket_quantile(buckets, 0.99) == pytest.approx(0.2 + 0.2 * (39.6 - 30) / 10)
    assert bucket_quantile({0.1: 0.0, math.inf: 5.0}, 0.5) == 0.1  # beyond the last bound
    assert bucket_quantile({0.1: 0.0, math.inf: 0.0}, 0.5) is None
    assert bucket_quantile({}, 0.5) is None


def test_stage_deltas_per_label_summed_over_nodes() -> None:
    nodes = []
    for _ in range(2):
        registry = CollectorRegistry()
        stage = Histogram(STAGE_METRIC, "Stage", ["stage"], registry=registry, buckets=(0.01, 0.1))
        stage.labels("prepare").observe(0.5)  # before the window: not counted
        before = scrape_of(registry)
        for _ in range(9):
            stage.labels("prepare").observe(0.005)
        stage.labels("prepare").observe(0.05)
        stage.labels("commit").observe(0.05)
        nodes.append((before, scrape_of(registry)))
    stages = histogram_by_label(nodes, STAGE_METRIC, "stage")
    assert set(stages) == {"prepare", "commit"}
    prepare = stages["prepare"]
    assert prepare["count"] == 20
    assert prepare["mean_ms"] == pytest.approx((18 * 5 + 2 * 50) / 20, abs=1e-3)
    assert prepare["p50_ms"] == pytest.approx(10 * 10 / 18, abs=1e-3)  # rank 10 of 18 in (0, 10 ms]
    assert 10 < prepare["p99_ms"] <= 100
    assert stages["commit"]["count"] == 2


def test_an_absent_stage_metric_gives_no_stages() -> None:
    registry = CollectorRegistry()
    Histogram("cretoai_consensus_finality_seconds", "F", registry=registry).observe(0.1)
    page = scrape_of(registry)
    assert histogram_by_label([({}, page)], STAGE_METRIC, "stage") == {}


def run(repeat: int, mode: str, p99: float, cpu: float) -> dict[str, Any]:
    step = {
        "finalized_throughput": 100.0,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "cpu_cores_per_node": cpu,
        "trace_receiver_cores": 0.01 if mode == "on" else 0.0,
        "other_processes_cores": 0.0,
        "stages": {"commit": {"p50_ms": 1.0, "p99_ms": 2.0}},
    }
    return {"repeat": repeat, "mode": mode, "steps": {"100": step}}


def test_the_comparison_takes_medians_and_paired_ratios() -> None:
    runs = [
        run(1, "off", 100, 0.40), run(1, "on", 110, 0.44),
        run(2, "on", 300, 0.50), run(2, "off", 250, 0.50),  # a noisy repeat
        run(3, "off", 120, 0.42), run(3, "on", 120, 0.42),
    ]  # fmt: skip
    row = compare(runs, ["100"])["100"]
    assert row["off"]["p99_ms"] == 120 and row["on"]["p99_ms"] == 120
    assert row["ratio_on_off_of_medians"]["p99_ms"] == 1.0
    assert row["median_paired_ratio_on_off"]["p99_ms"] == 1.1  # of 1.1, 1.2, 1.0
    assert row["on"]["trace_receiver_cores"] == 0.01
    assert row["on"]["stages"]["commit"] == {"p50_ms": 1.0, "p99_ms": 2.0}
