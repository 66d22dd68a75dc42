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
from collections.abc import Callable
from typing import Any, cast

import pytest

from cretoai.config import load_config
from cretoai.errors import ResourceExhausted
from cretoai.v1 import consensus_pb2
from cretoai.vertex import vertex_hash
from node.clusterinit import ClusterLayout
from services.consensus.core.config import Config
from services.consensus.core.messages import Request
from services.consensus.core.replica import ProposeResult
from services.consensus.driver import _TICK, Driver
from services.consensus.servicer import ConsensusServicer
from tests.consensus_service.support import NothingStored
from tests.gateway.support import client_key, signed_body
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


def admit(driver: Driver, name: bytes) -> asyncio.Future[ProposeResult]:
    """A local request at the door (``Driver.propose``'s admission): answered at once when
    refused, else queued for the replica task."""
    return driver._admit(Request(hash=name.ljust(32, b"."), body=name))


def apply_inbox(driver: Driver) -> None:
    """What the replica task would apply now."""
    while not driver._inbox.empty():
        driver._apply(driver._inbox.get_nowait())


async def apply_as_they_come(driver: Driver) -> None:
    """The replica task's part: apply each input as it is queued (until cancelled)."""
    while True:
        driver._apply(await driver._inbox.get())


def propose(driver: Driver, name: bytes) -> ProposeResult:
    future = admit(driver, name)
    apply_inbox(driver)
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


async def test_a_refusal_is_answered_at_the_door_without_the_replica_task() -> None:
    """Overloaded: the answer needs no turn of the replica task (which may be busy for a
    while with a synced write or an execution)."""
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    clock.now += 1.5
    refused = admit(driver, b"second")
    assert refused.done() and refused.result() is ProposeResult.OVERLOADED
    assert driver._inbox.empty()  # nothing queued for the replica task


async def test_admission_at_the_door_binds_while_the_replica_task_is_busy() -> None:
    """Admitted while the oldest request had waited 0.9 s; the replica task comes to it
    after 0.5 s more (it was busy): accepted, not refused late for the wait that grew
    meanwhile."""
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    ticks(driver, clock, 90, period_ms=TICK_MS)
    admitted = admit(driver, b"second")
    assert not admitted.done()
    clock.now += 0.5  # the replica task is busy; no tick is applied meanwhile
    assert driver.overloaded()  # a new request now would be refused at the door
    apply_inbox(driver)
    assert admitted.result() is ProposeResult.ACCEPTED
    # Only admission is decided at the door; the replica's other answers stand.
    clock.now = 1000.0 + 0.9  # as if the wait had not grown: admitted again
    assert propose(driver, b"second") is ProposeResult.DUPLICATE


async def test_a_call_admitted_when_it_arrived_is_not_refused_at_the_door() -> None:
    """The servicer decides admission for a whole call when it arrives, before verifying
    and looking up its vertices (which take a while on a busy node): its vertices pass
    the door even if the wait grew past the limit meanwhile."""
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    clock.now += 1.5
    assert driver.overloaded()
    admitted = driver._admit(Request(hash=b"second".ljust(32, b"."), body=b"x"), admitted=True)
    assert not admitted.done()
    apply_inbox(driver)
    assert admitted.result() is ProposeResult.ACCEPTED


async def test_an_admitted_call_still_meets_the_pools_bound() -> None:
    """Binding admission lifts only the wait limit: a caller that keeps calls coming
    (a process holding the node's certificate, say) fills the pool up to ``pool_max``
    and no further."""
    clock = Clock()
    config = Config(
        n=4, replica_id=1, request_timeout=400, admission_max_wait=ADMISSION_TICKS, pool_max=3
    )
    driver = unstarted_driver(config, tick_ms=TICK_MS, clock=clock)
    answers = []
    for i in range(5):
        name = b"flood %d" % i
        admitted = driver._admit(Request(hash=name.ljust(32, b"."), body=name), admitted=True)
        apply_inbox(driver)
        answers.append(admitted.result())
    assert answers == [ProposeResult.ACCEPTED] * 3 + [ProposeResult.POOL_FULL] * 2


async def test_the_admission_state_is_told_at_once_and_again_when_it_changes() -> None:
    """``watch_admission`` (the WatchAdmission stream): the state now, then each change,
    to every watcher, from the one task that follows it. Idle, that task waits for an
    input rather than polling the clock."""
    clock = Clock()
    driver = make_driver(clock)
    follower = asyncio.create_task(driver._follow_admission())
    watchers = [driver.watch_admission() for _ in range(3)]
    try:
        assert [await anext(w) for w in watchers] == [False] * 3
        turned = [asyncio.ensure_future(anext(w)) for w in watchers]
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(t.done() for t in turned)
        assert not driver._applied.is_set()  # idle: the follower waits for an input
        assert propose(driver, b"first") is ProposeResult.ACCEPTED  # wakes it
        clock.now += 1.5  # the request is overdue: the next check, within a poll, says so
        assert await asyncio.wait_for(asyncio.gather(*turned), 5) == [True] * 3
        assert propose(driver, b"second") is ProposeResult.OVERLOADED  # as the door decides
    finally:
        follower.cancel()
        for w in watchers:
            await w.aclose()


async def test_a_call_the_gateway_admitted_is_not_refused_as_overloaded(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    """``SubmitVerticesRequest.admitted``: the gateway admitted the vertices as they
    arrived, following the admission stream; consensus, overloaded since, does not refuse
    them (they may have waited behind other calls), but refuses a call without it."""
    cfg = load_config(cluster_factory(1).nodes[0].config)
    clock = Clock()
    driver = make_driver(clock)
    driver.link.connected.set()  # ready, as once its transport stream is up
    servicer = ConsensusServicer(cfg, driver, cast(Any, NothingStored()))
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    clock.now += 1.5
    assert driver.overloaded()
    key = client_key()
    late = [signed_body(key, b"late %d" % i, [])[1] for i in range(2)]

    with pytest.raises(ResourceExhausted, match="behind its offered load"):
        await servicer.SubmitVertices(
            consensus_pb2.SubmitVerticesRequest(vertices=late[:1]), cast(Any, None)
        )
    replica_task = asyncio.create_task(apply_as_they_come(driver))
    try:
        reply = await asyncio.wait_for(
            servicer.SubmitVertices(
                consensus_pb2.SubmitVerticesRequest(vertices=late, admitted=True),
                cast(Any, None),
            ),
            10,
        )
    finally:
        replica_task.cancel()
    assert [r.WhichOneof("outcome") for r in reply.results] == ["accepted", "accepted"]
    assert [r.accepted.hash for r in reply.results] == [vertex_hash(v) for v in late]
    assert driver.overloaded()  # still: a call without the flag is refused
    with pytest.raises(ResourceExhausted):
        await servicer.SubmitVertices(
            consensus_pb2.SubmitVerticesRequest(vertices=late[:1]), cast(Any, None)
        )
    # Twice the limit behind: refused whatever the gateway said, so that the pool's
    # requests stay well within request_timeout.
    clock.now += 0.6
    with pytest.raises(ResourceExhausted, match="behind its offered load"):
        await asyncio.wait_for(  # (accepted, it would wait for the replica task: no more)
            servicer.SubmitVertices(
                consensus_pb2.SubmitVerticesRequest(
                    vertices=[signed_body(key, b"too late", [])[1]], admitted=True
                ),
                cast(Any, None),
            ),
            10,
        )


async def test_admitted_requests_are_refused_only_twice_as_far_behind() -> None:
    """The line for what a gateway admitted (``ADMITTED_WAIT_FACTOR`` x the limit), with
    ticks on time: the driver remembers enough ticks to tell."""
    clock = Clock()
    driver = make_driver(clock)
    assert propose(driver, b"first") is ProposeResult.ACCEPTED
    ticks(driver, clock, 150, period_ms=TICK_MS)  # 1.5 s
    assert driver.overloaded() and not driver.too_far_behind_for_admitted()
    ticks(driver, clock, 49, period_ms=TICK_MS)  # 1.99 s
    assert not driver.too_far_behind_for_admitted()
    ticks(driver, clock, 2, period_ms=TICK_MS)  # 2.01 s
    assert driver.too_far_behind_for_admitted()
    ticks(driver, clock, 500, period_ms=TICK_MS)  # older than every remembered tick
    assert driver.too_far_behind_for_admitted()
