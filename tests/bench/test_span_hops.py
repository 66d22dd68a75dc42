"""bench/cluster_load.py's hop summary of received spans (``span_hops``): each hand-off's
start gap, a call's reply gap, and the timed spans' durations, on spans shaped as
``devkit.otlp_receiver`` serves them."""

from __future__ import annotations

from typing import Any

from bench.cluster_load import span_hops

MS = 1_000_000


def _span(
    span_id: str, name: str, start_ms: float, end_ms: float, parent: str = ""
) -> dict[str, Any]:
    return {
        "trace_id": "t",
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "service_name": "x",
        "node": "node1",
        "attributes": {},
        "links": [],
        "start_ns": int(start_ms * MS),
        "end_ns": int(end_ms * MS),
    }


def test_each_hand_off_is_timed_from_its_parent_and_a_call_back_to_it() -> None:
    spans = [
        _span("p1", "consensus.persist", 0, 7),
        _span("w1", "/cretoai.v1.Storage/WriteState", 2.5, 4.5, parent="p1"),
        _span("p2", "consensus.persist", 100, 110),
        _span("w2", "/cretoai.v1.Storage/WriteState", 103.5, 105, parent="p2"),
        _span("p3", "consensus.persist", 200, 206),
        _span("w3", "/cretoai.v1.Storage/WriteState", 202, 204, parent="p3"),
        _span("s1", "transport.send", 10, 10.1),
        _span("r1", "transport.receive", 11.9, 12, parent="s1"),
        # a receive whose send was not received, and a pair that is not a hop: neither counts
        _span("r2", "transport.receive", 50, 51, parent="missing"),
        _span("x1", "consensus.notify", 60, 61, parent="p1"),
    ]
    summary = span_hops(spans)
    hops = {(h["from"], h["to"]): h for h in summary["hops"]}
    assert set(hops) == {
        ("consensus.persist", "/cretoai.v1.Storage/WriteState"),
        ("transport.send", "transport.receive"),
    }
    write = hops[("consensus.persist", "/cretoai.v1.Storage/WriteState")]
    assert write["start_gap"] == {"count": 3, "p50_ms": 2.5, "p90_ms": 3.5}
    assert write["reply_gap"] == {"count": 3, "p50_ms": 2.5, "p90_ms": 5.0}
    message = hops[("transport.send", "transport.receive")]
    assert message["start_gap"] == {"count": 1, "p50_ms": 1.9, "p90_ms": 1.9}
    assert "reply_gap" not in message  # a message is not waited for: no reply to time
    assert summary["durations"]["consensus.persist"]["p50_ms"] == 7.0
    assert summary["durations"]["/cretoai.v1.Storage/WriteState"]["count"] == 3
    assert "transport.send" not in summary["durations"]


def test_no_spans_give_no_hops() -> None:
    assert span_hops([]) == {"hops": [], "durations": {}}
