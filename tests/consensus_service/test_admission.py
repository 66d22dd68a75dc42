"""Admission control on the wall clock (``Driver.overloaded``).

The replica counts a pending request's wait in ticks; when the consensus process is
starved, ticks are applied late (one is never queued behind another), logical time
runs slow, and "admission_max_wait ticks" lasts seconds: at 5x overload it admitted
several seconds of work. The driver measures the wait on the wall clock instead.

A real replica (ML-DSA-87 keys) inside a real driver that is not started; its inputs
are applied as its task would apply them, and the wall clock is the test's.
"""

from __future__ import annotations

import asyncio

from services.consensus.core.config import Config
from services.consensus.core.messages import Request
from services.consensus.core.replica import ProposeResult
from services.consensus.driver import _TICK, Driver, _Propose
from tests.support.driver import unstarted_driver

TICK_MS = 10
ADMISSION_TICKS = 100  # 1 s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_driver(clock: Clock) -> Driver:
    # Replica 1 is a backup in view 0: a request it takes stays pending (forwarded).
    config = Config(n=4, replica_id=1, request_timeout=400, admission_max_wait=ADMISSION_TICKS)
    return unstarted_driver(config, tick_ms=TICK_MS, clock=clock)


def propose(driver: Driver, name: bytes) -> ProposeResult:
    future: asyncio.Future[ProposeResult] = asyncio.get_running_loop().create_future()
    driver._apply(_Propose(Request(hash=name.ljust(32, b"."), body=name), future))
    return future.result()


def ticks(driver: Driver, clock: Clock, count: int, *, period_ms: float) -> None:
    for _ in range(count):
        clock.now += period_ms / 1000
        driver._apply(_TICK)


async def test_a_starved_replica_refuses_by_the_wall_clock_before_its_ticks_say_so() -> None:
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    # Starved: 20 ticks in 1.2 s of wall time (each applied 60 ms late).
    ticks(driver, clock, 20, period_ms=60)
    assert not driver.replica.overloaded()  # 20 ticks < 100: logical time says fine
    assert driver.overloaded()
    assert propose(driver, b"second") is ProposeResult.OVERLOADED


async def test_ticks_on_time_admit_until_the_limit() -> None:
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    ticks(driver, clock, 99, period_ms=TICK_MS)  # 0.99 s
    assert not driver.overloaded()
    assert propose(driver, b"second") is ProposeResult.ACCEPTED
    ticks(driver, clock, 3, period_ms=TICK_MS)  # 1.02 s: both clocks agree
    assert driver.overloaded() and driver.replica.overloaded()


async def test_a_stalled_tick_counts_as_waiting() -> None:
    """No tick applied at all for longer than the limit (the replica task is stuck
    behind its inbox or a slow write): a request waiting since then is overdue."""
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    clock.now += 1.5
    assert driver.overloaded()


async def test_an_empty_pool_is_never_overloaded() -> None:
    clock = Clock()
    driver = make_driver(clock)
    clock.now += 60
    assert not driver.overloaded()
    ticks(driver, clock, 300, period_ms=500)
    assert not driver.overloaded()
    assert propose(driver, b"first") is ProposeResult.ACCEPTED


async def test_a_request_older_than_the_remembered_ticks_is_overdue() -> None:
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    ticks(driver, clock, 2 * ADMISSION_TICKS, period_ms=TICK_MS)
    assert driver.overloaded()
