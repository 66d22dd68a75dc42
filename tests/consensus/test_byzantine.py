"""Byzantine detection: equivocation evidence, rejected messages counted per peer, bans."""

from __future__ import annotations

import dataclasses

from cretoai.v1 import pbft_pb2
from services.consensus.core import durable
from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    Commit,
    EvidenceEnvelope,
    NewView,
    Prepare,
    PrePrepare,
    SignedEnvelope,
)
from services.consensus.core.reputation import PENALTY, FaultKind
from tests.consensus.harness import Cluster, request, sign, wire


def two_pre_prepares(c: Cluster):
    r1, r2 = request("a"), request("b")
    pp1 = sign(
        c, 0, PrePrepare(view=0, seq=1, digest=batch_digest((r1.hash,)), request_hashes=(r1.hash,))
    )
    pp2 = sign(
        c, 0, PrePrepare(view=0, seq=1, digest=batch_digest((r2.hash,)), request_hashes=(r2.hash,))
    )
    return (pp1, r1), (pp2, r2)


def test_equivocation_yields_persisted_gossiped_evidence_and_a_ban() -> None:
    c = Cluster(4)
    (pp1, r1), (pp2, r2) = two_pre_prepares(c)
    c.inject(0, 1, wire(SignedEnvelope(pp1, (r1,))))
    c.inject(0, 1, wire(SignedEnvelope(pp2, (r2,))))
    replica = c.replica(1)
    assert 0 in replica.banned
    rd = next(rd for rd in c.readies[1] if rd.evidence)
    assert rd.bans == (0,)
    assert durable.evidence_key(0) in {r.key for r in rd.persist}
    assert any(isinstance(o.envelope, EvidenceEnvelope) and o.to is None for o in rd.send)
    # The gossip convinces the others, which verify it themselves.
    c.deliver()
    assert all(0 in c.replica(j).banned for j in (2, 3))
    # A ban on evidence survives a restart; the banned primary is left behind.
    c.crash(1)
    c.restart(1)
    assert 0 in c.replica(1).banned
    assert c.replica(1).view >= 1


def test_conflicting_commits_are_evidence_too() -> None:
    c = Cluster(4)
    d1, d2 = batch_digest((request(1).hash,)), batch_digest((request(2).hash,))
    c.inject(2, 1, wire(SignedEnvelope(sign(c, 2, Commit(view=0, seq=1, digest=d1)))))
    c.inject(2, 1, wire(SignedEnvelope(sign(c, 2, Commit(view=0, seq=1, digest=d2)))))
    assert 2 in c.replica(1).banned


def test_invalid_evidence_is_charged_to_whoever_sent_it() -> None:
    c = Cluster(4)
    p = sign(c, 2, Prepare(view=0, seq=1, digest=bytes(32)))
    c.inject(3, 1, wire(EvidenceEnvelope(p, p)))  # nothing conflicts
    replica = c.replica(1)
    assert replica.fault_counts()[3, FaultKind.INVALID_PROOF] == 1
    assert 2 not in replica.banned


def test_bad_signatures_lower_reputation_until_a_ban() -> None:
    c = Cluster(4, reputation_threshold=-100)
    data = bytearray(wire(SignedEnvelope(sign(c, 2, Prepare(view=0, seq=1, digest=bytes(32))))))
    data[-3] ^= 0xFF  # inside the signature
    replica = c.replica(1)
    for k in range(1, 6):
        c.inject(2, 1, bytes(data))
        assert replica.reputation(2) == -PENALTY[FaultKind.INVALID_SIGNATURE] * k
    assert 2 in replica.banned
    bans = [rd.bans for rd in c.readies[1] if rd.bans]
    assert bans == [(2,)]
    # From now on the banned peer is ignored.
    good = wire(SignedEnvelope(sign(c, 2, Prepare(view=0, seq=1, digest=bytes(32)))))
    c.inject(2, 1, good)
    assert 1 not in replica._slots


def test_garbage_and_non_members_are_counted_per_peer() -> None:
    c = Cluster(4)
    c.inject(3, 1, b"\xff\x00garbage")
    bad = pbft_pb2.ConsensusEnvelope.FromString(
        wire(SignedEnvelope(sign(c, 3, Prepare(view=0, seq=1, digest=bytes(32)))))
    )
    bad.signed.signer = 9  # not in the validator set
    c.inject(3, 1, bad.SerializeToString())
    counts = c.replica(1).fault_counts()
    assert counts[3, FaultKind.MALFORMED] == 1
    assert counts[3, FaultKind.NON_MEMBER] == 1


def test_stale_messages_are_free_unless_they_flood() -> None:
    c = Cluster(4, checkpoint_interval=4, watermark_window=8)
    replica = c.replica(1)
    stale = wire(SignedEnvelope(sign(c, 2, Prepare(view=0, seq=100, digest=bytes(32)))))
    allowance = 64 + 4 * 8
    for _ in range(allowance):
        c.inject(2, 1, stale)
    assert replica.reputation(2) == 0
    assert replica.fault_counts()[2, FaultKind.OUT_OF_WINDOW] == allowance
    for _ in range(10):
        c.inject(2, 1, stale)
    assert replica.fault_counts()[2, FaultKind.FLOODING] == 1
    assert replica.reputation(2) == -PENALTY[FaultKind.FLOODING]


def test_honest_duplicates_cost_nothing() -> None:
    c = Cluster(4)
    c.propose(0, request(1))
    c.tick(3)
    for src, w in list(c.sent):  # every message once more, to everyone
        for j in range(4):
            if j != src:
                c.inject(src, j, w.data)
    assert all(c.replica(j).reputation(k) == 0 for j in range(4) for k in range(4))


def test_evidence_in_the_records_is_checked_again_on_restart() -> None:
    """Records are not trusted: planted or damaged evidence bans nobody after a restart."""
    c = Cluster(4)
    (pp1, _), (pp2, _) = two_pre_prepares(c)
    node = c.nodes[1]
    # Planted: "evidence" against replica 2 whose second message is forged (bad signature).
    honest = sign(c, 2, Prepare(view=0, seq=1, digest=bytes(32)))
    forged = dataclasses.replace(
        sign(c, 2, Prepare(view=0, seq=1, digest=b"\x01" * 32)), signature=bytes(32)
    )
    node.records[durable.evidence_key(2)] = durable.encode_evidence(
        EvidenceEnvelope(honest, forged)
    )
    # Filed under the wrong signer: real evidence against 0, stored as if against 3.
    node.records[durable.evidence_key(3)] = durable.encode_evidence(EvidenceEnvelope(pp1, pp2))
    # Real evidence against 0, where it belongs.
    node.records[durable.evidence_key(0)] = durable.encode_evidence(EvidenceEnvelope(pp1, pp2))
    c.crash(1)
    c.restart(1)
    replica = c.replica(1)
    assert replica.banned == frozenset({0})
    for signer in (2, 3):  # dropped from the records too
        assert durable.evidence_key(signer) not in node.records
    assert durable.evidence_key(0) in node.records


def test_a_signer_keeps_commits_for_one_seq_in_a_bounded_number_of_views() -> None:
    """Audit (2026-12-04): after 41 views, one Byzantine replica had an honest one keep a
    validly signed COMMIT per (old view, seq in the window), 294 of them, without end
    (about 4.6 KB each with ML-DSA-87). A signer's COMMITs for a seq are kept for its
    COMMIT_VIEWS_PER_SIGNER highest views, and none once the seq committed."""
    from services.consensus.core.replica import COMMIT_VIEWS_PER_SIGNER

    byzantine, victim = 2, 1
    c = Cluster(
        4,
        request_timeout=6,
        progress_timeout=6,
        view_change_timeout=4,
        max_backoff=0,
        checkpoint_interval=4,
        watermark_window=8,
    )
    # no primary gets anything done: the views go by
    c.blocked = lambda s, d, e: (
        isinstance(e, SignedEnvelope) and isinstance(e.signed.msg, (NewView, PrePrepare))
    )
    c.propose(1, request("x"))
    for _ in range(400):
        c.tick()
        if min(c.replica(j).view for j in range(4)) >= 40:
            break
    c.blocked = None
    c.tick(200)
    v = c.replica(victim)
    seqs = range(v.last_executed + 1, v.stable_seq + 9)
    for view in range(v.view + 1):
        for seq in seqs:
            digest = bytes([view % 256, seq % 256]) + bytes(30)
            commit = sign(c, byzantine, Commit(view=view, seq=seq, digest=digest))
            c.inject(byzantine, victim, wire(SignedEnvelope(commit)))
    held = sum(
        1
        for seq in seqs
        if seq in v._slots
        for by in v._slots[seq].commits.values()
        if byzantine in by
    )
    assert v.view >= 40
    assert 0 < held <= COMMIT_VIEWS_PER_SIGNER * len(seqs), held
