"""RecentFinalized: what admission may decide without storage (services/consensus/recent.py)."""

from __future__ import annotations

import random

import pytest

from services.consensus.recent import RecentFinalized


def h(i: int) -> bytes:
    return i.to_bytes(32, "big")


def test_a_vertex_is_decided_only_with_every_parent_finalized_here() -> None:
    recent = RecentFinalized(watermark=4)
    recent.add(5, [h(1), h(2)])
    assert recent.decides(h(10), [h(1), h(2)])
    assert recent.finalized(h(1)) and not recent.finalized(h(10))
    assert not recent.decides(h(10), [h(1), h(3)])  # a parent not here
    assert not recent.decides(h(10), [])  # no parents: nothing bounds its seq
    assert not recent.decides(h(2), [h(1)])  # here itself: a duplicate, storage compares


def test_eviction_raises_the_watermark_past_what_it_dropped() -> None:
    recent = RecentFinalized(watermark=0, capacity=3)
    recent.add(1, [h(1), h(2)])
    recent.add(2, [h(3), h(4)])
    assert len(recent) == 3 and recent.watermark == 1
    # h(2) is still here, but at seq 1, where h(1) was dropped: a child of h(2) could
    # have been finalized at seq 1 and dropped too
    assert recent.finalized(h(2))
    assert not recent.decides(h(10), [h(2)])
    assert recent.decides(h(10), [h(3), h(4)])
    with pytest.raises(ValueError):
        RecentFinalized(watermark=0, capacity=0)


@pytest.mark.parametrize("seed", range(20))
def test_a_decided_vertex_is_never_one_that_was_finalized(seed: int) -> None:
    """A random DAG finalized batch by batch (each vertex after its parents, as storage
    enforces), a small capacity: whatever ``decides`` answers for, finalized vertices and
    vertices never finalized alike, is a vertex that was not finalized."""
    rng = random.Random(seed)
    recent = RecentFinalized(watermark=0, capacity=rng.randint(1, 40))
    finalized: list[bytes] = []
    parents_of: dict[bytes, list[bytes]] = {}
    decided = 0
    for seq in range(1, 120):
        batch = []
        for _ in range(rng.randint(1, 6)):
            content = h(len(parents_of) + 1)
            pool = finalized[-30:] + batch
            parents_of[content] = rng.sample(pool, min(len(pool), rng.randint(0, 3)))
            batch.append(content)
        finalized.extend(batch)
        recent.add(seq, batch)
        done = set(finalized)
        for _ in range(20):  # a finalized vertex, or a new one, with its parents
            if rng.random() < 0.5:
                content = rng.choice(finalized)
                parents = parents_of[content]
            else:
                content = h(10**6 + rng.randint(0, 10**6))
                parents = rng.sample(finalized[-50:], min(len(finalized), rng.randint(1, 3)))
            if recent.decides(content, parents):
                decided += 1
                assert content not in done
                assert all(p in done for p in parents)
    assert decided > 0
