"""A Byzantine peer's cheap messages cannot draw expensive answers or grow state: a STATUS
(a few unsigned bytes) draws our NEW-VIEW at most once a status interval, and VIEW-CHANGEs
for ever higher views keep a bounded number of entries."""

from __future__ import annotations

from services.consensus.core.messages import NewView, SignedEnvelope, StatusEnvelope, ViewChange
from tests.consensus.harness import Cluster, request, sign, wire

BYZANTINE = 0


def test_a_flood_of_status_draws_one_new_view_per_interval() -> None:
    c = Cluster(4, request_timeout=10)
    c.crash(BYZANTINE)  # the primary of view 0: the others move to view 1
    c.propose(1, request("r"))
    c.tick(40)
    assert all((c.replica(j).view, c.replica(j).active) == (1, True) for j in (1, 2, 3))

    def new_views_sent(since: int) -> int:
        return sum(
            1
            for who, w in c.sent[since:]
            if who == 2
            and w.to == BYZANTINE
            and isinstance(w.envelope, SignedEnvelope)
            and isinstance(w.envelope.signed.msg, NewView)
        )

    before = len(c.sent)
    behind = wire(StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=0))
    for _ in range(100):  # within one tick: well inside one status interval
        c.inject(BYZANTINE, 2, behind)
    assert new_views_sent(before) == 1
    c.tick(c.replica(2).config.status_interval)  # an honest peer still behind gets it again
    before = len(c.sent)
    c.inject(BYZANTINE, 2, behind)
    assert new_views_sent(before) == 1


def test_view_changes_for_ever_higher_views_hold_bounded_state() -> None:
    c = Cluster(4)
    target = c.nodes[2]
    for view in range(10, 2010):
        if view % 4 == BYZANTINE:
            continue  # views it would lead: not what this test is about
        vc = ViewChange(new_view=view, stable_seq=0, checkpoint_proof=(), prepared=())
        target.receive(BYZANTINE, wire(SignedEnvelope(sign(c, BYZANTINE, vc))))
        target.replica.ready()
    held = target.replica._vcs
    assert len(held) <= 4  # the 4 highest views it asked for; no empty entry per view
    assert sum(len(by) for by in held.values()) <= 4
