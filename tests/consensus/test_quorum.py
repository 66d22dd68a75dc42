"""Quorum arithmetic against a naive, brute-force check (n = 1..16)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.consensus.core.config import Config
from services.consensus.core.quorum import max_faulty, quorum_size, weak_quorum_size


def naive_f(n: int) -> int:
    """The largest f with n >= 3f + 1."""
    return max(f for f in range(n) if n >= 3 * f + 1)


def min_intersection(n: int, size: int) -> int:
    """The smallest overlap of two ``size``-subsets of n replicas, by enumeration.

    By symmetry one quorum can be fixed; the other ranges over every subset.
    """
    first = set(range(size))
    return min(len(first & set(other)) for other in itertools.combinations(range(n), size))


@pytest.mark.parametrize("n", range(1, 17))
def test_quorums_intersect_in_an_honest_replica(n: int) -> None:
    f, q = max_faulty(n), quorum_size(n)
    assert f == naive_f(n)
    assert min_intersection(n, q) >= f + 1, "two quorums must share an honest replica"
    # Live: the honest replicas alone form a quorum.
    assert q <= n - f
    # Minimal: one fewer would let two quorums share only faulty replicas.
    if q > 1:
        assert min_intersection(n, q - 1) < f + 1


@pytest.mark.parametrize(
    ("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5), (10, 7), (13, 9)]
)
def test_known_sizes(n: int, q: int) -> None:
    """2f + 1 when n = 3f + 1; 2 of 3 and 4 of 5 in between."""
    assert quorum_size(n) == q


def test_weak_quorum_holds_an_honest_replica() -> None:
    for n in range(1, 17):
        assert weak_quorum_size(n) == max_faulty(n) + 1


def test_no_cluster_without_replicas() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        max_faulty(0)


@given(st.integers(min_value=1, max_value=200), st.randoms(use_true_random=False))
def test_random_quorums_overlap_beyond_f(n: int, rnd) -> None:
    q = quorum_size(n)
    a = set(rnd.sample(range(n), q))
    b = set(rnd.sample(range(n), q))
    assert len(a & b) >= max_faulty(n) + 1


def test_config_exposes_the_arithmetic() -> None:
    cfg = Config(n=7, replica_id=3, checkpoint_interval=4, watermark_window=8)
    assert (cfg.f, cfg.q, cfg.primary(9)) == (2, 5, 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"n": 0, "replica_id": 0},
        {"n": 4, "replica_id": 4},
        {"n": 4, "replica_id": 0, "checkpoint_interval": 8, "watermark_window": 4},
        {"n": 4, "replica_id": 0, "batch_max_count": 0},
        {"n": 4, "replica_id": 0, "reputation_threshold": 5},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Config(**bad)
