"""Quorum arithmetic for n replicas, any n >= 1.

f = floor((n - 1) / 3) replicas may be Byzantine. A quorum is
q = ceil((n + f + 1) / 2) replicas: 2f + 1 when n = 3f + 1, and in general
the smallest size such that any two quorums share at least f + 1 replicas
(2q - n >= f + 1), hence at least one honest replica.
"""

from __future__ import annotations


def max_faulty(n: int) -> int:
    """f: how many Byzantine replicas a cluster of ``n`` tolerates."""
    if n < 1:
        raise ValueError(f"a cluster needs at least one replica, got n={n}")
    return (n - 1) // 3


def quorum_size(n: int) -> int:
    """q = ceil((n + f + 1) / 2)."""
    return (n + max_faulty(n) + 2) // 2


def weak_quorum_size(n: int) -> int:
    """f + 1: enough replicas that at least one of them is honest."""
    return max_faulty(n) + 1
