"""Normal-case operation (paper §4.2): PRE-PREPARE, PREPARE, COMMIT, batching, pipelining."""

from __future__ import annotations

from services.consensus.core.crypto import NULL_DIGEST, batch_digest
from services.consensus.core.messages import (
    BatchEnvelope,
    Commit,
    Prepare,
    PrePrepare,
    Request,
    RequestsEnvelope,
    SignedEnvelope,
)
from services.consensus.core.replica import ProposeResult
from services.consensus.core.reputation import FaultKind
from services.consensus.sim.crypto import fast_request_hash
from tests.consensus.harness import Cluster, request, sent_kinds, sign, wire


def assert_agreement(c: Cluster) -> None:
    logs = [c.digests(i) for i in range(c.n) if c.nodes[i].up]
    longest = max(logs, key=len)
    for log in logs:
        assert log == longest[: len(log)]


def test_requests_execute_once_in_sequence_order_everywhere() -> None:
    c = Cluster(4)
    reqs = [request(i) for i in range(10)]
    for i, r in enumerate(reqs):
        assert c.propose(i % 4, r) is ProposeResult.ACCEPTED
    c.tick(10)
    for i in range(4):
        assert [x.seq for x in c.log(i)] == list(range(1, len(c.log(i)) + 1))
        assert sorted(c.executed_hashes(i)) == sorted(r.hash for r in reqs)
    assert_agreement(c)


def test_each_batch_carries_a_quorum_of_commits() -> None:
    c = Cluster(4)
    c.propose(0, request(1))
    c.tick(3)
    cert = c.log(2)[0].certificate
    assert cert.seq == 1 and len({m.signer for m in cert.commits}) == 3
    assert all(m.msg == Commit(view=0, seq=1, digest=cert.digest) for m in cert.commits)


def test_backups_forward_requests_to_the_primary() -> None:
    c = Cluster(4)
    c.propose(2, request("fwd"))
    forwards = [w for who, w in c.sent if who == 2 and isinstance(w.envelope, RequestsEnvelope)]
    assert forwards and forwards[0].to == 0
    c.tick(3)
    assert c.executed_hashes(0) == [request("fwd").hash]


def _pre_prepare_bodies(c: Cluster) -> dict[int | None, set[bytes]]:
    """The bodies the primary (0) sent beside its PRE-PREPAREs, by destination (None:
    multicast)."""
    out: dict[int | None, set[bytes]] = {}
    for who, w in c.sent:
        env = w.envelope
        if who == 0 and isinstance(env, SignedEnvelope) and isinstance(env.signed.msg, PrePrepare):
            out.setdefault(w.to, set()).update(r.hash for r in env.requests)
    return out


def _bodies_to(c: Cluster, peer: int) -> set[bytes]:
    bodies = _pre_prepare_bodies(c)
    return bodies.get(peer, set()) | bodies.get(None, set())


def test_the_primary_does_not_send_a_backup_back_the_bodies_it_forwarded() -> None:
    c = Cluster(4)
    forwarded, local = request("from-2"), request("at-0")
    c.propose(2, forwarded)
    c.deliver()  # the forward reaches the primary before its own request arrives
    c.propose(0, local)
    c.tick(3)
    assert forwarded.hash not in _bodies_to(c, 2)
    assert forwarded.hash in _bodies_to(c, 1) and forwarded.hash in _bodies_to(c, 3)
    assert all(local.hash in _bodies_to(c, peer) for peer in (1, 2, 3))
    for i in range(4):  # replica 2 took the body from its pool, and prepared
        assert sorted(c.executed_hashes(i)) == sorted([forwarded.hash, local.hash])
    assert_agreement(c)


def test_a_peer_that_relays_anothers_request_first_deprives_only_itself() -> None:
    c = Cluster(4)
    r = request("from-2")
    c.propose(2, r)  # its forward to the primary is queued, not yet delivered
    c.inject(3, 0, wire(RequestsEnvelope((r,))))  # replica 3 relays the same copy first
    assert r.hash not in _bodies_to(c, 3)  # the primary takes 3 for its holder: 3 is spared
    assert r.hash in _bodies_to(c, 1) and r.hash in _bodies_to(c, 2)
    c.tick(3)
    for i in (0, 1, 2):  # a quorum without 3, which lacks the body
        assert c.executed_hashes(i) == [r.hash]
    assert_agreement(c)


def test_requests_of_no_peer_go_out_as_one_multicast() -> None:
    c = Cluster(4)
    c.propose(0, request("local"))
    c.tick(3)
    assert set(_pre_prepare_bodies(c)) == {None}


def test_a_backup_that_lost_its_forwarded_request_gets_the_body_by_retransmission() -> None:
    c = Cluster(4)
    forwarded = request("lost")
    c.blocked = lambda src, dst, env: src == 0 and dst == 2
    c.propose(2, forwarded)
    c.tick(2)
    assert forwarded.hash in c.executed_hashes(0)  # the others finalized it without 2
    c.crash(2)
    c.restart(2)  # its pool is gone, and the primary never sent it the body
    assert c.executed_hashes(2) == []
    c.blocked = None
    c.tick(60)
    assert c.executed_hashes(2) == [forwarded.hash]
    assert_agreement(c)


def test_batches_are_bounded_by_count() -> None:
    c = Cluster(4, batch_max_count=4)
    c.propose_burst(0, [request(i) for i in range(10)])
    c.tick(5)
    assert [len(x.requests) for x in c.log(1)] == [4, 4, 2]


def test_batches_are_bounded_by_bytes() -> None:
    c = Cluster(4, batch_max_bytes=4096)
    big = [
        Request(hash=fast_request_hash(bytes([i]) * 1500), body=bytes([i]) * 1500) for i in range(5)
    ]
    c.propose_burst(0, big)
    c.tick(5)
    assert [len(x.requests) for x in c.log(3)] == [2, 2, 1]
    huge = b"x" * 5000
    assert c.propose(0, Request(fast_request_hash(huge), huge)) is ProposeResult.TOO_LARGE


def test_an_idle_primary_orders_a_burst_at_once_as_one_batch() -> None:
    """Nothing in flight: no batch timeout; the whole burst goes in one PRE-PREPARE."""
    c = Cluster(4, batch_timeout=50, batch_max_count=8)
    c.propose_burst(0, [request(i) for i in range(3)])
    assert sent_kinds(c, 0) == ["PrePrepare"]
    c.deliver()
    assert [len(x.requests) for x in c.log(1)] == [3]  # before any tick


def test_a_partial_batch_waits_for_the_batch_timeout_while_one_is_in_flight() -> None:
    c = Cluster(4, batch_timeout=5, batch_max_count=8, max_inflight=2)
    c.isolate(0)  # the first batch stays in flight
    c.propose(0, request("first"))
    assert sent_kinds(c, 0).count("PrePrepare") == 1
    c.propose(0, request("second"))
    for _ in range(4):
        c.tick()
        assert sent_kinds(c, 0).count("PrePrepare") == 1
    c.tick()
    assert sent_kinds(c, 0).count("PrePrepare") == 2


def test_without_cut_when_idle_a_partial_batch_waits_for_the_batch_timeout() -> None:
    c = Cluster(4, batch_timeout=5, batch_max_count=8, cut_when_idle=False)
    c.propose(0, request("lonely"))
    for _ in range(4):
        c.tick()
        assert "PrePrepare" not in sent_kinds(c, 0)
    c.tick()
    assert "PrePrepare" in sent_kinds(c, 0)


def test_several_sequence_numbers_are_in_flight_at_once() -> None:
    """Pipelining: the primary issues PRE-PREPAREs before earlier batches commit."""
    c = Cluster(4, batch_max_count=2)
    c.isolate(0)  # nothing comes back to the primary
    for i in range(8):
        c.propose(0, request(i))
    c.tick(2)
    pps = [
        w.envelope.signed.msg
        for who, w in c.sent
        if who == 0 and isinstance(w.envelope, SignedEnvelope)
    ]
    assert [m.seq for m in pps if isinstance(m, PrePrepare)] == [1, 2, 3, 4]
    assert c.replica(0).last_executed == 0


def pre_prepare_seqs(c: Cluster, src: int) -> list[int]:
    """Sequence numbers of the PRE-PREPAREs ``src`` sent, in order."""
    return [
        w.envelope.signed.msg.seq
        for who, w in c.sent
        if who == src
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, PrePrepare)
    ]


def test_the_window_bounds_the_pipeline() -> None:
    c = Cluster(4, batch_max_count=1, watermark_window=4, checkpoint_interval=4)
    c.isolate(0)
    for i in range(7):
        c.propose(0, request(i))
    c.tick(3)
    seqs = pre_prepare_seqs(c, 0)
    assert seqs == [1, 2, 3, 4]  # h = 0, L = 4


def test_full_batches_are_bounded_by_max_inflight_full() -> None:
    c = Cluster(4, batch_max_count=1, max_inflight=1, max_inflight_full=2)
    c.isolate(0)
    for i in range(5):
        c.propose(0, request(i))
    c.tick(3)
    seqs = pre_prepare_seqs(c, 0)
    assert seqs == [1, 2]  # full batches, but only two unexecuted at a time
    c.heal()
    c.tick(20)
    assert len(c.executed_hashes(1)) == 5


def test_execution_waits_for_earlier_sequence_numbers() -> None:
    c = Cluster(4)
    r1, r2 = request("first"), request("second")
    batches = {1: (r1,), 2: (r2,)}
    for seq in (2, 1):
        reqs = batches[seq]
        hashes = tuple(r.hash for r in reqs)
        d = batch_digest(hashes)
        pp = sign(c, 0, PrePrepare(view=0, seq=seq, digest=d, request_hashes=hashes))
        c.inject(0, 3, wire(SignedEnvelope(pp, reqs)))
        for j in (1, 2):
            c.inject(j, 3, wire(SignedEnvelope(sign(c, j, Prepare(view=0, seq=seq, digest=d)))))
        for j in (0, 1):
            c.inject(j, 3, wire(SignedEnvelope(sign(c, j, Commit(view=0, seq=seq, digest=d)))))
        if seq == 2:
            assert c.log(3) == []  # committed, but seq 1 is missing
    assert [x.seq for x in c.log(3)] == [1, 2]
    assert c.executed_hashes(3) == [r1.hash, r2.hash]


def test_a_backup_prepares_only_once_it_holds_the_bodies() -> None:
    c = Cluster(4)
    r = request("body")
    pp = sign(
        c, 0, PrePrepare(view=0, seq=1, digest=batch_digest((r.hash,)), request_hashes=(r.hash,))
    )
    c.inject(0, 1, wire(SignedEnvelope(pp)))  # bodies missing
    assert "Prepare" not in sent_kinds(c, 1)
    c.inject(2, 1, wire(BatchEnvelope((r,))))
    assert "Prepare" in sent_kinds(c, 1)


def test_pre_prepare_from_a_backup_is_a_protocol_fault() -> None:
    c = Cluster(4)
    pp = sign(c, 2, PrePrepare(view=0, seq=1, digest=NULL_DIGEST, request_hashes=()))
    c.inject(2, 1, wire(SignedEnvelope(pp)))
    assert c.replica(1).fault_counts()[2, FaultKind.PROTOCOL] == 1
    assert "Prepare" not in sent_kinds(c, 1)


def test_the_null_batch_outside_a_new_view_is_a_protocol_fault() -> None:
    """An honest primary orders the empty batch only in a NEW-VIEW, to fill gaps; one
    on its own would give a Byzantine primary checkpoints and signatures at its will."""
    c = Cluster(4)
    pp = sign(c, 0, PrePrepare(view=0, seq=1, digest=NULL_DIGEST, request_hashes=()))
    c.inject(0, 1, wire(SignedEnvelope(pp)))
    assert c.replica(1).fault_counts()[0, FaultKind.PROTOCOL] == 1
    assert "Prepare" not in sent_kinds(c, 1)
    assert c.replica(1).last_executed == 0


def test_pre_prepare_with_a_wrong_digest_is_a_protocol_fault() -> None:
    c = Cluster(4)
    r = request("x")
    pp = sign(c, 0, PrePrepare(view=0, seq=1, digest=bytes(32), request_hashes=(r.hash,)))
    c.inject(0, 1, wire(SignedEnvelope(pp, (r,))))
    assert c.replica(1).fault_counts()[0, FaultKind.PROTOCOL] == 1


def test_duplicate_requests_are_refused() -> None:
    c = Cluster(4)
    r = request("dup")
    assert c.propose(1, r) is ProposeResult.ACCEPTED
    assert c.propose(1, r) is ProposeResult.DUPLICATE
    c.tick(4)
    assert c.propose(1, r) is ProposeResult.DUPLICATE  # executed
    assert c.executed_hashes(1) == [r.hash]


def test_the_pool_is_bounded() -> None:
    c = Cluster(4, pool_max=3)
    c.isolate(1)
    results = [c.propose(1, request(i)) for i in range(4)]
    assert results[-1] is ProposeResult.POOL_FULL
    assert results[:3] == [ProposeResult.ACCEPTED] * 3


def test_local_requests_are_shed_while_the_oldest_waited_too_long() -> None:
    """Admission control: a replica behind its load refuses new local requests."""
    c = Cluster(4, request_timeout=50, admission_max_wait=5)
    c.crash(0)  # nothing executes: the pool only ages
    assert c.propose(1, request("first")) is ProposeResult.ACCEPTED
    c.tick(5)
    assert c.propose(1, request("in time")) is ProposeResult.ACCEPTED
    c.tick(1)
    assert c.propose(1, request("late")) is ProposeResult.OVERLOADED
    assert c.propose(2, request("elsewhere")) is ProposeResult.ACCEPTED  # its pool is young
    c.restart(0)
    c.tick(120)  # a new view executes the backlog; the pool is empty again
    assert request("first").hash in c.executed_hashes(1)
    assert c.propose(1, request("after")) is ProposeResult.ACCEPTED


def test_a_relay_does_not_make_an_old_request_look_young() -> None:
    c = Cluster(4, request_timeout=10, admission_max_wait=8)
    c.crash(0)
    assert c.propose(1, request("stuck")) is ProposeResult.ACCEPTED
    c.tick(12)  # relayed to every replica at 10: its timer restarted, its wait did not
    relayed = [w for who, w in c.sent if who == 1 and isinstance(w.envelope, RequestsEnvelope)]
    assert any(w.to is None for w in relayed)  # the relay to every replica
    assert c.propose(1, request("new")) is ProposeResult.OVERLOADED


def test_a_single_replica_cluster_orders_alone() -> None:
    c = Cluster(1)
    for i in range(3):
        c.propose(0, request(i))
    c.tick(3)
    assert len(c.executed_hashes(0)) == 3


def test_two_and_three_replica_clusters() -> None:
    for n in (2, 3):
        c = Cluster(n)
        for i in range(5):
            c.propose(i % n, request(i))
        c.tick(5)
        for i in range(n):
            assert len(c.executed_hashes(i)) == 5


def test_partial_batches_wait_while_too_many_are_in_flight() -> None:
    """max_inflight: under load, requests gather into larger batches instead of tiny ones."""
    c = Cluster(4, batch_max_count=8, batch_timeout=1, max_inflight=1)
    c.isolate(0)  # the first batch cannot execute yet
    c.propose(0, request(0))
    c.tick(2)
    for i in range(1, 4):
        c.propose(0, request(i))
    c.tick(3)
    assert sent_kinds(c, 0).count("PrePrepare") == 1  # one partial batch in flight: wait
    c.heal()
    c.tick(25)  # retransmission completes the first; the rest go out as one batch
    assert [len(x.requests) for x in c.log(2)] == [1, 3]
