"""Byte budgets: what requests in progress may make the gateway hold, counted before the
work that allocates it, so that many requests cannot add up to unbounded memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import Gauge

from services.gateway.errors import ApiError


class Reservation:
    """Bytes held against a :class:`ByteBudget` until its ``hold`` block ends."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def resize(self, size: int) -> None:
        """Hold ``size`` bytes in all, once they are known: fewer than reserved gives the
        rest back; more (the estimate was short) raises the budget's 429 when the others
        leave no room for them."""
        if size > self.size:
            self._budget.take(size - self.size, alone=self._budget.held == self.size)
        else:
            self._budget.release(self.size - size)
        self.size = size


class ByteBudget:
    """At most ``limit`` bytes held at once; one holder alone always fits.

    ``setting`` names the configuration field in the 429's message; ``gauge`` (optional)
    shows the bytes held.
    """

    def __init__(self, limit: int, *, setting: str, what: str, gauge: Gauge | None = None):
        self.limit = limit
        self.held = 0
        self._setting = setting
        self._what = what
        self._gauge = gauge

    def take(self, size: int, *, alone: bool) -> None:
        """Hold ``size`` more bytes (``alone``: the caller is the only holder, so it fits);
        raise 429 ``overloaded`` when they do not fit."""
        if not alone and self.held + size > self.limit:
            raise ApiError(
                "overloaded",
                f"{self.held} bytes of {self._what} are in progress at this gateway "
                f"({self._setting}); retry with backoff",
            )
        self.held += size
        self._show()

    def release(self, size: int) -> None:
        self.held -= size
        self._show()

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[Reservation]:
        """Reserve ``size`` bytes for the block (429 ``overloaded`` at once when they do
        not fit beside what others hold)."""
        self.take(size, alone=self.held == 0)
        reservation = Reservation(self, size)
        try:
            yield reservation
        finally:
            self.release(reservation.size)

    def _show(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.held)
