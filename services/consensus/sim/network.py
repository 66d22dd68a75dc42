"""A simulated network: per-message delay (hence reorder), drop, duplication, partitions."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass


@dataclass(slots=True)
class LinkModel:
    """How the network treats each message while no partition separates its ends."""

    drop: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 1
    max_delay: int = 3


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    cut: int = 0


#: A message in flight: (due tick, send order, src, dst, bytes); unique send order
#: means tuples never compare beyond it.
_InFlight = tuple[int, int, int, int, bytes]


class Network:
    """Messages between replica indices; delivery order follows (due tick, send order)."""

    def __init__(self, rng: random.Random, n: int) -> None:
        self._rng = rng
        self._n = n
        self.model = LinkModel()
        self.groups: list[frozenset[int]] | None = None
        self.stats = NetworkStats()
        self._heap: list[_InFlight] = []
        self._order = 0

    def separated(self, a: int, b: int) -> bool:
        if self.groups is None:
            return False
        return not any(a in g and b in g for g in self.groups)

    def send(self, now: int, src: int, to: int | None, data: bytes) -> None:
        targets = range(self._n) if to is None else (to,)
        model = self.model
        rng = self._rng
        for dst in targets:
            if dst == src:
                continue
            self.stats.sent += 1
            if self.separated(src, dst):
                self.stats.cut += 1
                continue
            if model.drop and rng.random() < model.drop:
                self.stats.dropped += 1
                continue
            copies = 1
            if model.duplicate and rng.random() < model.duplicate:
                copies = 2
                self.stats.duplicated += 1
            for _ in range(copies):
                delay = rng.randint(model.min_delay, model.max_delay)
                self._order += 1
                heapq.heappush(self._heap, (now + delay, self._order, src, dst, data))

    def due(self, now: int) -> list[tuple[int, int, bytes]]:
        """Messages to deliver at tick ``now`` (a partition also cuts those in flight)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, src, dst, data = heapq.heappop(heap)
            if self.groups is not None and self.separated(src, dst):
                self.stats.cut += 1
                continue
            self.stats.delivered += 1
            out.append((src, dst, data))
        return out
