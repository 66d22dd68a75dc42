"""Crash recovery: what a replica signs is persisted before it is sent; restarts resume."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.consensus.core import durable
from services.consensus.core.crypto import batch_digest
from services.consensus.core.durable import CorruptState, SigningMark
from services.consensus.core.messages import (
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    SignedEnvelope,
    StatusEnvelope,
    ViewChange,
)
from services.consensus.core.replica import VIEW_FLOOR_GRACE_INTERVALS, _own_key
from services.consensus.sim.crypto import FastScheme
from services.consensus.sim.node import Application
from tests.consensus.harness import BASE, Cluster, request, sign, wire


def signed_by(c: Cluster, who: int, kind: Any, *, since: int = 0) -> list[Any]:
    """The messages of ``kind`` replica ``who`` sent from ``c.sent[since]`` on."""
    return [
        w.envelope.signed.msg
        for sender, w in c.sent[since:]
        if sender == who
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, kind)
    ]


def test_every_signed_message_is_persisted_before_it_is_sent() -> None:
    c = Cluster(4, batch_max_count=1, request_timeout=10)
    for i in range(6):
        c.propose(i % 4, request(i))
        c.tick()
    c.crash(0)  # a view change too
    c.propose(1, request("after"))
    c.tick(60)
    assert c.replica(1).view == 1
    for i in (1, 2, 3):
        persisted: set[str] = set()
        for rd in c.readies[i]:
            persisted.update(r.key for r in rd.persist if r.value is not None)
            for out in rd.send:
                env = out.envelope
                if isinstance(env, SignedEnvelope) and env.signed.signer == i:
                    assert durable.own_key(*_own_key(env.signed.msg)) in persisted


def test_a_restarted_replica_never_signs_a_conflicting_prepare() -> None:
    c = Cluster(4)
    r1, r2 = request("one"), request("two")
    d1, d2 = batch_digest((r1.hash,)), batch_digest((r2.hash,))
    pp1 = sign(c, 0, PrePrepare(view=0, seq=1, digest=d1, request_hashes=(r1.hash,)))
    c.inject(0, 1, wire(SignedEnvelope(pp1, (r1,))))
    c.crash(1)
    c.restart(1)
    # The (equivocating) primary now proposes another batch at the same (view, seq).
    pp2 = sign(c, 0, PrePrepare(view=0, seq=1, digest=d2, request_hashes=(r2.hash,)))
    c.inject(0, 1, wire(SignedEnvelope(pp2, (r2,))))
    prepares = [
        w.envelope.signed.msg
        for who, w in c.sent
        if who == 1
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, Prepare)
    ]
    assert prepares and {p.digest for p in prepares} == {d1}


def test_a_restarted_primary_never_reuses_a_sequence_number() -> None:
    """Its PRE-PREPAREs for 1..3 reached nobody and were lost with its crash: it must
    not propose those seqs again in that view. It does not propose in the view it
    recovered at all (records restored from an older copy may miss what it sent): it
    hands the view on, and its backups join at once."""
    c = Cluster(4, batch_max_count=1, request_timeout=10)
    c.isolate(0)
    for i in range(3):
        c.propose(0, request(i))
    c.tick(2)
    c.crash(0)
    c.restart(0)
    after_restart = len(c.sent)
    c.heal()
    c.propose(1, request("new"))
    c.tick(60)
    pre_prepares = signed_by(c, 0, PrePrepare, since=after_restart)
    assert all(pp.view > 0 for pp in pre_prepares), "nothing proposed again in view 0"
    assert c.replica(2).view >= 1
    assert c.executed_hashes(2) == [request("new").hash]
    assert all(c.executed_hashes(i) == [request("new").hash] for i in range(4))


def test_a_restarted_primary_hands_its_view_on_and_the_cluster_goes_on() -> None:
    """A primary restarted with its records (a crash, or its whole data directory put
    back from an older copy): it signs a VIEW-CHANGE for the next view at once, its
    backups join it without waiting for their timers, and the next primary orders."""
    c = Cluster(4, batch_max_count=1, request_timeout=1000)
    c.propose(0, request("before"))
    c.tick(5)
    assert c.executed_hashes(1) == [request("before").hash]
    c.crash(0)
    c.restart(0)
    c.tick(20)  # far below the request timeout: no backup suspects anyone
    assert all(c.replica(i).view == 1 and c.replica(i).active for i in range(4))
    c.propose(2, request("after"))
    c.tick(20)
    assert all(
        c.executed_hashes(i) == [request("before").hash, request("after").hash] for i in range(4)
    )


def test_a_restart_resumes_view_and_stable_checkpoint() -> None:
    c = Cluster(4, batch_max_count=1, request_timeout=10, checkpoint_interval=4)
    c.crash(0)
    for i in range(5):
        c.propose(1, request(i))
    c.tick(60)
    before = c.replica(2).status()
    assert before.view == 1 and before.stable_seq == 4
    c.crash(2)
    c.restart(2)
    after = c.replica(2).status()
    assert (after.view, after.active, after.stable_seq, after.last_executed) == (
        before.view,
        before.active,
        before.stable_seq,
        before.last_executed,
    )
    c.propose(2, request("later"))
    c.tick(10)
    assert request("later").hash in c.executed_hashes(2)


def test_a_replica_restarted_during_a_view_change_resends_the_same_view_change() -> None:
    c = Cluster(4, request_timeout=10)
    c.crash(0)
    c.blocked = lambda src, dst, env: src == 3  # it hears the others; its VIEW-CHANGE is lost
    c.propose(3, request("r"))
    c.tick(25)
    vcs = [
        w.envelope.signed
        for who, w in c.sent
        if who == 3
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, ViewChange)
    ]
    assert vcs and not c.replica(3).active
    c.crash(3)
    c.restart(3)
    assert not c.replica(3).active and c.replica(3).view == 1
    resent = [
        w.envelope.signed
        for who, w in c.sent[-10:]
        if who == 3 and isinstance(w.envelope, SignedEnvelope)
    ]
    assert resent and all(s.body == vcs[0].body for s in resent)


def test_corrupt_records_are_refused() -> None:
    from services.consensus.core.replica import Replica

    scheme = FastScheme(4, seed=1)
    for records in ({"view": b"\xff\xff"}, {"unknown": b""}, {"own/prepare/1/2": b"junk"}):
        with pytest.raises(CorruptState):
            Replica(
                BASE,
                signer=scheme.signer(0),
                verifier=scheme.verifier,
                records=records,
            )


def test_storage_behind_the_stable_checkpoint_is_fetched_from_peers() -> None:
    """A replica restarted with its executor behind its stable checkpoint transfers state."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    for i in range(5):
        c.propose(0, request(i))
    c.tick(5)
    node = c.nodes[2]
    assert node.replica.stable_seq == 4
    c.crash(2)
    node.app.truncate(2, node.requests)  # the executor lost its last batches
    c.restart(2)
    c.tick(20)
    assert c.digests(2) == c.digests(0)


def test_a_lone_replica_whose_storage_lost_data_halts() -> None:
    from services.consensus.core.replica import ConsensusHalted

    c = Cluster(1, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    for i in range(4):
        c.propose(0, request(i))
    c.tick(3)
    node = c.nodes[0]
    assert node.replica.stable_seq == 4
    node.app.truncate(1, node.requests)
    with pytest.raises(ConsensusHalted, match="no peer"):
        c.restart(0)


# --- rollback of storage: the signing mark kept outside it -------------------------


def _signed_by(c: Cluster, i: int) -> dict[tuple[str, int, int], object]:
    """(kind, view, seq) -> what replica ``i`` signed there, checked for conflicts."""
    seen: dict[tuple[str, int, int], object] = {}
    for who, w in c.sent:
        if who == i and isinstance(w.envelope, SignedEnvelope):
            signed = w.envelope.signed
            key = _own_key(signed.msg)
            value = getattr(signed.msg, "digest", None) or getattr(
                signed.msg, "state_digest", signed.body
            )
            assert seen.setdefault(key, value) == value, f"replica {i} signed conflicting {key}"
    return seen


def test_every_signature_raises_the_mark_before_it_is_sent() -> None:
    c = Cluster(4, batch_max_count=1)
    for i in range(5):
        c.propose(0, request(i))
        c.tick()
    mark = SigningMark()
    for rd in c.readies[1]:
        if rd.signed_mark is not None:
            mark = rd.signed_mark
        for out in rd.send:
            env = out.envelope
            if isinstance(env, SignedEnvelope) and env.signed.signer == 1:
                _, view, seq = _own_key(env.signed.msg)
                assert view <= mark.view and seq <= mark.seq
    assert c.nodes[1].mark_file == mark == SigningMark(0, 5)
    assert durable.SigningMark.decode(c.nodes[1].records[durable.SIGNED_MARK_KEY]) == mark


def test_a_replica_restored_from_an_old_backup_signs_nothing_that_could_conflict() -> None:
    """Storage restored to before seq 3..6 were voted; the mark file remembers 6."""
    c = Cluster(4, batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    for i in range(2):
        c.propose(0, request(i))
        c.tick()
    backup = c.nodes[0].snapshot()  # the primary's storage at seq 2
    for i in range(2, 6):
        c.propose(0, request(i))
        c.tick()
    assert c.nodes[0].mark_file == SigningMark(0, 6)
    c.crash(0)
    c.nodes[0].roll_back(backup)
    c.restart(0)
    replica = c.replica(0)
    assert replica.signing_floor == SigningMark(0, 6)
    assert durable.SIGNING_FLOOR_KEY in c.nodes[0].records
    # New requests to the (rolled back) primary: it may not re-propose seqs 3..6.
    for i in range(6, 12):
        c.propose(1, request(i))
        c.tick(5)
    sent_before = len(c.sent)
    c.tick(200)
    for i in range(4):
        _signed_by(c, i)  # no replica signed two conflicting messages
    # Its new PRE-PREPAREs in view 0 go on after the floor instead of reusing seqs 3..6.
    reissued = [
        w.envelope.signed.msg
        for who, w in c.sent[sent_before:]
        if who == 0
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, PrePrepare)
        and w.envelope.signed.msg.view == 0
    ]
    assert all(pp.seq > 6 for pp in reissued), reissued
    # It caught up (state transfer and the new view) and agrees with everyone.
    assert c.nodes[0].app.states == c.nodes[1].app.states
    assert c.replica(0).last_executed == c.replica(1).last_executed >= 12
    # The floor is in the records: another restart keeps it, even with the records' mark
    # now above the file's.
    c.crash(0)
    c.restart(0)
    assert c.replica(0).signing_floor == SigningMark(0, 6)


def test_intact_storage_or_no_mark_file_sets_no_floor() -> None:
    c = Cluster(4, batch_max_count=1)
    for i in range(3):
        c.propose(0, request(i))
        c.tick()
    node = c.nodes[2]
    c.crash(2)
    c.restart(2)
    assert c.replica(2).signing_floor is None
    node.mark_file = None  # e.g. the first start after an upgrade: written again at once
    c.crash(2)
    c.restart(2)
    assert c.replica(2).signing_floor is None
    assert node.mark_file == c.replica(2).signed_mark == SigningMark(0, 3)


def test_records_signed_by_another_replica_are_refused() -> None:
    """Storage audit (2026-12-04): node2's database put under node3 with its identity
    stamp removed was adopted: node3's replica resumed node2's signed records and became
    primary on them. Its own records say whose they are."""
    from services.consensus.core.replica import Replica

    c = Cluster(4, batch_max_count=1)
    for i in range(3):
        c.propose(0, request(i))
    c.tick(5)
    records = dict(c.nodes[1].records)
    assert any(key.startswith("own/") for key in records)
    with pytest.raises(CorruptState, match=r"signed by replica 1, not by this one \(2\)"):
        Replica(
            replace(BASE, replica_id=2),
            signer=c.scheme.signer(2),
            verifier=c.scheme.verifier,
            records=records,
        )
    # its own node takes them back
    Replica(
        replace(BASE, replica_id=1),
        signer=c.scheme.signer(1),
        verifier=c.scheme.verifier,
        records=records,
    )


def wipe(c: Cluster, i: int) -> None:
    """Replica ``i`` loses its whole data directory (records, executed log, signing
    mark: a disk replaced, or a second process of the node on an empty directory) and
    starts again with its key alone."""
    node = c.nodes[i]
    node.crash()
    node.records, node.app, node.mark_file = {}, Application(), None
    node.config = replace(node.config, fresh_start_asks_peers=True)
    c.restart(i)


def test_a_primary_started_with_nothing_does_not_propose_again_in_a_view_with_a_history() -> None:
    """An audit (2026-12-04): a second node1 on an empty data directory proposed seqs of
    view 0 again with other batches, and its peers banned the node for equivocation.
    Started with no records and no mark, the primary of view 0 asks its peers' STATUS
    first: they report progress, so it hands view 0 on instead of proposing, and the
    cluster goes on in view 1 with it, nobody banned."""
    c = Cluster(4)
    for i in range(2):
        c.propose(1, request(f"before-{i}"))
        c.tick(3)
    assert c.replica(1).last_executed >= 1 and c.replica(1).stable_seq == 0
    wipe(c, 0)
    since = len(c.sent)
    after = [request(f"after-{i}") for i in range(3)]
    for r in after:
        c.propose(0, r)  # given to the fresh primary itself
    c.tick(80)
    proposed = signed_by(c, 0, PrePrepare, since=since)
    assert all(pp.view > 0 for pp in proposed), proposed
    assert all(not c.replica(j).banned for j in range(4))
    assert all(not rd.evidence for j in range(4) for rd in c.readies[j])
    for j in range(4):
        assert {r.hash for r in after} <= set(c.executed_hashes(j)), j
        assert c.replica(j).view >= 1


def test_a_new_cluster_s_primary_hands_view_0_on_once_it_heard_its_peers() -> None:
    """At a cluster's first start every replica has nothing, as a wiped one: the primary
    of view 0 cannot tell, so it hands view 0 on once q-1 peers told it their view (it
    signs no VIEW-CHANGE before), and the first request executes in view 1."""
    c = Cluster(4, fresh_start_asks_peers=True)
    r = request("first")
    c.propose(0, r)
    c.tick(3)
    assert c.executed_hashes(1) == []  # no STATUS heard yet: no VIEW-CHANGE either
    c.tick(BASE.status_interval + 10)
    assert all(c.executed_hashes(j) == [r.hash] for j in range(4))
    assert all((c.replica(j).view, c.replica(j).active) == (1, True) for j in range(4))


def _evidence(c: Cluster, replicas: tuple[int, ...]) -> list[object]:
    return [e for j in replicas for rd in c.readies[j] for e in rd.evidence]


def test_a_wiped_primary_does_not_propose_again_a_batch_prepared_but_executed_nowhere() -> None:
    """Review (2026-12-04): with a history told by STATUS alone, a batch the wiped
    primary had proposed, prepared at two replicas and executed nowhere, went unseen (its
    peers reported nothing executed), and it proposed seq 1 again with another batch."""
    c = Cluster(4)
    c.crash(3)  # a batch needs node 0's COMMIT to execute
    c.blocked = lambda s, d, env: (
        s == 0 and isinstance(env, SignedEnvelope) and isinstance(env.signed.msg, Commit)
    )
    c.propose(0, request("A"))
    c.tick(3)
    assert all(c.executed_hashes(j) == [] for j in (1, 2))
    c.blocked = None
    wipe(c, 0)
    for i in range(3):
        c.propose(0, request(f"B{i}"))
    c.tick(60)
    assert not _evidence(c, (1, 2))
    assert not any(c.replica(j).banned for j in (0, 1, 2))
    assert all(request("B0").hash in c.executed_hashes(j) for j in (1, 2))


def test_one_byzantine_status_cannot_make_a_wiped_primary_propose_again() -> None:
    """Review (2026-12-04): one Byzantine STATUS ("view 0, nothing") beside one honest
    one was taken for a new cluster."""
    c = Cluster(4)
    for i in range(2):
        c.propose(1, request(f"before-{i}"))
        c.tick(3)
    assert c.replica(1).last_executed >= 1
    c.crash(2)
    wipe(c, 0)
    c.inject(3, 0, wire(StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=0)))
    for i in range(3):
        c.propose(0, request(f"B{i}"))
    c.tick(60)
    assert not _evidence(c, (1, 3))
    assert not any(c.replica(j).banned for j in (1, 3))


def _in_view_1_with_its_view_changes() -> tuple[Cluster, dict[int, SignedEnvelope]]:
    """Node 0 crashed and the others went on in view 1, led by node 1; with the
    VIEW-CHANGE for view 1 each replica sent (what a Byzantine peer can replay)."""
    c = Cluster(4)
    c.propose(1, request("x"))
    c.tick(5)
    c.crash(0)
    c.propose(1, request("y"))
    c.tick(60)
    assert all((c.replica(j).view, c.replica(j).active) == (1, True) for j in (1, 2, 3))
    vcs: dict[int, SignedEnvelope] = {}
    for env in (w.envelope for _, w in c.sent):
        if not isinstance(env, SignedEnvelope):
            continue
        if isinstance(env.signed.msg, ViewChange) and env.signed.msg.new_view == 1:
            vcs.setdefault(env.signed.signer, env)
    assert {2, 3} <= set(vcs)
    return c, vcs


def _view_change_signed_again(c: Cluster, who: int, *, up_to: int, since: int) -> list[Any]:
    """The VIEW-CHANGEs and NEW-VIEWs of views <= ``up_to`` ``who`` signed since ``since``."""
    signed = signed_by(c, who, ViewChange | NewView, since=since)
    return [m for m in signed if (m.new_view if isinstance(m, ViewChange) else m.view) <= up_to]


def test_replayed_view_changes_cannot_make_a_wiped_primary_sign_its_new_view_again() -> None:
    """Review (2026-12-04): node 1 led view 1 and was wiped; a Byzantine peer replayed the
    view's VIEW-CHANGEs to it, and it signed a VIEW-CHANGE and a NEW-VIEW for view 1
    again, which conflict with its first (evidence, a ban). It now signs none at or below
    the view f+1 of its peers are in."""
    c, vcs = _in_view_1_with_its_view_changes()
    since = len(c.sent)
    wipe(c, 1)
    c.tick(BASE.status_interval + 1)  # its peers' STATUS: they are in view 1
    for signer in (2, 3):  # node 3, Byzantine, replays what it holds
        c.inject(3, 1, wire(vcs[signer]))
    c.deliver()
    assert not _view_change_signed_again(c, 1, up_to=1, since=since)


def test_one_byzantine_status_cannot_lower_a_wiped_primarys_view_floor() -> None:
    """Review (2026-12-05): the floor was learned from the first q-1 STATUS; one Byzantine
    "view 0" beside one honest "view 1" set it to 0, and replayed VIEW-CHANGEs of view 1
    then made the wiped leader of view 1 sign them again. It now waits for every peer
    (or a grace): two honest reports of view 1 outweigh the lie."""
    c, vcs = _in_view_1_with_its_view_changes()
    c.restart(0)
    c.tick(BASE.status_interval * 6)
    assert all((c.replica(j).view, c.replica(j).active) == (1, True) for j in range(4))
    since = len(c.sent)
    wipe(c, 1)
    # node 3, Byzantine, says view 0 at once and nothing true after
    c.blocked = lambda s, d, env: s == 3 and d == 1 and isinstance(env, StatusEnvelope)
    c.inject(3, 1, wire(StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=0)))
    c.deliver()
    c.tick(BASE.status_interval * 4)  # the honest peers' STATUS come
    for signer in (2, 3):
        c.inject(3, 1, wire(vcs[signer]))
    c.deliver()
    c.tick(BASE.status_interval * 2)
    assert not _view_change_signed_again(c, 1, up_to=1, since=since)
    assert not _evidence(c, (0, 2))


def test_one_byzantine_status_cannot_raise_a_wiped_replicas_view_floor() -> None:
    """The other way: a Byzantine "view 1,000,000" would keep the wiped replica from
    every view change up to it. Beside two honest reports of view 1 the floor is 1, and
    the replica still signs the VIEW-CHANGE for view 2 when its primary goes."""
    c, _ = _in_view_1_with_its_view_changes()
    c.restart(0)
    c.tick(BASE.status_interval * 6)
    assert all((c.replica(j).view, c.replica(j).active) == (1, True) for j in range(4))
    wipe(c, 2)
    c.blocked = lambda s, d, env: s == 3 and d == 2 and isinstance(env, StatusEnvelope)
    lie = StatusEnvelope(view=1_000_000, active=True, last_executed=0, stable_seq=0)
    c.inject(3, 2, wire(lie))
    c.deliver()
    c.tick(BASE.status_interval * 4)
    assert durable.VIEW_FLOOR_PENDING_KEY not in c.nodes[2].records  # learned
    since = len(c.sent)
    c.crash(1)  # the primary of view 1
    c.propose(2, request("after"))
    c.tick(120)
    assert 2 in {m.new_view for m in signed_by(c, 2, ViewChange, since=since)}
    assert all(request("after").hash in c.executed_hashes(j) for j in (0, 2, 3))


def test_the_grace_for_the_last_peers_status_is_timed_by_real_ticks() -> None:
    """A fresh replica that heard q-1 peers waits a grace for the others, timed by ticks:
    ticks a driver applies as quiet (``quiet_ticks``, no Ready drained) must not end it,
    or what ending it writes and sends waits for the next real tick."""
    c = Cluster(4, fresh_start_asks_peers=True)
    c.crash(3)  # never answers
    r = c.replica(1)
    for _ in range(BASE.status_interval * 3):
        c.tick()
        if len(r._peer_status) >= 2:
            break
    assert len(r._peer_status) == 2 and r.active
    assert durable.VIEW_FLOOR_PENDING_KEY in c.nodes[1].records
    assert r.quiet_ticks() == 0
    c.tick(VIEW_FLOOR_GRACE_INTERVALS * BASE.status_interval + 1)
    assert durable.VIEW_FLOOR_PENDING_KEY not in c.nodes[1].records


def test_view_changes_replayed_before_a_wiped_primary_heard_its_peers_are_not_signed_again() -> (
    None
):
    """Found 2026-12-04: the same replay as above, but at once after the restart, before
    any peer's STATUS came, made the wiped replica sign view 1's VIEW-CHANGE and NEW-VIEW
    again. It now defers both until it heard q-1 peers, then signs none at or below
    their view; and the cluster still goes on."""
    c, vcs = _in_view_1_with_its_view_changes()
    since = len(c.sent)
    wipe(c, 1)
    for signer in (2, 3):  # at once: no STATUS has reached it yet
        c.inject(3, 1, wire(vcs[signer]))
    c.deliver()
    c.tick(BASE.status_interval * 3)
    assert not _view_change_signed_again(c, 1, up_to=1, since=since)
    assert not _evidence(c, (2, 3))
    assert not any(c.replica(j).banned for j in (2, 3))
    c.propose(2, request("z"))
    c.tick(60)
    assert all(request("z").hash in c.executed_hashes(j) for j in (1, 2, 3))


def test_a_view_change_deferred_while_fresh_is_signed_after_a_restart() -> None:
    """The simulator (seed 1535): a fresh replica joined a view change before it heard
    its peers (its VIEW-CHANGE deferred), crashed, and came back with records: no longer
    fresh, in a view change it had never signed for, it waited for ever, and the others
    lacked its VIEW-CHANGE for a quorum. Recovered so, it signs it now."""
    c = Cluster(4, fresh_start_asks_peers=True)
    c.crash(0)  # the primary of view 0 is gone; the others need each other for view 1
    c.blocked = lambda s, d, env: d == 3 and isinstance(env, StatusEnvelope)
    r = request("r")
    c.propose(1, r)
    c.tick(BASE.status_interval * 6)
    assert (c.replica(3).view, c.replica(3).active) == (1, False)
    assert not signed_by(c, 3, ViewChange)  # deferred: it never heard its peers
    c.crash(3)
    c.blocked = None
    c.restart(3)
    c.tick(BASE.status_interval * 6)
    signed = signed_by(c, 3, ViewChange)
    assert [m.new_view for m in signed[:1]] == [1] and all(m == signed[0] for m in signed)
    assert all(r.hash in c.executed_hashes(j) for j in (1, 2, 3))


def test_a_wiped_primary_restarted_before_it_heard_its_peers_is_still_fresh() -> None:
    """A wiped replica took replayed VIEW-CHANGEs of view 1 (it joined, deferring its
    own), wrote records, and restarted before any peer's STATUS came: with records it
    was no longer fresh, and signed view 1's VIEW-CHANGE again. It now keeps a record
    that its view floor is pending, and stays fresh across the restart."""
    c, vcs = _in_view_1_with_its_view_changes()
    since = len(c.sent)
    wipe(c, 1)
    for signer in (2, 3):
        c.inject(3, 1, wire(vcs[signer]))
    c.deliver()
    assert durable.VIEW_FLOOR_PENDING_KEY in c.nodes[1].records
    c.crash(1)
    c.restart(1)
    c.tick(BASE.status_interval * 3)
    assert not _view_change_signed_again(c, 1, up_to=1, since=since)
    assert durable.VIEW_FLOOR_PENDING_KEY not in c.nodes[1].records  # learned since
    assert not _evidence(c, (2, 3))
