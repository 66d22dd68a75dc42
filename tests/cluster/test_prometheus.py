"""A real Prometheus scrapes a real 4-node cluster: all 16 service endpoints are ``up`` and
the metrics operators look at first have values on every node.

The cluster is the scenario runner's (16 processes on loopback); ``prometheus.yml`` is made
from its ``cluster.json`` (``devkit.prometheus.scrape_config``, one job per service, a
``node`` label) and checked with ``promtool check config``; ``/usr/bin/prometheus`` runs
with its own TSDB in the test's directory, on a free loopback port, scraping every second,
and is stopped at the end. Everything is asserted through its HTTP API
(``/api/v1/targets``, ``/api/v1/query``), each wait bounded. Then the 16 pages (with
per-peer series, which a one-node cluster lacks) go through ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devkit.ports import free_base_port
from devkit.prometheus import (
    PrometheusServer,
    promtool_check,
    promtool_check_config,
    scrape_config,
    tool,
)
from tests.cluster.runner import ClusterRun, Scenario
from tests.test_dashboard import dashboard, panels

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        tool("prometheus") is None or tool("promtool") is None,
        reason="prometheus/promtool are not installed (Debian package prometheus; run "
        "scripts/system-deps.sh as root): the cluster is NOT checked with a real Prometheus",
    ),
]

T = TypeVar("T")
#: Dashboard panels that show nothing without faults (labelled counters never incremented).
MAY_BE_EMPTY = {"Transport drops", "Byzantine events", "Equivocation evidence and write errors"}
NODES = ("node1", "node2", "node3", "node4")
JOBS = ("cretoai-gateway", "cretoai-consensus", "cretoai-transport", "cretoai-storage")
SCENARIO = Scenario(
    name="prometheus",
    description="4 nodes, no faults, scraped by a real Prometheus",
    nodes=4,
    vertices=24,
    wait_every=4,
    timeout_s=60,
    steps=(),
)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, with Grafana's variables filled in."""
    out = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$instance", ".*").replace("$__rate_interval", "30s")
            out.append((panel["title"], expr))
    return out


async def until(what: str, probe: Callable[[], Awaitable[tuple[bool, T]]], timeout: float) -> T:
    """Poll ``probe`` (an external process's API) until it says done; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        done, seen = await probe()
        if done:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s; last seen: {seen}")
        await asyncio.sleep(0.5)


async def test_a_real_prometheus_scrapes_every_service(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    async with ClusterRun(SCENARIO, tmp_path / "cluster", free_base_port(100)) as run:
        timings["cluster_up_s"] = time.monotonic() - started
        assert run.layout is not None
        cluster = json.loads(run.layout.cluster_file.read_text())
        config = scrape_config(cluster, interval="1s")
        config_file = tmp_path / "checked.yml"
        config_file.write_text(json.dumps(config))
        code, output = await asyncio.to_thread(promtool_check_config, config_file)
        assert code == 0, output

        t0 = time.monotonic()
        async with PrometheusServer(config, tmp_path / "prometheus") as prom:
            timings["prometheus_ready_s"] = time.monotonic() - t0

            async def all_up() -> tuple[bool, dict[str, Any]]:
                targets = await prom.targets()
                health = {
                    f"{t['labels']['node']}/{t['labels']['job']}": (t["health"], t["lastError"])
                    for t in targets
                }
                return len(health) == 16 and all(h == "up" for h, _ in health.values()), health

            t0 = time.monotonic()
            health = await until("all 16 targets up", all_up, timeout=60)
            timings["targets_up_s"] = time.monotonic() - t0
            assert set(health) == {f"{n}/{j}" for n in NODES for j in JOBS}

            t0 = time.monotonic()
            await run.load()
            await run.wait_all_final()
            timings["load_s"] = time.monotonic() - t0
            final = len(run.ledger.final)
            assert final >= SCENARIO.vertices // SCENARIO.wait_every

            # Each query, by node: what must hold on every node once scraped after the load.
            queries: dict[str, Callable[[float], bool]] = {
                'sum by (node) (cretoai_consensus_vertices_executed_total{outcome="finalized"})': (
                    lambda v: v >= final
                ),
                "sum by (node) (cretoai_consensus_finality_seconds_count)": lambda v: v > 0,
                "sum by (node) (cretoai_consensus_batches_executed_total)": lambda v: v > 0,
                "cretoai_consensus_last_executed_seq": lambda v: v > 0,
                "cretoai_consensus_view": lambda v: v >= 0,
                "cretoai_transport_peers_connected": lambda v: v == 3,
                "sum by (node) (cretoai_transport_rtt_seconds_count)": lambda v: v > 0,
                'sum by (node) (cretoai_transport_bytes_total{direction="out"})': lambda v: v > 0,
                "cretoai_storage_commit_seconds_count": lambda v: v > 0,
                "cretoai_storage_db_bytes": lambda v: v > 0,
                'sum by (node) (cretoai_gateway_http_requests_total{route="/v1/vertices"})': (
                    lambda v: v > 0
                ),
                'sum by (node) (cretoai_service_serving{job=~"cretoai-.*"})': lambda v: v == 4,
                "sum by (node) (up)": lambda v: v == 4,
            }

            async def values() -> tuple[bool, dict[str, dict[str, float]]]:
                seen = {expr: await prom.query(expr) for expr in queries}
                ok = all(
                    set(seen[expr]) == set(NODES) and all(test(v) for v in seen[expr].values())
                    for expr, test in queries.items()
                )
                return ok, seen

            t0 = time.monotonic()
            seen = await until("the key metrics on every node", values, timeout=30)
            timings["metrics_seen_s"] = time.monotonic() - t0
            views = set(seen["cretoai_consensus_view"].values())
            assert len(views) == 1, f"the nodes disagree on the view: {views}"
            # A range function over the scraped series: the scrapes were stored over time.
            rate = await prom.query("sum(rate(cretoai_transport_messages_total[30s]))")
            assert rate and next(iter(rate.values())) > 0, rate

            # Every query of the Grafana dashboard is valid PromQL here; every panel has
            # data except those of faults this cluster did not have. A rate() needs two
            # samples of a series in its window: a counter first scraped after the load may
            # have only one yet, so this waits for the next scrapes (1 s apart).
            async def empty_panels() -> tuple[bool, list[str]]:
                empty = []
                for where, expr in dashboard_queries():
                    result = await prom.api("query", query=expr)  # raises on a PromQL error
                    if not result["result"]:
                        empty.append(where)
                return set(empty) <= MAY_BE_EMPTY, sorted(set(empty))

            t0 = time.monotonic()
            empty = await until("no empty panel but " + str(MAY_BE_EMPTY), empty_panels, 15)
            timings["panels_seen_s"] = time.monotonic() - t0

        # The 16 pages of a cluster with peers (per-peer series, RTT histograms), as
        # promtool sees them: no warning (the one-node test has no peers).
        assert run.session is not None
        dirty = {}
        for node in cluster["nodes"]:
            for service, address in node["metrics"].items():
                async with run.session.get(f"http://{address}/metrics") as reply:
                    page = await reply.text()
                assert 'peer="' in page or service != "transport", page
                code, output = await asyncio.to_thread(promtool_check, page)
                if (code, output) != (0, ""):
                    dirty[f"{node['name']}/{service}"] = f"exit {code}: {output}"
        assert not dirty, dirty
        assert prom.process is None  # stopped: the server this test started is gone
    timings["total_s"] = time.monotonic() - started
    timings = {k: round(v, 1) for k, v in timings.items()}
    print(json.dumps({"timings": timings, "final": final, "empty_panels": sorted(set(empty))}))
