"""One vertex, one trace: a real 4-node cluster exports its spans to an OTLP receiver.

The vertex goes in through node1's gateway (REST, ``?wait=true``); its trace must
hold spans of all four services on at least three nodes, in one connected tree
(span links followed), and node1's consensus must have observed every stage of
``cretoai_consensus_stage_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest

from cretoai.config import load_config
from devkit.otlp_receiver import OtlpReceiver, ReceivedSpan
from node.supervisor import Supervisor
from services.consensus.tracing import STAGES

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

SERVICES = {"cretoai-gateway", "cretoai-consensus", "cretoai-transport", "cretoai-storage"}
#: Per node, what the vertex's trace must show there (on at least three nodes).
PER_NODE = {
    ("cretoai-consensus", "consensus.batch"),
    ("cretoai-transport", "transport.receive"),
    ("cretoai-storage", "/cretoai.v1.Storage/CommitBatch"),
    ("cretoai-storage", "/cretoai.v1.Storage/WriteState"),
}


def trace_of(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    """The spans of ``root``'s trace and of every trace linked from or to it."""
    traces = {root.trace_id}
    while True:
        more = set(traces)
        for s in spans:
            linked = {t for t, _ in s.links}
            if s.trace_id in traces:
                more |= linked
            elif linked & traces:
                more.add(s.trace_id)
        if more == traces:
            return [s for s in spans if s.trace_id in traces]
        traces = more


def problems(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[str]:
    """Why ``spans`` (one vertex's) are not yet the complete, connected trace; [] if they are."""
    out = []
    ids = {s.span_id for s in spans}
    # one root per trace (the linked traces of the batch's other vertices have theirs);
    # trace_of joined those traces through span links, so links connect the trees
    roots: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in spans:
        if not s.parent_span_id:
            roots[s.trace_id].append(s)
    if (
        roots.get(root.trace_id) != [root]
        or any(len(r) != 1 for r in roots.values())
        or set(roots) != {s.trace_id for s in spans}
    ):
        named = {t: [f"{r.service_name}@{r.node} {r.name}" for r in rs] for t, rs in roots.items()}
        out.append(f"roots by trace: {named}")
    dangling = [s for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    if dangling:
        out.append(f"{len(dangling)} spans whose parent is missing, e.g. {dangling[0].name}")
    services = {s.service_name for s in spans}
    if services != SERVICES:
        out.append(f"services: {sorted(services)}")
    shown: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for s in spans:
        shown[s.node].add((s.service_name, s.name))
    complete = sorted(n for n, have in shown.items() if have >= PER_NODE)
    if len(complete) < 3:
        out.append(f"nodes with every per-node span: {complete}")
    return out


def tree(spans: list[ReceivedSpan], width: int = 200) -> str:
    """The spans as an indented tree (children by start time), for failure messages."""
    children: dict[str, list[ReceivedSpan]] = defaultdict(list)
    ids = {s.span_id for s in spans}
    for s in spans:
        children[s.parent_span_id if s.parent_span_id in ids else ""].append(s)
    t0 = min((s.start_ns for s in spans), default=0)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_ns):
            orphan = " (parent missing)" if s.parent_span_id and s.parent_span_id not in ids else ""
            link = f" links={len(s.links)}" if s.links else ""
            lines.append(
                f"{'  ' * depth}{s.service_name.removeprefix('cretoai-')}@{s.node} {s.name} "
                f"+{(s.start_ns - t0) / 1e6:.1f}ms {(s.end_ns - s.start_ns) / 1e6:.2f}ms"
                f"{link}{orphan}"[:width]
            )
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


async def vertex_traces(
    receiver: OtlpReceiver, node: str, count: int = 1
) -> list[tuple[ReceivedSpan, list[ReceivedSpan]]]:
    """The gateway spans of the ``count`` POST /v1/vertices made to ``node``, each with its
    vertex's trace, once all are complete (a test failure with the trees otherwise)."""

    def posts(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.service_name == "cretoai-gateway"
            and s.node == node
            and s.name == "POST /v1/vertices"
        ]

    def complete(spans: list[ReceivedSpan]) -> bool:
        roots = posts(spans)
        return len(roots) == count and not any(problems(trace_of(spans, r), r) for r in roots)

    try:
        spans = await asyncio.to_thread(receiver.wait_for, complete, 30)
    except TimeoutError:
        spans = receiver.spans()
        roots = posts(spans)
        assert roots, f"no gateway span for POST /v1/vertices on {node}"
        pytest.fail(
            "\n".join(
                f"{problems(trace_of(spans, r), r)}\n{tree(trace_of(spans, r))}" for r in roots
            )
        )
    return [(r, trace_of(spans, r)) for r in posts(spans)]


async def post_vertex(
    session: aiohttp.ClientSession, url: str, tag: str = "one traced vertex"
) -> dict[str, object]:
    body = {"payload": base64.b64encode(tag.encode()).decode(), "parents": []}
    for _ in range(50):  # 503 while the cluster connects
        async with session.post(url, json=body) as resp:
            reply = await resp.json(content_type=None)
            if resp.status != 503:
                assert resp.status == 200, reply
                return dict(reply)
        await asyncio.sleep(0.2)
    raise AssertionError(f"POST {url}: still 503: {reply}")


async def stage_counts(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url) as resp:
        text = await resp.text()
    counts = {}
    for line in text.splitlines():
        if line.startswith('cretoai_consensus_stage_seconds_count{stage="'):
            name, _, value = line.rpartition(" ")
            counts[name.split('"')[1]] = float(value)
    return counts


async def test_one_vertex_one_trace_across_four_nodes(
    cluster_factory, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s of a span's end
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    layout = cluster_factory(
        4, extra={"telemetry": {"otlp_endpoint": receiver.endpoint, "sampling_ratio": 1.0}}
    )
    configs = [load_config(n.config, environ={}) for n in layout.nodes]
    supervisor = Supervisor(configs, log_dir=lambda c: c.data_dir.parent / "logs")
    await supervisor.start(timeout=120)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            node1 = configs[0]
            reply = await post_vertex(session, f"http://{node1.gateway.http}/v1/vertices?wait=true")
            assert reply["status"] == "finalized", reply

            [(root, ours)] = await vertex_traces(receiver, "node1")
            print(tree(ours))
            assert root.parent_span_id == ""
            assert root.attributes["http.response.status_code"] == 200
            # the vertex's trace is one trace here (one vertex, one batch: no links needed)
            assert {s.trace_id for s in ours} == {root.trace_id}, tree(ours)
            batches = [s for s in ours if s.name == "consensus.batch"]
            assert {s.attributes["pbft.role"] for s in batches} == {"primary", "backup"}
            assert len({s.attributes["pbft.seq"] for s in batches}) == 1
            for phase in ("pbft.pre_prepare", "pbft.prepare", "pbft.commit", "consensus.notify"):
                assert any(s.name == phase for s in ours), f"no {phase}\n{tree(ours)}"

            # a vertex submitted to a backup is forwarded with its context: the primary's
            # batch span joins that vertex's trace (a new cluster starts in view 1: its
            # first primary, started with nothing, hands view 0 on; ask who leads)
            async with session.get(f"http://{node1.gateway.http}/v1/status") as resp:
                primary = configs[int((await resp.json())["primary"])].node.name
            backup = next(c for c in configs if c.node.name != primary)
            receiver.clear()
            reply = await post_vertex(
                session, f"http://{backup.gateway.http}/v1/vertices?wait=true"
            )
            assert reply["status"] == "finalized", reply
            [(_, forwarded)] = await vertex_traces(receiver, backup.node.name)
            print(tree(forwarded))
            assert any(
                s.name == "consensus.batch"
                and s.node == primary
                and s.attributes["pbft.role"] == "primary"
                for s in forwarded
            ), tree(forwarded)

            # vertices batched together: each one's trace reaches the batch (a child of
            # the first one's context, linked to the others')
            receiver.clear()
            url = f"http://{node1.gateway.http}/v1/vertices?wait=true"
            replies = await asyncio.gather(*(post_vertex(session, url, f"v{i}") for i in range(3)))
            assert [r["status"] for r in replies] == ["finalized"] * 3, replies
            for _, spans in await vertex_traces(receiver, "node1", 3):
                assert any(s.name == "consensus.batch" and s.node == primary for s in spans), tree(
                    spans
                )
            print("seqs of the three:", [r["seq"] for r in replies])

            counts = await stage_counts(session, f"http://{node1.consensus.metrics}/metrics")
            missing = [stage for stage in STAGES if counts.get(stage, 0) < 1]
            assert not missing, f"stages never observed on node1: {missing}; {counts}"
    finally:
        await supervisor.stop()
