"""Checkpoints and garbage collection (paper §4.3)."""

from __future__ import annotations

import pytest

from services.consensus.core.crypto import (
    GENESIS_STATE,
    batch_digest,
    next_state_digest,
    outcome_bytes,
)
from services.consensus.core.messages import (
    Checkpoint,
    CheckpointProofEnvelope,
    Prepare,
    PrePrepare,
    SignedEnvelope,
)
from services.consensus.core.replica import ConsensusHalted
from services.consensus.core.reputation import FaultKind
from services.consensus.sim.node import Requests
from tests.consensus.harness import Cluster, request, sent_kinds, sign, wire


def run(c: Cluster, requests: int) -> None:
    for i in range(requests):
        c.propose(0, request(i))
        c.tick()
    c.tick(5)


def test_a_checkpoint_every_k_sequence_numbers_becomes_stable() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    run(c, 9)
    for i in range(4):
        assert c.replica(i).last_executed == 9
        assert c.replica(i).stable_seq == 8
    assert sent_kinds(c, 1).count("Checkpoint") == 2  # at 4 and 8


def test_the_state_digest_chains_every_executed_batch_and_its_outcomes() -> None:
    c = Cluster(4, batch_max_count=1)
    run(c, 3)
    app = c.nodes[2].app
    state = GENESIS_STATE
    for committed, reasons, stored in zip(app.log, app.outcomes, app.states, strict=True):
        outcomes = outcome_bytes(r is not None for r in reasons)
        state = next_state_digest(state, committed.seq, committed.digest, outcomes)
        assert stored == state
        # the same order with another outcome is another state
        flipped = outcome_bytes(r is None for r in reasons)
        assert next_state_digest(state, committed.seq, committed.digest, flipped) != state
    assert c.replica(2).last_executed == len(app.log) == 3


def test_garbage_collection_below_the_stable_checkpoint() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    run(c, 9)
    node = c.nodes[1]
    replica = node.replica
    assert all(seq > 8 for seq in replica._slots)
    assert all(seq > 8 for seq in replica._checkpoints)
    own = [k for k in node.records if k.startswith(("own/", "prepared/"))]
    assert own and all(int(k.rsplit("/", 1)[1]) > 8 for k in own)
    assert "stable" in node.records


def test_watermarks_advance_and_bound_what_is_accepted() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    run(c, 4)
    replica = c.replica(3)
    assert replica.stable_seq == 4  # window (4, 12]
    d = batch_digest(())
    for seq, kind in ((4, FaultKind.STALE), (13, FaultKind.OUT_OF_WINDOW)):
        c.inject(1, 3, wire(SignedEnvelope(sign(c, 1, Prepare(view=0, seq=seq, digest=d)))))
        assert replica.fault_counts()[1, kind] == 1
    c.inject(1, 3, wire(SignedEnvelope(sign(c, 1, Prepare(view=0, seq=12, digest=d)))))
    assert 12 in replica._slots
    assert replica.reputation(1) == 0  # lagging honest replicas send such things too


def test_the_primary_stops_at_the_high_watermark_until_a_checkpoint_is_stable() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=2, watermark_window=4)
    c.cut |= {(j, 0) for j in range(1, 4)}  # the primary hears nothing back
    for i in range(6):
        c.propose(0, request(i))
    c.tick(2)
    assert sent_kinds(c, 0).count("PrePrepare") == 4
    c.heal()
    c.tick(25)  # retransmission brings the votes; checkpoints 2 and 4 become stable
    assert c.replica(0).stable_seq >= 4
    assert len(c.executed_hashes(0)) == 6


def test_lost_checkpoints_are_resent_to_a_stalled_peer() -> None:
    """Every CHECKPOINT at 4 and 8 is lost: nobody has a stable checkpoint (so no proof to
    send), the window (8) is full and no primary can go on. Peers whose STATUS stays
    below one's own CHECKPOINTs get them again, and the window moves (simulator seed
    5518 at n=4: without the resend, views changed for ever and nothing executed)."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)

    def checkpoints(src: int, dst: int, env: object) -> bool:
        return isinstance(env, SignedEnvelope) and isinstance(env.signed.msg, Checkpoint)

    c.blocked = checkpoints
    run(c, 10)
    assert all((c.replica(j).last_executed, c.replica(j).stable_seq) == (8, 0) for j in range(4))
    c.blocked = None
    c.tick(3 * c.nodes[0].replica.config.status_interval)
    assert all(c.replica(j).stable_seq == 8 for j in range(4))
    assert all(len(c.executed_hashes(j)) == 10 for j in range(4))


def test_a_checkpoint_needs_a_quorum_of_matching_digests() -> None:
    c = Cluster(4, checkpoint_interval=4, watermark_window=8)
    replica = c.replica(3)
    good, bad = bytes(32), b"\x01" * 32
    for j, digest in ((0, good), (1, good), (2, bad)):
        c.inject(j, 3, wire(SignedEnvelope(sign(c, j, Checkpoint(seq=4, state_digest=digest)))))
    assert replica.stable_seq == 0
    # A third matching one: stable. This replica executed nothing, so the
    # watermarks move and it fetches the state from the checkpoint's signers.
    cp = sign(c, 3, Checkpoint(seq=4, state_digest=good))
    replica._add_checkpoint(cp)  # as if it had signed it itself
    assert replica.stable_seq == 4
    assert any(type(w.envelope).__name__ == "StateRequestEnvelope" for _, w in c.sent) or (
        replica._transfer is not None
    )


def test_a_checkpoint_contradicting_the_stable_one_is_charged_to_its_signer() -> None:
    """A CHECKPOINT whose state digest differs from the one a quorum proved for that seq
    was ignored without a word: a lying or diverged replica went unnoticed (audit,
    2026-12-04). Before the proof and after it, it is a fault of its signer."""
    c = Cluster(4, checkpoint_interval=4, watermark_window=8)
    replica = c.replica(3)
    good, bad = bytes(32), b"\x01" * 32
    for j, digest in ((2, bad), (0, good), (1, good)):  # the divergent one first
        c.inject(j, 3, wire(SignedEnvelope(sign(c, j, Checkpoint(seq=4, state_digest=digest)))))
    replica._add_checkpoint(sign(c, 3, Checkpoint(seq=4, state_digest=good)))
    assert replica.stable_seq == 4
    faults = replica.fault_counts()
    assert faults[2, FaultKind.DIVERGENT_CHECKPOINT] == 1
    assert (0, FaultKind.DIVERGENT_CHECKPOINT) not in faults
    # one arriving once the checkpoint is stable: charged too; a matching one is not
    c2 = Cluster(4, checkpoint_interval=4, watermark_window=8)
    late = c2.replica(3)
    for j in (0, 1):
        c2.inject(j, 3, wire(SignedEnvelope(sign(c2, j, Checkpoint(seq=4, state_digest=good)))))
    late._add_checkpoint(sign(c2, 3, Checkpoint(seq=4, state_digest=good)))
    assert late.stable_seq == 4
    c2.inject(2, 3, wire(SignedEnvelope(sign(c2, 2, Checkpoint(seq=4, state_digest=bad)))))
    c2.inject(1, 3, wire(SignedEnvelope(sign(c2, 1, Checkpoint(seq=4, state_digest=good)))))
    faults = late.fault_counts()
    assert faults[2, FaultKind.DIVERGENT_CHECKPOINT] == 1
    assert (1, FaultKind.DIVERGENT_CHECKPOINT) not in faults


def test_a_checkpoint_off_the_interval_is_a_protocol_fault() -> None:
    c = Cluster(4, checkpoint_interval=4, watermark_window=8)
    c.inject(2, 3, wire(SignedEnvelope(sign(c, 2, Checkpoint(seq=3, state_digest=bytes(32))))))
    assert c.replica(3).fault_counts()[2, FaultKind.PROTOCOL] == 1


def test_a_forged_checkpoint_proof_is_rejected() -> None:
    c = Cluster(4, checkpoint_interval=4, watermark_window=8)
    cps = tuple(sign(c, j, Checkpoint(seq=8, state_digest=bytes(32))) for j in (0, 1))
    c.inject(1, 3, wire(CheckpointProofEnvelope(cps)))  # two of q=3
    assert c.replica(3).fault_counts()[1, FaultKind.INVALID_PROOF] == 1
    assert c.replica(3).stable_seq == 0


def test_pre_prepares_for_collected_sequence_numbers_are_stale() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    run(c, 4)
    pp = sign(c, 0, PrePrepare(view=0, seq=2, digest=batch_digest(()), request_hashes=()))
    c.inject(0, 2, wire(SignedEnvelope(pp)))
    assert c.replica(2).fault_counts()[0, FaultKind.STALE] == 1


class _DistrustOne(Requests):
    """A replica whose execution wrongly finds one request's signature bad."""

    def __init__(self, bad: bytes) -> None:
        self.bad = bad

    def signature_ok(self, body: bytes) -> bool:
        return body != self.bad


def test_a_replica_that_decided_differently_halts_at_the_next_checkpoint() -> None:
    """Checkpoints cover execution outcomes: a silent divergence cannot outlive one."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    odd = request("judged differently")
    c.nodes[3].requests = _DistrustOne(odd.body)
    c.propose(0, odd)
    c.tick()
    for i in range(1, 3):
        c.propose(0, request(i))
        c.tick()
    assert [r is None for r in c.nodes[0].app.outcomes[0]] == [True]
    assert [r is None for r in c.nodes[3].app.outcomes[0]] == [False]  # the divergence
    with pytest.raises(ConsensusHalted, match="differs from"):
        c.propose(0, request(3))  # seq 4: the checkpoint
        c.tick(5)
    for i in range(3):
        assert c.replica(i).stable_seq == 4  # the others agree and move on
