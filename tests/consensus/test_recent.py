"""RecentFinalized: what admission may decide without storage (services/consensus/recent.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from services.consensus.recent import RecentFinalized


def h(i: int) -> bytes:
    return i.to_bytes(32, "big")


class FinalizedDag:
    """A random DAG finalized batch by batch into ``recent`` (a small capacity), each
    vertex after its parents, as storage enforces."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.recent = RecentFinalized(watermark=0, capacity=rng.randint(1, 40))
        self.finalized: list[bytes] = []
        self.parents_of: dict[bytes, list[bytes]] = {}

    def batches(self, count: int = 119) -> Iterator[set[bytes]]:
        """Finalize ``count`` batches of 1-6 vertices; after each, what is finalized."""
        rng, finalized, parents_of = self.rng, self.finalized, self.parents_of
        for seq in range(1, count + 1):
            batch: list[bytes] = []
            for _ in range(rng.randint(1, 6)):
                content = h(len(parents_of) + 1)
                pool = finalized[-30:] + batch
                parents_of[content] = rng.sample(pool, min(len(pool), rng.randint(0, 3)))
                batch.append(content)
            finalized.extend(batch)
            self.recent.add(seq, batch)
            yield set(finalized)


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
    dag = FinalizedDag(rng)
    recent, finalized, parents_of = dag.recent, dag.finalized, dag.parents_of
    decided = 0
    for done in dag.batches():
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


def test_execution_statuses_are_decided_only_when_every_one_is_known() -> None:
    recent = RecentFinalized(watermark=4)
    recent.add(5, [h(1), h(2)])
    # a new vertex on h(1), a child of it in the same batch, and a replay of h(2)
    batch = [(h(10), [h(1)]), (h(11), [h(10), h(2)]), (h(2), [h(1)])]
    assert recent.statuses(batch) == {h(1), h(2)}
    assert recent.statuses([]) == set()
    assert recent.statuses([(h(10), [])]) is None  # a root: nothing bounds its seq
    assert recent.statuses([(h(10), [h(1), h(3)])]) is None  # a parent not known here
    # a parent later in the batch is not decided yet when its child is
    assert recent.statuses([(h(11), [h(10)]), (h(10), [h(1)])]) is None
    old = RecentFinalized(watermark=5)
    old.add(5, [h(1)])  # at the watermark: a child may have been finalized and dropped
    assert old.statuses([(h(10), [h(1)])]) is None


@pytest.mark.parametrize("seed", range(20))
def test_execution_statuses_are_the_finalized_ones_exactly(seed: int) -> None:
    """A random DAG finalized batch by batch, a small capacity; random batches to execute
    (replays, new vertices on recent or old parents, chains inside the batch, unknown
    parents, roots): whenever ``statuses`` answers, it names exactly the finalized ones
    among the contents and parents, which is what storage would answer."""
    rng = random.Random(seed)
    dag = FinalizedDag(rng)
    recent, finalized, parents_of = dag.recent, dag.finalized, dag.parents_of
    answered = unanswered = 0
    fresh = 10**6
    for done in dag.batches():
        for _ in range(10):
            candidates: list[tuple[bytes, list[bytes]]] = []
            for _ in range(rng.randint(1, 5)):
                kind = rng.random()
                if kind < 0.3:  # a replay of a finalized vertex
                    content = rng.choice(finalized)
                    candidates.append((content, parents_of[content]))
                    continue
                fresh += 1
                pool = finalized[-(rng.choice((5, 60))) :] + [c for c, _ in candidates]
                parents = rng.sample(pool, min(len(pool), rng.randint(0, 3)))
                if kind > 0.9:
                    parents.append(h(10**9 + fresh))  # never finalized anywhere
                candidates.append((h(fresh), parents))
            known = recent.statuses(candidates)
            if known is None:
                unanswered += 1
                continue
            answered += 1
            asked = {x for content, parents in candidates for x in (content, *parents)}
            assert known == asked & done
    assert answered > 0 and unanswered > 0
