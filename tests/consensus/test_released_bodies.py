"""A batch's bodies leave the replica's memory once the batch is applied (storage holds
them finalized), not at the next stable checkpoint; what needed them still works."""

from __future__ import annotations

from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    Commit,
    Envelope,
    Prepare,
    PrePrepare,
    SignedEnvelope,
    StateResponseEnvelope,
)
from services.consensus.core.ready import ServeState
from services.consensus.core.replica import ReplicaStatus
from tests.consensus.harness import (
    Cluster,
    leave_3_behind,
    request,
    sign,
    signed_messages,
    wire,
)


def held(c: Cluster, i: int) -> int:
    status: ReplicaStatus = c.replica(i).status()
    return status.held_batches


def test_applied_batches_are_let_go_before_the_checkpoint() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=8, watermark_window=16)
    for i in range(3):
        c.propose(0, request(i))
        c.tick()
    c.tick(3)
    for i in range(4):
        assert c.replica(i).last_executed == 3 and c.replica(i).stable_seq == 0
        assert held(c, i) == 0, f"replica {i} holds {held(c, i)} applied batches"
    # a batch in flight is held: replica 3 never sees the commits of the next one
    c.blocked = lambda src, dst, env: (
        dst == 3 and isinstance(env, SignedEnvelope) and isinstance(env.signed.msg, Commit)
    )
    c.propose(0, request("in flight"))
    c.tick()
    assert c.replica(3).last_executed == 3 and held(c, 3) == 1
    assert c.replica(0).last_executed == 4 and held(c, 0) == 0


def test_a_lagging_replica_gets_released_batches_from_storage() -> None:
    c = Cluster(4, batch_max_count=1, checkpoint_interval=8, watermark_window=16)
    leave_3_behind(c, 5, settle=3)
    assert c.replica(3).last_executed == 0 and held(c, 0) == 0
    c.tick(30)
    assert c.digests(3) == c.digests(0) and len(c.digests(3)) == 5
    served = [s for i in (0, 1, 2) for rd in c.readies[i] for s in rd.serve if s.peer == 3]
    assert served and all(isinstance(s, ServeState) and s.to_seq <= 5 for s in served)


def test_a_new_view_re_issuing_an_executed_batch_gets_the_executors_votes() -> None:
    """Seq 1 executes at replicas 0-2; replica 3 never sees its view-0 COMMITs nor a
    transfer. Replica 0 (the primary) crashes; view 1 re-issues seq 1. Replica 2 let
    its bodies go when it applied seq 1 and still PREPAREs and COMMITs it, so replica 3
    executes seq 1 with the view-1 certificate (a quorum of 1, 2 and 3)."""
    c = Cluster(4, request_timeout=10, batch_max_count=1)

    def to_3(src: int, dst: int, env: Envelope | None) -> bool:
        if dst != 3:
            return False
        if isinstance(env, StateResponseEnvelope):
            return True
        return (
            isinstance(env, SignedEnvelope)
            and isinstance(env.signed.msg, Commit)
            and env.signed.msg.view == 0
        )

    c.blocked = to_3
    first = request("executed before the view change")
    c.propose(1, first)
    c.tick(3)
    assert [c.replica(i).last_executed for i in range(4)] == [1, 1, 1, 0]
    assert held(c, 2) == 0
    c.crash(0)
    c.propose(1, request("after"))
    c.tick(60)
    assert c.replica(3).view == 1
    assert c.executed_hashes(3)[:1] == [first.hash]
    assert c.log(3)[0].certificate.view == 1
    prepares = [
        p.msg
        for p in signed_messages(c, 2, Prepare)
        if isinstance(p.msg, Prepare) and p.msg.view == 1
    ]
    assert [p.seq for p in prepares][:1] == [1]


def test_a_batch_proposed_twice_keeps_its_bodies_for_the_later_seq() -> None:
    """A faulty primary orders one batch at seq 1 and again at seq 2, the second
    PRE-PREPARE without bodies. Applying seq 1 must not drop bodies that seq 2 needs:
    the backups hold them, vote for seq 2 and execute it (its vertex a duplicate)."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=8, watermark_window=16)
    r = request("ordered twice")
    c.propose(0, r)  # seq 1, bodies beside its PRE-PREPARE (queued, not delivered yet)
    digest = batch_digest((r.hash,))
    again = sign(c, 0, PrePrepare(view=0, seq=2, digest=digest, request_hashes=(r.hash,)))
    for j in (1, 2, 3):
        c.inject(0, j, wire(SignedEnvelope(again)))
    c.tick(3)
    for j in (1, 2, 3):
        assert c.replica(j).last_executed == 1 and held(c, j) == 1, j
    for j in (1, 2, 3):  # the faulty primary sends it again
        c.inject(0, j, wire(SignedEnvelope(again)))
    c.tick(3)
    for j in (1, 2, 3):
        assert c.digests(j) == [digest, digest], j
        assert held(c, j) == 0, j
