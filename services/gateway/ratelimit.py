"""Per-client rate limit on submitted vertices: a token bucket per client address.

The node-wide bounds (submission slots, admission, the request pool) keep the node
up under any load, but they are shared: one client sending as fast as the node
refuses could take nearly all of what the node finalizes, and every other client's
submissions got 429 ``overloaded`` as often as its own. Each client address (an IPv6
one by its /64, as every per-client bound of the gateway) now has a bucket of
``burst`` vertices refilled at ``rate`` a second; a submission takes one token per
vertex before any work is done for it (no signing, no call to consensus), and one
that finds too few gets 429 ``rate_limited`` with the seconds after which it would
pass (``Retry-After``). A batch is taken or refused whole.

The buckets are bounded in number: a client's bucket refilled to ``burst`` is the
same as none, and beyond ``max_clients`` the least recently used one is dropped
(that client then starts again with a full bucket: a bounded leniency towards
someone with that many addresses, who could have used them anyway).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

#: Buckets kept at most (about 150 bytes each).
MAX_CLIENTS = 65_536


class RateLimited(Exception):
    """Too few tokens: ``retry_after_s`` is when the same request would pass."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class ClientRateLimit:
    """Token buckets by client address (see the module's docstring)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst <= 0 or max_clients <= 0:
            raise ValueError("rate, burst and max_clients must be positive")
        self.rate = rate
        self.burst = burst
        self._max_clients = max_clients
        self._clock = clock
        #: client -> (tokens, when counted); least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, count: int) -> None:
        """Take ``count`` tokens from ``client``'s bucket, or raise RateLimited (taking
        none). A count above the burst can never pass: the caller bounds batches below
        it (config validation)."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < count:
            self._keep(client, tokens, now)
            raise RateLimited((count - tokens) / self.rate)
        self._keep(client, tokens - count, now)

    def _keep(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        # Drop buckets that have refilled (the oldest first): they are the same as none.
        while self._buckets:
            oldest, (left, at) = next(iter(self._buckets.items()))
            if oldest == client or left + (now - at) * self.rate < self.burst:
                break
            del self._buckets[oldest]


def retry_after_header(seconds: float) -> str:
    """An HTTP ``Retry-After`` value (whole seconds, at least 1) for ``seconds``."""
    return str(max(1, math.ceil(seconds)))
