"""deploy/grafana/cretoai-cluster.json is a Grafana dashboard whose every PromQL expression
names only metrics some service declares — renaming a metric without the dashboard fails here.

Declared names are read with ``ast`` from every ``prometheus_client`` ``Counter``, ``Gauge``,
``Histogram`` and ``Summary`` under cretoai/ and services/, with the series names
prometheus_client exposes for each (``_total`` of counters, ``_bucket/_sum/_count`` of
histograms, ...).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "cretoai-cluster.json"

#: Series prometheus_client exposes per metric type (base name without ``_total``).
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
}

METRIC = re.compile(r"\bcretoai_[a-zA-Z0-9_:]*")


def _prometheus_types(tree: ast.Module) -> dict[str, str]:
    """Local name -> metric type, for what this module imports from prometheus_client."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            for alias in node.names:
                if alias.name in SUFFIXES:
                    names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "prometheus_client":
                    names.update({f"{alias.asname or alias.name}.{t}": t for t in SUFFIXES})
    return names


def declared_series() -> dict[str, str]:
    """Every series name the services can expose -> the file that declares it."""
    series: dict[str, str] = {}
    for path in sorted([*(REPO / "cretoai").rglob("*.py"), *(REPO / "services").rglob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        types = _prometheus_types(tree)
        if not types:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            callee = ast.unparse(node.func)
            first = node.args[0]
            if callee not in types or not isinstance(first, ast.Constant):
                continue
            if not isinstance(first.value, str):
                continue
            kind = types[callee]
            base = first.value
            if kind == "Counter":
                base = base.removesuffix("_total")
            for suffix in SUFFIXES[kind]:
                series[base + suffix] = str(path.relative_to(REPO))
    return series


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and of every templating query."""
    for panel in panels(data):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for variable in data.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            yield (
                f"variable ${variable['name']}",
                query["query"] if isinstance(query, dict) else query,
            )


def test_the_declared_metrics_are_found() -> None:
    series = declared_series()
    # one of each type, from different services: the ast reading works
    assert "cretoai_consensus_vertices_executed_total" in series
    assert "cretoai_consensus_finality_seconds_bucket" in series
    assert "cretoai_transport_peers_connected" in series
    assert "cretoai_storage_commit_seconds_count" in series
    assert "cretoai_grpc_server_handled_total" in series
    assert "cretoai_consensus_vertices_executed" not in series  # a counter is ..._total


def test_it_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert data["title"] and data["uid"]
    assert 36 <= data["schemaVersion"] <= 41
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(data)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [panel for panel in panels(data) if panel["type"] != "row"]
    assert len(graphs) >= 8
    for panel in graphs:
        where = f"panel {panel.get('title')!r}"
        assert panel["title"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), where
        assert panel["targets"], f"{where} has no targets"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where


def test_the_issue_asks_for_these_panels() -> None:
    text = " ".join(expr for _, expr in expressions(dashboard()))
    for needed in (
        "histogram_quantile(0.99, sum by (le, instance) "
        "(rate(cretoai_consensus_finality_seconds_bucket",
        "rate(cretoai_consensus_vertices_executed_total",
        "cretoai_consensus_view{",
        "cretoai_consensus_view_changes_total",
        "cretoai_transport_peers_connected",
        "cretoai_consensus_pool_requests",
        "cretoai_consensus_inbox_depth",
        "cretoai_transport_send_queue_depth",
        "cretoai_storage_commit_seconds_bucket",
        "cretoai_consensus_byzantine_events_total",
        "cretoai_consensus_bans_total",
        "histogram_quantile(0.99, sum by (le, stage) (rate(cretoai_consensus_stage_seconds_bucket",
    ):
        assert needed in text, needed


def test_every_metric_in_every_expression_is_declared() -> None:
    series = declared_series()
    checked = 0
    for where, expr in expressions(dashboard()):
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), f"{where}: unbalanced {expr!r}"
        names = METRIC.findall(expr)
        assert names, f"{where}: no cretoai_ metric in {expr!r}"
        unknown = sorted(set(names) - series.keys())
        assert not unknown, f"{where}: no service declares {unknown} (expr: {expr})"
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    ("expr", "bad"),
    [
        ("rate(cretoai_consensus_vertices_executed[5m])", "cretoai_consensus_vertices_executed"),
        ("cretoai_consensus_finality_seconds_total", "cretoai_consensus_finality_seconds_total"),
        ("cretoai_transport_peer_connected", "cretoai_transport_peer_connected"),
    ],
)
def test_a_renamed_or_misspelled_metric_is_caught(expr: str, bad: str) -> None:
    assert set(METRIC.findall(expr)) - declared_series().keys() == {bad}


def test_the_dashboard_file_is_where_the_docs_say() -> None:
    assert DASHBOARD.is_file()
    assert "deploy/grafana/cretoai-cluster.json" in (REPO / "docs" / "node.md").read_text()
