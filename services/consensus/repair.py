"""How many bytes of repair each peer may draw: state-transfer answers and resent batches.

A peer draws repair with a few bytes of its own (a STATE-REQUEST, a STATUS that shows it
behind), and each answer can be megabytes. The replica bounds what one request or one
STATUS draws, but not how often a peer asks: a Byzantine member sending thousands of
them drew an answer each, 232 MB in 20 s, and grew every honest consensus process to
about 2 GB while finalization slowed 3-10 times (audit, 2026-12-04). Each peer now has
a token bucket of bytes: it refills at ``transfer_max_bytes`` per status interval (what
one honest peer, asking each serving replica in turn, can use) up to twice that, and a
repair goes while the bucket is above zero (so one whole answer always can), then takes
its size from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RepairBudget:
    def __init__(
        self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``rate``: bytes a second each peer regains, up to ``burst`` bytes."""
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens: dict[int, tuple[float, float]] = {}  # peer -> (tokens, as of)

    def _now_tokens(self, peer: int) -> float:
        now = self._clock()
        tokens, at = self._tokens.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        self._tokens[peer] = (tokens, now)
        return tokens

    def allows(self, peer: int) -> bool:
        """Whether a repair may go to ``peer`` now."""
        return self._now_tokens(peer) > 0

    def charge(self, peer: int, size: int) -> None:
        """``size`` bytes of repair went to ``peer``."""
        tokens = self._now_tokens(peer)
        self._tokens[peer] = (tokens - size, self._clock())
