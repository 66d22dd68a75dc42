"""An idle cluster is quiet: STATUS heartbeats instead of a STATUS every interval, and
ticks that only count time (``Replica.quiet_ticks``) — while every repair that STATUS
drives still happens promptly."""

from __future__ import annotations

import random
from dataclasses import replace

from services.consensus.core.messages import RequestsEnvelope, StatusEnvelope
from tests.consensus.harness import BASE, Cluster, request, wire

INTERVAL = BASE.status_interval
HEARTBEAT = INTERVAL * BASE.status_quiet_intervals


def statuses(c: Cluster, src: int, since: int = 0) -> list[StatusEnvelope]:
    """The STATUS envelopes ``src`` sent at or after tick ``since``."""
    return [
        w.envelope
        for (who, w), at in zip(c.sent, c.sent_at, strict=True)
        if who == src and at >= since and isinstance(w.envelope, StatusEnvelope)
    ]


def test_the_default_heartbeat_is_five_intervals() -> None:
    assert BASE.status_quiet_intervals == 5


def test_an_idle_cluster_sends_heartbeats_only() -> None:
    c = Cluster(4)
    c.tick(100)  # everyone heard from everyone: quiet
    c.tick(1000)
    for i in range(4):
        sent = len(statuses(c, i, since=101))
        assert sent == 1000 // HEARTBEAT, (i, sent)
    loud = Cluster(4, status_quiet_intervals=1)
    loud.tick(1100)
    assert len(statuses(loud, 0, since=101)) == 1000 // INTERVAL


def test_an_idle_replica_has_quiet_ticks_until_its_heartbeat() -> None:
    c = Cluster(4)
    c.tick(2 * HEARTBEAT + 2 * INTERVAL)  # two intervals past a heartbeat
    r = c.replica(1)
    quiet = r.quiet_ticks()
    assert quiet > INTERVAL  # beyond the next status interval: no STATUS is due there
    c.tick(quiet)
    assert r.quiet_ticks() == 0  # the next tick sends the heartbeat
    before = len(statuses(c, 1))
    c.tick(1)
    assert len(statuses(c, 1)) == before + 1


def test_pending_work_makes_every_tick_count() -> None:
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    c.isolate(0)
    c.propose(1, request(0))  # forwarded to a primary that does not get it
    assert c.replica(1).quiet_ticks() == 0
    start = c.now
    c.tick(3 * INTERVAL)
    # Waiting for its request, the backup reports every interval again.
    assert len(statuses(c, 1, since=start + 1)) == 3


def test_a_changed_status_goes_at_the_next_interval_then_quiet_again() -> None:
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    start = c.now
    c.propose(0, request(0))
    c.tick(1)
    assert all(len(c.log(i)) == 1 for i in range(4))
    c.tick(INTERVAL)
    for i in range(4):
        sent = statuses(c, i, since=start + 1)
        assert [s.last_executed for s in sent] == [1], (i, sent)
    c.tick(3 * HEARTBEAT)
    for i in range(4):
        assert len(statuses(c, i, since=start + 1)) <= 1 + 3, i


def test_a_primary_with_a_batch_in_flight_repairs_quiet_backups_promptly() -> None:
    """Backups quiet for long miss the primary's batch: the primary's repeated STATUS
    makes them answer, and the batch is resent at once, wherever their heartbeats are
    (the backoff of resends did not grow on the heartbeats, which asked for nothing)."""
    for offset in range(0, HEARTBEAT, INTERVAL // 2):
        c = Cluster(4)
        c.tick(10 * HEARTBEAT + offset)
        c.isolate(0)
        c.propose(0, request(0))
        c.tick(3)
        assert all(not c.log(i) for i in range(1, 4))
        c.heal()
        c.tick(2 * INTERVAL + 2)
        assert all(len(c.log(i)) == 1 for i in range(4)), offset


def test_a_replica_that_missed_a_batch_is_repaired_within_a_few_intervals() -> None:
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    c.blocked = lambda src, dst, env: dst == 3  # replica 3 loses everything sent to it
    c.propose(0, request(0))
    c.tick(1)
    c.blocked = None
    assert [len(c.log(i)) for i in range(4)] == [1, 1, 1, 0]
    c.tick(3 * INTERVAL)
    assert len(c.log(3)) == 1


def test_a_restarted_replica_is_caught_up_within_a_few_intervals() -> None:
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    c.crash(3)
    for i in range(6):
        c.propose(0, request(i))
        c.tick(1)
    c.tick(4 * HEARTBEAT)  # long enough for the others to leave it out as silent
    assert len(c.executed_hashes(0)) == 6
    c.restart(3)
    c.tick(3 * INTERVAL)
    assert c.executed_hashes(3) == c.executed_hashes(0)


def test_after_a_partition_heals_while_idle_the_cut_off_replica_catches_up() -> None:
    """Both sides quiet (each left the other out as silent): the first heartbeat after
    the heal starts the repair, so it is bounded by a heartbeat, not an interval."""
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    c.isolate(3)
    for i in range(3):
        c.propose(0, request(i))
        c.tick(1)
    c.tick(4 * HEARTBEAT)
    c.heal()
    c.tick(HEARTBEAT + 3 * INTERVAL)
    assert c.executed_hashes(3) == c.executed_hashes(0)


def test_a_silent_peer_does_not_keep_the_others_loud() -> None:
    """A replica that is down does not hold the others at a STATUS every interval once
    they executed past it; when it is back, they report every interval again."""
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    c.crash(3)
    c.propose(0, request(0))
    c.tick(4 * HEARTBEAT)
    start = c.now
    c.tick(4 * HEARTBEAT)
    assert len(statuses(c, 0, since=start + 1)) == 4
    c.restart(3)
    c.tick(3 * INTERVAL)
    assert len(c.log(3)) == 1


def test_a_censoring_primary_is_replaced_as_fast_in_a_quiet_cluster() -> None:
    """The progress timer's "cut off" guard counts peers heard from lately (STATUS): in
    a quiet cluster the half-timeout relay of the waiting request makes the other
    backups loud again in time, so the view change comes as fast as with a STATUS
    every interval, wherever the heartbeats are."""

    def time_to_execute(quiet_intervals: int, offset: int) -> int:
        c = Cluster(4, status_quiet_intervals=quiet_intervals)
        c.tick(10 * HEARTBEAT + offset)
        c.blocked = lambda src, dst, env: dst == 0 and isinstance(env, RequestsEnvelope)
        c.propose(1, request(0))
        start = c.now
        while not all(c.log(i) for i in range(1, 4)):
            assert c.now - start < 20 * INTERVAL
            c.tick(1)
        assert all(c.replica(i).view == 1 for i in range(4))
        return c.now - start

    for offset in range(0, HEARTBEAT, INTERVAL // 2):
        assert time_to_execute(5, offset) == time_to_execute(1, offset), offset


def test_quiet_ticks_only_count_time() -> None:
    """Under random load, loss and partitions: a tick that ``quiet_ticks`` promised
    quiet changes nothing but the clock (the driver applies those without a Ready)."""
    rng = random.Random(7)
    c = Cluster(4)
    quiet_seen = 0
    for step in range(3000):
        if rng.random() < 0.01:
            c.propose(rng.randrange(4), request(f"r{step}"))
        if rng.random() < 0.003:
            c.isolate(rng.randrange(4))
        if rng.random() < 0.01:
            c.heal()
        c.blocked = (lambda s, d, e: rng.random() < 0.05) if rng.random() < 0.2 else None
        c.now += 1
        for i, node in enumerate(c.nodes):
            r = node.replica
            if r.quiet_ticks():
                quiet_seen += 1
                before = (r.view, r.active, r.last_executed, r.stable_seq, len(r._pool))
                r.tick()
                rd = r.ready()
                assert not (rd.send or rd.persist or rd.execute or rd.serve), (step, i, rd)
                assert rd.signed_mark is None
                after = (r.view, r.active, r.last_executed, r.stable_seq, len(r._pool))
                assert before == after
            else:
                r.tick()
                c.drain(i)
        c.deliver()
    c.heal()
    c.blocked = None
    c.tick(10 * HEARTBEAT)
    assert quiet_seen > 1000
    logs = [c.digests(i) for i in range(4)]
    assert all(log == logs[0] for log in logs)


def test_status_quiet_intervals_must_be_positive() -> None:
    import pytest

    with pytest.raises(ValueError, match="status_quiet_intervals"):
        replace(BASE, status_quiet_intervals=0)


def test_a_byzantine_peer_lying_in_its_status_cannot_quiet_or_flood_the_others() -> None:
    """Replica 2 claims, every tick, to have executed far ahead. The others stay loud (a
    STATUS every interval, never more: lies do not multiply their traffic), and a lagging
    honest replica is still repaired: a lie can keep them from being quiet, never make
    them quiet when one of them needs repair."""
    c = Cluster(4)
    c.tick(2 * HEARTBEAT)
    lie = wire(StatusEnvelope(view=0, active=True, last_executed=10_000, stable_seq=0))
    c.blocked = lambda src, dst, env: dst == 3  # replica 3 misses the batch
    c.propose(0, request(0))
    c.tick(1)
    c.blocked = None
    start = c.now
    for _ in range(3 * INTERVAL):
        for dst in (0, 1, 3):
            c.inject(2, dst, lie)
        c.tick(1)
    assert len(c.log(3)) == 1
    for honest in (0, 1, 3):
        assert 1 <= len(statuses(c, honest, since=start + 1)) <= 3
