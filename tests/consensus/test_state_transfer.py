"""State transfer: a replica behind the others' stable checkpoint fetches certified batches."""

from __future__ import annotations

from dataclasses import replace

from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    StateRequestEnvelope,
    StateResponseEnvelope,
    TransferBatch,
)
from services.consensus.core.reputation import FaultKind
from tests.consensus.harness import Cluster, request, wire


def envelopes(c: Cluster, src: int, kind: type) -> list[object]:
    return [w.envelope for who, w in c.sent if who == src and isinstance(w.envelope, kind)]


def test_a_cut_off_replica_catches_up_through_checkpoints_and_certificates() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    c.isolate(3)
    for i in range(14):
        c.propose(0, request(i))
        c.tick()
    c.tick(5)
    assert c.replica(0).stable_seq == 12 and c.replica(3).last_executed == 0
    c.heal()
    c.tick(30)
    assert envelopes(c, 3, StateRequestEnvelope), "replica 3 asked for state"
    assert c.digests(3) == c.digests(0)
    assert [x.certificate.seq for x in c.log(3)] == list(range(1, 15))
    assert c.replica(3).stable_seq == 12


def test_transfers_are_bounded_in_bytes_and_still_complete() -> None:
    """With a byte budget of one request, each transfer message carries one batch."""
    c = Cluster(
        4, batch_max_count=1, checkpoint_interval=4, watermark_window=8, transfer_max_bytes=1
    )
    c.isolate(3)
    for i in range(10):
        c.propose(0, request(i))
        c.tick()
    c.tick(5)
    c.heal()
    c.tick(60)
    assert c.digests(3) == c.digests(0)
    sent = [env for src in (0, 1, 2) for env in envelopes(c, src, StateResponseEnvelope)]
    assert sent and all(len(env.batches) == 1 for env in sent)  # type: ignore[attr-defined]


def test_a_restarted_replica_catches_up() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    c.propose(0, request("before"))
    c.tick(3)
    c.crash(2)
    for i in range(10):
        c.propose(1, request(i))
        c.tick()
    c.restart(2)
    c.tick(40)
    assert c.digests(2) == c.digests(1)
    assert len(c.executed_hashes(2)) == 11


def test_serving_is_bounded_by_what_was_executed() -> None:
    c = Cluster(4, batch_max_count=1, transfer_max_batches=3)
    for i in range(5):
        c.propose(0, request(i))
    c.tick(5)
    c.inject(2, 1, wire(StateRequestEnvelope(from_seq=2, to_seq=50)))
    serve = c.readies[1][-1].serve
    assert [(s.peer, s.from_seq, s.to_seq) for s in serve] == [(2, 2, 4)]
    c.inject(2, 1, wire(StateRequestEnvelope(from_seq=9, to_seq=50)))
    assert c.readies[1][-1].serve == ()


def test_forged_or_mismatched_transfers_are_rejected_and_charged() -> None:
    c = Cluster(4, batch_max_count=1)
    c.isolate(3)
    c.propose(0, request(1))
    c.tick(3)
    good = c.log(0)[0]
    replica = c.replica(3)
    wrong_body = TransferBatch(requests=(request("other"),), certificate=good.certificate)
    c.inject(1, 3, wire(StateResponseEnvelope((wrong_body,))))
    short = replace(good.certificate, commits=good.certificate.commits[:2])
    c.inject(1, 3, wire(StateResponseEnvelope((TransferBatch(good.requests, short),))))
    assert replica.fault_counts()[1, FaultKind.INVALID_PROOF] == 2
    assert replica.last_executed == 0
    c.inject(2, 3, wire(StateResponseEnvelope((TransferBatch(good.requests, good.certificate),))))
    assert replica.last_executed == 1
    assert c.log(3)[0].digest == batch_digest(r.hash for r in good.requests)
