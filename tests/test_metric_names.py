"""Every Prometheus metric the node declares follows one naming scheme, and is documented.

- ``cretoai_<service>_…`` (``services/<service>/``; ``cretoai_grpc_`` and ``cretoai_service_``
  for the shared runner in ``cretoai/``), snake_case;
- counters end ``_total`` (prometheus_client adds it), nothing else does (nor
  ``_count``/``_sum``/``_bucket``);
- base units only: durations ``_seconds``, sizes ``_bytes`` (no ms, KB, ``latency``,
  ``duration``, ``time`` or ``size`` in a name); a help text about time or bytes has its unit
  in the name;
- labels are snake_case and never ``le``, ``quantile``, ``instance`` or ``job`` (Prometheus
  owns those);
- every metric is in ``docs/metrics.md``.

Metrics are read with ``ast`` from every ``prometheus_client`` constructor under ``cretoai/``
and ``services/`` (as ``tests/test_dashboard.py`` does), so a new metric is checked without
importing anything.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_dashboard import _prometheus_types

DOC = REPO / "docs" / "metrics.md"
NAME = re.compile(r"^cretoai_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
#: Name parts that mean a unit other than the base one, or a quantity without its unit.
NOT_BASE_UNITS = {
    "ms", "us", "ns", "millis", "micros", "milliseconds", "microseconds", "minutes", "hours",
    "kb", "mb", "gb", "kib", "mib", "gib", "kilobytes", "megabytes",
    "latency", "duration", "time", "size",
}  # fmt: skip
RESERVED_LABELS = {"le", "quantile", "instance", "job"}
SHARED_PREFIXES = ("cretoai_grpc_", "cretoai_service_")


@dataclass(frozen=True)
class Declared:
    name: str  # as exposed: counters with their _total
    kind: str
    help: str
    labels: tuple[str, ...]
    path: Path


def _labels(call: ast.Call) -> tuple[str, ...]:
    node: ast.expr | None = call.args[2] if len(call.args) > 2 else None
    for keyword in call.keywords:
        if keyword.arg == "labelnames":
            node = keyword.value
    if node is None:
        return ()
    value = ast.literal_eval(node)
    return tuple(str(v) for v in value)


def declared_metrics(
    roots: tuple[Path, ...] = (REPO / "cretoai", REPO / "services"),
) -> list[Declared]:
    """Every metric constructed with a literal name under ``roots``."""
    found = []
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        types = _prometheus_types(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and len(node.args) >= 2):
                continue
            kind = types.get(ast.unparse(node.func))
            name, help_text = node.args[0], node.args[1]
            if kind is None or not isinstance(name, ast.Constant):
                continue
            exposed = str(name.value)
            if kind == "Counter" and not exposed.endswith("_total"):
                exposed += "_total"  # prometheus_client adds it
            text = ast.literal_eval(help_text) if isinstance(help_text, ast.Constant) else ""
            found.append(Declared(exposed, kind, str(text), _labels(node), path))
    return found


def problems(metric: Declared) -> list[str]:
    """What is wrong with one metric's name, help and labels (empty: nothing)."""
    out = []
    name = metric.name
    rel = metric.path.relative_to(REPO) if metric.path.is_relative_to(REPO) else metric.path
    if not NAME.match(name):
        out.append("not cretoai_ + snake_case")
    parts = rel.parts
    if parts[0] == "services":
        if not name.startswith(f"cretoai_{parts[1]}_"):
            out.append(f"declared in services/{parts[1]}/ but not named cretoai_{parts[1]}_…")
    elif not name.startswith(SHARED_PREFIXES):
        out.append(f"shared metrics are named {' or '.join(SHARED_PREFIXES)}…")
    if metric.kind != "Counter" and name.endswith(("_total", "_count", "_sum", "_bucket")):
        out.append(f"a {metric.kind.lower()} must not end _total/_count/_sum/_bucket")
    wrong_units = sorted(NOT_BASE_UNITS & set(name.split("_")))
    if wrong_units:
        out.append(f"{wrong_units}: use base units (_seconds, _bytes) or a count noun")
    words = metric.help.lower()
    if (re.match(r"time\b", words) or "latency" in words) and "_seconds" not in name:
        out.append("its help is about time: the name must end _seconds")
    if words.startswith("bytes") and "_bytes" not in name:
        out.append("its help is about bytes: the name must say _bytes")
    if not metric.help.strip():
        out.append("no help text")
    for label in metric.labels:
        if not LABEL.match(label) or label in RESERVED_LABELS:
            out.append(f"label {label!r}: snake_case, not one of {sorted(RESERVED_LABELS)}")
    return [f"{name} ({rel}): {p}" for p in out]


def test_the_metrics_are_found() -> None:
    names = {m.name: m for m in declared_metrics()}
    assert len(names) >= 60
    assert names["cretoai_consensus_view_changes_total"].kind == "Counter"
    assert names["cretoai_transport_rtt_seconds"].labels == ("peer",)
    assert names["cretoai_storage_db_bytes"].kind == "Gauge"
    assert names["cretoai_grpc_server_handled_total"].labels == ("service", "method", "code")


def test_every_metric_follows_the_naming_scheme() -> None:
    found = [p for metric in declared_metrics() for p in problems(metric)]
    assert not found, "\n".join(found)


def test_no_metric_is_declared_twice() -> None:
    seen: dict[str, Path] = {}
    for metric in declared_metrics():
        assert metric.name not in seen, f"{metric.name}: {seen[metric.name]} and {metric.path}"
        seen[metric.name] = metric.path


def test_every_metric_is_documented() -> None:
    text = DOC.read_text()
    missing = sorted(m.name for m in declared_metrics() if f"`{m.name}" not in text)
    assert not missing, f"add to {DOC.relative_to(REPO)}: {missing}"


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        ('Gauge("cretoai_consensus_seen_total", "Seen")', "must not end _total"),
        ('Histogram("cretoai_consensus_commit_ms", "Commit")', "use base units"),
        ('Histogram("cretoai_consensus_commit_latency", "Commit")', "use base units"),
        ('Gauge("cretoai_consensus_pool_size", "Requests in the pool")', "use base units"),
        ('Histogram("cretoai_consensus_commit", "Time to commit")', "must end _seconds"),
        ('Gauge("cretoai_consensus_queued", "Bytes queued")', "must say _bytes"),
        ('Gauge("cretoai_storage_view", "View")', "not named cretoai_consensus_"),
        ('Gauge("cretoai_consensus_up", "Up", ["instance"])', "label 'instance'"),
        ('Gauge("cretoai_consensus_Up", "Up")', "snake_case"),
    ],
)
def test_a_bad_name_is_caught(tmp_path: Path, source: str, complaint: str) -> None:
    module = REPO / "services" / "consensus" / "example.py"  # only its path is used
    tree = tmp_path / "services" / "consensus"
    tree.mkdir(parents=True)
    (tree / "example.py").write_text(
        f"from prometheus_client import Counter, Gauge, Histogram\nX = {source}\n"
    )
    [metric] = declared_metrics((tmp_path / "services",))
    metric = Declared(metric.name, metric.kind, metric.help, metric.labels, module)
    assert any(complaint in p for p in problems(metric)), problems(metric)
