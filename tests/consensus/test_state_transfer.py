"""State transfer: a replica behind the others' stable checkpoint fetches certified batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    PrePrepare,
    SignedEnvelope,
    StateRequestEnvelope,
    StateResponseEnvelope,
    TransferBatch,
)
from services.consensus.core.reputation import FaultKind
from tests.consensus.harness import Cluster, leave_3_behind, request, sign, wire


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
    leave_3_behind(c, 10)
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


def _asked(c: Cluster, since: int = 0) -> dict[int, int]:
    """STATE-REQUESTs replica 3 sent after ``since`` messages, per peer asked."""
    asked: dict[int, int] = {}
    for who, w in c.sent[since:]:
        if who == 3 and isinstance(w.envelope, StateRequestEnvelope):
            assert w.to is not None  # a STATE-REQUEST goes to one peer
            asked[w.to] = asked.get(w.to, 0) + 1
    return asked


def _never_serves_state_to_3(byzantine: int) -> Callable[[int, int, object], bool]:
    return lambda src, dst, env: (
        src == byzantine and dst == 3 and isinstance(env, StateResponseEnvelope)
    )


def test_a_peer_that_never_serves_state_cannot_keep_a_lagging_replica_behind() -> None:
    """Audit (2026-12-04): each new stable checkpoint restarted the transfer at the lowest
    signer, so a replica that takes part in consensus but never answers STATE-REQUESTs
    (replica 0 here) was asked again and again, and while checkpoints came faster than
    the retry (2 status intervals) replica 3 never caught up: 100 of 100 requests to
    replica 0, 420 seqs behind after 400 ticks of load. A peer that let a request time
    out is now asked after those that answer, and a higher target does not re-ask."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    leave_3_behind(c, 20, via=1, settle=3)
    assert c.replica(3).last_executed == 0
    n = 20
    c.blocked = _never_serves_state_to_3(0)
    behind = []
    for _ in range(400):  # a request a tick: a checkpoint every 4 ticks, retry after 40
        c.propose(1, request(n))
        n += 1
        c.tick()
        behind.append(c.replica(1).last_executed - c.replica(3).last_executed)
    assert max(behind[-50:]) <= 8, behind[-50:]
    asked = _asked(c)
    assert asked.get(0, 0) <= 1, asked  # asked once, timed out, then asked last
    assert c.digests(3) == c.digests(1)[: len(c.digests(3))]


def test_a_byzantine_primary_making_checkpoints_fast_cannot_starve_a_lagging_replica() -> None:
    """The same driven by the primary: a Byzantine primary (replica 0) orders a batch
    every 2 ticks (checkpoints every 32; the audit used null batches, which are refused
    outside a NEW-VIEW now, so here each holds one request) and never serves state;
    replica 3 had executed nothing after 2,000 ticks, every request sent to replica 0."""
    c = Cluster(
        4,
        batch_max_count=1,
        checkpoint_interval=16,
        watermark_window=48,
        status_interval=20,
        progress_timeout=150,
        request_timeout=400,
        view_change_timeout=200,
    )
    leave_3_behind(c, 40, via=1)
    c.blocked = _never_serves_state_to_3(0)
    seq = c.replica(0)._next_seq
    since = len(c.sent)
    for t in range(2000):
        if t % 2 == 0:
            r = request(f"b{t}")
            pp = PrePrepare(
                view=0, seq=seq, digest=batch_digest((r.hash,)), request_hashes=(r.hash,)
            )
            c.nodes[0].replica._next_seq = seq + 1  # the primary's own count follows
            for j in (1, 2, 3):
                c.queue.append((0, j, wire(SignedEnvelope(sign(c, 0, pp), (r,)))))
            seq += 1
        c.tick()
    executed = [c.replica(i).last_executed for i in range(4)]
    assert executed[1] > 900, executed  # its batches did execute
    assert executed[3] >= executed[1] - 48, (executed, _asked(c, since))
    assert _asked(c, since).get(0, 0) <= 1


def test_a_replica_that_caught_up_keeps_no_more_request_hashes_than_its_peers() -> None:
    """Audit (2026-12-04): the hashes of batches executed by state transfer, below the
    stable checkpoint already, were trimmed only at the next checkpoint, which an idle
    cluster does not make: a replica that caught up 200 seqs kept 200 against 8."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    leave_3_behind(c, 200)
    c.tick(300)
    assert c.replica(3).last_executed == c.replica(0).last_executed == 200
    assert len(c.replica(3)._recent) <= len(c.replica(0)._recent) + 8, (
        len(c.replica(3)._recent),
        len(c.replica(0)._recent),
    )
