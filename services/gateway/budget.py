"""Byte budgets: what requests in progress may make the gateway hold, counted before the
work that allocates it, so that many requests cannot add up to unbounded memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import Gauge

from services.gateway.errors import ApiError

#: The share of a budget one client address may hold (what it holds first always fits).
PER_CLIENT_SHARE = 4


class Reservation:
    """Bytes held against a :class:`ByteBudget` until its ``hold`` block ends."""

    def __init__(self, budget: ByteBudget, size: int, client: str | None = None) -> None:
        self._budget = budget
        self.size = size
        self.client = client

    def resize(self, size: int) -> None:
        """Hold ``size`` bytes in all, once they are known: fewer than reserved gives the
        rest back; more (the estimate was short) raises the budget's 429 when the others
        leave no room for them."""
        if size > self.size:
            budget = self._budget
            budget.take(
                size - self.size,
                alone=budget.held == self.size,
                client=self.client,
                first=budget.held_by(self.client) == self.size,
            )
        else:
            self._budget.release(self.size - size, client=self.client)
        self.size = size


class ByteBudget:
    """At most ``limit`` bytes held at once, and a ``1/PER_CLIENT_SHARE`` of it by one
    client address; one holder alone (or a client's first holding) always fits.

    The per-client share was added after an audit (2026-12-04): 16 uploads that declared
    4 MiB each and sent nothing (renewed before the body timeout) held the whole request
    budget, and every other client's submissions got 429 for as long as they went on;
    a few clients that never read their pages did the same to the answer budget.

    ``setting`` names the configuration field in the 429's message; ``gauge`` (optional)
    shows the bytes held.
    """

    def __init__(self, limit: int, *, setting: str, what: str, gauge: Gauge | None = None):
        self.limit = limit
        self.per_client = max(1, limit // PER_CLIENT_SHARE)
        self.held = 0
        self._by_client: dict[str, int] = {}
        self._setting = setting
        self._what = what
        self._gauge = gauge

    def held_by(self, client: str | None) -> int:
        return 0 if client is None else self._by_client.get(client, 0)

    def take(
        self, size: int, *, alone: bool, client: str | None = None, first: bool | None = None
    ) -> None:
        """Hold ``size`` more bytes (``alone``: the caller is the only holder, so it fits;
        ``first``: the client's only holding, default: it holds nothing yet); raise 429
        ``overloaded`` when they do not fit."""
        if not alone and self.held + size > self.limit:
            raise ApiError(
                "overloaded",
                f"{self.held} bytes of {self._what} are in progress at this gateway "
                f"({self._setting}); retry with backoff",
            )
        mine = self.held_by(client)
        if first is None:
            first = mine == 0
        if client is not None and not first and mine + size > self.per_client:
            raise ApiError(
                "overloaded",
                f"{mine} bytes of {self._what} from your address are in progress at this "
                f"gateway (a 1/{PER_CLIENT_SHARE} share of {self._setting}); retry with "
                "backoff",
            )
        self.held += size
        if client is not None:
            self._by_client[client] = mine + size
        self._show()

    def release(self, size: int, *, client: str | None = None) -> None:
        self.held -= size
        if client is not None:
            left = self._by_client.get(client, 0) - size
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)
        self._show()

    @contextlib.contextmanager
    def hold(self, size: int, *, client: str | None = None) -> Iterator[Reservation]:
        """Reserve ``size`` bytes for the block (429 ``overloaded`` at once when they do
        not fit beside what others hold, or beyond ``client``'s share)."""
        self.take(size, alone=self.held == 0, client=client)
        reservation = Reservation(self, size, client)
        try:
            yield reservation
        finally:
            self.release(reservation.size, client=client)

    def _show(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.held)
