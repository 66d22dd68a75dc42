"""The progress timer: a backup suspects a primary that executes nothing while requests wait.

PBFT's single timer (§4.4: started when a request is waiting, restarted whenever
one executes while others wait), beside the per-request timers (relay after
``request_timeout``, view change after another), which still catch a primary
that makes progress but leaves one request out. Timeouts here: progress 12 ticks,
request 30, so the old path alone would take 60.
"""

from __future__ import annotations

from typing import Any

from services.consensus.core.messages import (
    Envelope,
    PrePrepare,
    RequestsEnvelope,
    SignedEnvelope,
    StatusEnvelope,
    ViewChange,
)
from tests.consensus.harness import Cluster, request

PROGRESS, REQUEST = 12, 30


def cluster(**overrides: Any) -> Cluster:
    params: dict[str, Any] = {"request_timeout": REQUEST, "progress_timeout": PROGRESS}
    return Cluster(4, **{**params, **overrides})


def view_changes(c: Cluster, src: int) -> list[tuple[int, int]]:
    """(tick sent, new view) of every VIEW-CHANGE ``src`` sent, in order."""
    return [
        (c.sent_at[k], w.envelope.signed.msg.new_view)
        for k, (who, w) in enumerate(c.sent)
        if who == src
        and isinstance(w.envelope, SignedEnvelope)
        and isinstance(w.envelope.signed.msg, ViewChange)
    ]


def relays(c: Cluster, src: int) -> list[tuple[int, int | None]]:
    """(tick sent, destination) of the requests ``src`` sent (forwards and relays)."""
    return [
        (c.sent_at[k], w.to)
        for k, (who, w) in enumerate(c.sent)
        if who == src and isinstance(w.envelope, RequestsEnvelope)
    ]


def all_active_in(c: Cluster, view: int, replicas: tuple[int, ...] = (1, 2, 3)) -> bool:
    return all(c.replica(j).view == view and c.replica(j).active for j in replicas)


def test_a_crashed_primary_is_suspected_after_the_progress_timeout() -> None:
    """One request at one backup: it suspects at 12 ticks, the others (who got the
    request at 6, half the timeout) at 18; the request executes in view 1, long
    before the request timers would even relay it (30) or suspect (60)."""
    c = cluster()
    c.crash(0)
    r = request("r")
    c.propose(1, r)
    ticks = 0
    while not all(c.executed_hashes(j) == [r.hash] for j in (1, 2, 3)):
        c.tick()
        ticks += 1
        assert ticks < REQUEST, "not executed before the request timeout"
    assert view_changes(c, 1)[0] == (PROGRESS, 1)
    assert (PROGRESS // 2, None) in relays(c, 1)  # to every replica, once
    assert [t for t, _ in view_changes(c, 2)][:1] == [PROGRESS // 2 + PROGRESS]
    assert ticks == PROGRESS // 2 + PROGRESS
    assert all_active_in(c, 1)
    assert c.log(1)[0].certificate.view == 1


def test_without_the_progress_timer_the_request_timers_take_two_timeouts() -> None:
    """The same run with the timer off: relay at 30, view change at 60."""
    c = cluster(progress_timeout=None)
    c.crash(0)
    c.propose(1, request("r"))
    c.tick(2 * REQUEST - 1)
    assert view_changes(c, 1) == [] and c.executed_hashes(1) == []
    c.tick(1)
    assert view_changes(c, 1) == [(2 * REQUEST, 1)]


def test_a_primary_that_stops_answering_is_replaced_and_rejoins_after_the_heal() -> None:
    c = cluster()
    for j in (1, 2, 3):
        c.propose(j, request(f"before-{j}"))
    c.tick(2)
    assert all(len(c.executed_hashes(j)) == 3 for j in range(4))
    c.isolate(0)
    for j in (1, 2, 3):
        c.propose(j, request(f"after-{j}"))  # every backup holds one: all suspect at once
    c.tick(PROGRESS)
    assert all(view_changes(c, j) == [(c.now, 1)] for j in (1, 2, 3))
    c.tick(1)
    assert all_active_in(c, 1)
    assert all(len(c.executed_hashes(j)) == 6 for j in (1, 2, 3))
    c.heal()
    c.tick(30)
    assert (c.replica(0).view, c.replica(0).active) == (1, True)
    assert c.executed_hashes(0) == c.executed_hashes(1)


def test_a_primary_that_keeps_executing_is_not_suspected_by_the_progress_timer() -> None:
    """A request left out (its forwards never reach the primary) waits far longer than
    the progress timeout while other batches execute every tick: no view change until
    the request timers catch it (relay at 30, view change at 60): censorship."""
    r = request("left-out")

    def left_out(src: int, dst: int, env: Envelope | None) -> bool:
        return (
            dst == 0
            and isinstance(env, RequestsEnvelope)
            and any(x.hash == r.hash for x in env.requests)
        )

    c = cluster()
    c.blocked = left_out
    c.propose(1, r)
    for i in range(2 * REQUEST - 1):
        c.propose(0, request(i))
        c.tick()
        assert all(len(c.executed_hashes(j)) == i + 1 for j in range(4))
    assert all(view_changes(c, j) == [] for j in range(4))
    assert relays(c, 1) == [(0, 0), (REQUEST, None)]  # the forward, then the request timer's
    c.tick(1)
    assert view_changes(c, 1) == [(2 * REQUEST, 1)]
    c.tick(5)
    assert all_active_in(c, 1, (0, 1, 2, 3))
    assert r.hash in c.executed_hashes(2)


def test_a_primary_still_ordering_under_overload_is_not_suspected() -> None:
    """Rounds slower than the progress timeout (no COMMIT gets through, so nothing
    executes) while the primary keeps sending new PRE-PREPAREs: the backups vote for
    each, which restarts their timers; no view change before the request timers."""
    c = cluster(max_inflight=64, batch_max_count=1)
    c.blocked = lambda src, dst, env: (
        isinstance(env, SignedEnvelope) and type(env.signed.msg).__name__ == "Commit"
    )
    c.propose(1, request("waits"))
    for i in range(REQUEST - 2):
        if i % 4 == 0:
            c.propose(0, request(i))
        c.tick()
    assert all(len(c.executed_hashes(j)) == 0 for j in range(4))  # nothing executed
    assert all(view_changes(c, j) == [] for j in range(4))
    assert all(c.replica(j).view == 0 for j in range(4))


def test_a_primary_ordering_batches_that_never_commit_is_caught_by_the_request_timers() -> None:
    """The adversary's side of the rule above: a primary that keeps the backups voting
    for PRE-PREPAREs that never commit holds the progress timer off, but not the request
    timers, which change the view by 60 at the latest (here sooner: once the watermark
    window is full the primary can order nothing new and the progress timer runs)."""
    c = cluster(max_inflight=64, batch_max_count=1)
    c.blocked = lambda src, dst, env: (
        isinstance(env, SignedEnvelope) and type(env.signed.msg).__name__ == "Commit"
    )
    c.propose(1, request("waits"))
    for i in range(2 * REQUEST + 1):
        if i % 4 == 0:
            c.propose(0, request(i))
        c.tick()
    first = view_changes(c, 1)[:1]
    assert first and first[0][1] == 1 and first[0][0] <= 2 * REQUEST


def test_a_primary_that_orders_nothing_new_is_suspected_even_when_it_once_did() -> None:
    """The same with the primary's PRE-PREPAREs stopping: suspected a timeout later."""
    c = cluster(max_inflight=64, batch_max_count=1)
    c.blocked = lambda src, dst, env: (
        isinstance(env, SignedEnvelope) and type(env.signed.msg).__name__ == "Commit"
    )
    c.propose(1, request("waits"))
    c.propose(0, request("last"))
    c.tick(PROGRESS + 1)
    assert view_changes(c, 1) != []


def test_a_lost_forward_is_repaired_at_half_the_timeout_without_a_view_change() -> None:
    lost: list[int] = []

    def first_forward_lost(src: int, dst: int, env: Envelope | None) -> bool:
        if (src, dst) == (1, 0) and isinstance(env, RequestsEnvelope) and not lost:
            lost.append(1)
            return True
        return False

    c = cluster()
    c.blocked = first_forward_lost
    r = request("r")
    c.propose(1, r)
    c.tick(PROGRESS // 2 - 1)
    assert c.executed_hashes(1) == []
    c.tick(1)
    assert all(c.executed_hashes(j) == [r.hash] for j in range(4))
    c.tick(3 * REQUEST)
    assert all(view_changes(c, j) == [] for j in range(4))
    assert relays(c, 1) == [(0, 0), (PROGRESS // 2, None)]


def test_the_timer_starts_again_in_a_new_view() -> None:
    """The request waited through view 0; in view 1 its primary (replica 1) gets no
    PRE-PREPARE through. Replica 2 suspects it a full timeout after view 1 began,
    not at once; view 2 executes the request."""

    def view_1_pre_prepares(src: int, dst: int, env: Envelope | None) -> bool:
        return (
            isinstance(env, SignedEnvelope)
            and isinstance(env.signed.msg, PrePrepare)
            and env.signed.msg.view == 1
        )

    c = cluster()
    c.crash(0)
    c.blocked = view_1_pre_prepares
    r = request("r")
    c.propose(2, r)
    began = None
    while began is None:
        c.tick()
        if c.replica(2).view == 1 and c.replica(2).active:
            began = c.now
    assert c.now - PROGRESS > 0  # the request has waited longer than a timeout already
    c.tick(PROGRESS - 1)
    assert [v for _, v in view_changes(c, 2)] == [1]
    c.tick(1)
    assert view_changes(c, 2)[-1] == (began + PROGRESS, 2)
    c.tick(PROGRESS)
    assert all_active_in(c, 2)
    assert all(c.executed_hashes(j) == [r.hash] for j in (1, 2, 3))
    assert c.log(1)[0].certificate.view == 2


def test_a_restarted_backup_does_not_suspect_an_honest_primary() -> None:
    """A backup back from a crash, far behind (state transfer), with a request of its
    own waiting: it catches up, the primary orders the request, nobody suspects."""
    c = cluster(batch_max_count=1, checkpoint_interval=4, watermark_window=8)
    c.crash(3)
    for i in range(14):
        c.propose(1, request(i))
        c.tick()
    c.restart(3)
    c.propose(3, request("mine"))
    c.tick(3 * REQUEST)
    assert all(view_changes(c, j) == [] for j in range(4))
    assert c.digests(3) == c.digests(0) and len(c.log(3)) == 15


def test_a_lagging_backup_waits_for_its_peers_instead_of_suspecting() -> None:
    """Replica 3 gets nothing but STATUS and requests (it cannot catch up) while the
    others execute; f+1 peers report having executed more in its view: it is behind,
    the primary is not stuck. Its progress timer expires and restarts, again and again,
    without a suspicion. (Request timers long enough not to interfere.)"""

    def only_status_and_requests_to_3(src: int, dst: int, env: Envelope | None) -> bool:
        return dst == 3 and not isinstance(env, StatusEnvelope | RequestsEnvelope)

    c = cluster(status_interval=5, request_timeout=200)
    c.blocked = only_status_and_requests_to_3
    c.propose(3, request("mine"))
    for i in range(5 * PROGRESS):
        c.propose(0, request(i))
        c.tick()
    lagging = c.replica(3)
    assert lagging.last_executed == 0 and c.replica(0).last_executed > 0
    assert view_changes(c, 3) == []
    assert lagging._lagging() and lagging._progress_restarted > 4 * PROGRESS


def test_the_timeout_doubles_with_each_view_that_executed_nothing() -> None:
    """Views 1 and 2 get no PRE-PREPARE through. Replica 3 suspects view 1's primary 12
    ticks into it (the last progress was in view 0), view 2's after 24: a round slower
    than the timeout ends the view changes once the timeout outgrows it. View 3 (replica
    3 leads) executes the request."""

    def views_1_and_2(src: int, dst: int, env: Envelope | None) -> bool:
        return (
            isinstance(env, SignedEnvelope)
            and isinstance(env.signed.msg, PrePrepare)
            and env.signed.msg.view in (1, 2)
        )

    c = cluster()
    c.propose(1, request("first"))
    c.tick(1)
    assert all(len(c.executed_hashes(j)) == 1 for j in range(4))  # progress in view 0
    c.crash(0)
    c.blocked = views_1_and_2
    r = request("r")
    c.propose(3, r)
    began: dict[int, int] = {}
    while 3 not in began:
        c.tick()
        if c.replica(3).active:
            began.setdefault(c.replica(3).view, c.now)
        assert c.now < 200
    sent = dict((v, t) for t, v in reversed(view_changes(c, 3)))
    assert sent[2] - began[1] == PROGRESS
    assert sent[3] - began[2] == 2 * PROGRESS
    c.tick(5)
    assert all(r.hash in c.executed_hashes(j) for j in (1, 2, 3))


def test_a_cut_off_backup_does_not_leave_the_view_alone() -> None:
    """Replica 3, isolated with a request of its own, hears no other backup: its
    VIEW-CHANGE could not spread (f+1 needed) and it could never come back to view 0.
    Its timer restarts instead (relaying again at half of it, into the void); once
    healed, the next relay gets the request executed in view 0, nobody changed views.
    (Request timers long enough not to interfere.)"""
    c = cluster(request_timeout=200)
    c.isolate(3)
    r = request("r")
    c.propose(3, r)
    c.tick(5 * PROGRESS)
    assert view_changes(c, 3) == []
    # the forward, then half a timeout into each period: 6, 18, 30, 42, 54
    assert relays(c, 3) == [(0, 0), *((PROGRESS // 2 + k * PROGRESS, None) for k in range(5))]
    c.heal()
    c.tick(PROGRESS)
    assert all(c.executed_hashes(j) == [r.hash] for j in range(4))
    assert all(view_changes(c, j) == [] for j in range(4))
    assert all((c.replica(j).view, c.replica(j).active) == (0, True) for j in range(4))
