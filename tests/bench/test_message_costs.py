"""bench.message_costs: what it measures gives what it replaced, and a run writes its
medians and ratios."""

from __future__ import annotations

import json
from pathlib import Path

from bench.message_costs import (
    before,
    delivered_before,
    delivered_now,
    envelope,
    main,
    now,
    persisted_before,
    persisted_now,
    sent_before,
    voted_requests,
)
from cretoai.v1 import storage_pb2, transport_pb2
from services.transport.node import payload_field


def test_the_decoding_measured_now_gives_the_same_hashes_as_before() -> None:
    payload = envelope(6)
    hashes = now(payload)
    assert hashes == before(payload)
    assert len(hashes) == 12 and len(set(hashes)) == 12


def test_the_delivery_measured_now_gives_the_same_batch_as_before() -> None:
    payload = envelope(3)
    wire = sent_before(payload)
    assert payload_field(payload) == wire
    batch = transport_pb2.EnvelopeBatch.FromString(delivered_now(wire))
    assert batch == transport_pb2.EnvelopeBatch.FromString(delivered_before(wire))
    assert batch.envelopes[0].payload == payload


def test_the_persist_measured_now_gives_the_same_request_as_before() -> None:
    requests = voted_requests(envelope(3))
    assert len(requests) == 3
    now = storage_pb2.WriteStateRequest.FromString(persisted_now(requests))
    assert now == storage_pb2.WriteStateRequest.FromString(persisted_before(requests))


def test_a_run_writes_its_medians_and_their_ratios(tmp_path: Path) -> None:
    out = tmp_path / "costs.json"
    assert main(["--bodies", "4", "--repeats", "3", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    decode, delivery, persist = result["decode"], result["delivery"], result["persist"]
    assert set(persist["cpu_ms_per_batch_median"]) == {"before", "now"}
    assert set(decode["cpu_us_per_body_median"]) == {"before", "now", "hash_floor"}
    assert set(delivery["cpu_ms_per_message_median"]) == {
        "before",
        "now",
        "out_before",
        "out_now",
    }
    assert all(v > 0 for v in decode["cpu_us_per_body_median"].values())
    assert len(decode["cpu_us_per_body_samples"]["now"]) == 3
    ratios = (
        decode["ratios"] | delivery["ratios"] | {"persist": persist["ratios"]["now_over_before"]}
    )
    assert set(ratios) == {
        "now_over_before",
        "now_over_hash_floor",
        "before_over_hash_floor",
        "out_now_over_out_before",
        "persist",
    }
    assert all(r > 0 for r in ratios.values())
    fresh = result["fresh_process"]
    assert set(fresh) == {"delivery_before", "delivery_now", "persist_before", "persist_now"}
    assert all(f["cpu_ms_per_message"] > 0 and f["faults_per_message"] >= 0 for f in fresh.values())
