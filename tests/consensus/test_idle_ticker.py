"""The driver's ticker on an idle replica: it sleeps through the ticks that only count
time (``Replica.quiet_ticks``) instead of queueing a hundred ticks a second, keeps the
replica's clock on the wall clock, and ticks every period again once work comes in.

A real replica inside a real driver that is not started: only its ticker runs, and a
small loop applies the inbox as the replica task would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from services.consensus.core.config import Config
from services.consensus.core.messages import Request
from services.consensus.core.replica import ProposeResult
from services.consensus.driver import Driver, _Propose, _Tick
from tests.support.driver import unstarted_driver

TICK_MS = 10


def make_driver() -> Driver:
    # Replica 1, a backup: a request it takes stays pending (its primary never answers).
    return unstarted_driver(Config(n=4, replica_id=1, status_interval=20), tick_ms=TICK_MS)


class Harness:
    """The driver's ticker, and a loop that applies its inbox (counting the ticks)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.queued_ticks = 0

    async def _apply_inbox(self) -> None:
        while True:
            item = await self.driver._inbox.get()
            self.queued_ticks += isinstance(item, _Tick)
            self.driver._apply(item)
            self.driver.replica.ready()

    async def run(self, seconds: float) -> None:
        tasks = [
            asyncio.create_task(self.driver._ticker()),
            asyncio.create_task(self._apply_inbox()),
        ]
        try:
            await asyncio.sleep(seconds)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_an_idle_replica_is_ticked_a_few_times_a_second_and_keeps_time() -> None:
    driver = make_driver()
    h = Harness(driver)
    started = time.monotonic()
    await h.run(1.0)
    elapsed_ticks = (time.monotonic() - started) * 1000 / TICK_MS
    # Alone, it hears no peer: it reports every status interval (20 ticks), and each of
    # those is the only tick that goes through the replica task.
    assert h.queued_ticks <= elapsed_ticks / 20 + 2, (h.queued_ticks, elapsed_ticks)
    # Its logical time still follows the wall clock (sleeps only ever run late).
    assert 0.6 * elapsed_ticks <= driver.replica.now <= elapsed_ticks + 1


async def test_an_input_brings_the_clock_up_to_date_and_ends_the_idle_sleep() -> None:
    driver = make_driver()
    h = Harness(driver)
    runner = asyncio.create_task(h.run(1.0))
    await asyncio.sleep(0.33)
    assert driver._idle_from is not None  # asleep through idle ticks
    started = time.monotonic()
    future: asyncio.Future[ProposeResult] = asyncio.get_running_loop().create_future()
    request = Request(hash=b"r".ljust(32, b"."), body=b"r")
    driver._inbox.put_nowait(_Propose(request, future))
    assert await future is ProposeResult.ACCEPTED
    # Applied at the time it came (not at the end of the idle sleep) ...
    assert driver.replica.oldest_pending_since() == driver.replica.now
    assert driver.replica.now >= 0.6 * 33
    queued = h.queued_ticks
    now = driver.replica.now
    await runner
    # ... and from then on every tick counts (a request waits: its timers run).
    ticks_since = (time.monotonic() - started) * 1000 / TICK_MS
    assert h.queued_ticks - queued >= 0.5 * ticks_since
    assert driver.replica.now - now >= 0.5 * ticks_since
