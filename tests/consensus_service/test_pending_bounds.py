"""What the consensus driver holds for peers is bounded in bytes: its cache of vertices
not yet executed (``Driver.pending``: parent checks, ``GetPending``), where a peer
forwarding large, validly signed vertices evicts the oldest instead of growing the
process; and the messages being decoded and verified, beyond which the transport stream
waits. A real driver, not started, with real ML-DSA-87 keys."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from cretoai.crypto.backend import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import transport_pb2
from cretoai.vertex import make_vertex, vertex_hash
from services.consensus import driver as driver_module
from services.consensus.core.codec import encode_envelope
from services.consensus.core.config import Config
from services.consensus.core.messages import Request, RequestsEnvelope, StatusEnvelope
from services.consensus.driver import request_hash
from tests.support.driver import unstarted_driver

PAYLOAD = 100_000


async def test_large_forwards_evict_the_oldest_pending_vertices() -> None:
    config = Config(n=4, replica_id=0, batch_max_bytes=1_048_576)
    driver = unstarted_driver(config, tick_ms=10, pending_max_bytes=450_000)
    backend = get_backend("auto")
    client = NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<test>"))
    now = int(time.time() * 1000)
    vertices = [make_vertex(client, os.urandom(PAYLOAD), [], now + i) for i in range(8)]
    bodies = [v.SerializeToString() for v in vertices]
    requests = tuple(Request(hash=request_hash(b), body=b) for b in bodies)
    step = await driver._check(3, encode_envelope(RequestsEnvelope(requests)))
    assert step is not None  # valid forwards: delivered to the replica
    contents = [vertex_hash(v) for v in vertices]
    kept = [c for c in contents if c in driver.pending]
    assert driver.pending_bytes <= 450_000
    # the newest four stay (4 x ~107 KB); the oldest went first
    assert kept == contents[-4:]
    assert driver.pending_bytes == sum(len(b) for b in bodies[-4:])


async def test_messages_being_verified_are_bounded_in_bytes(monkeypatch: Any) -> None:
    monkeypatch.setattr(driver_module, "VERIFYING_MAX_BYTES", 1000)
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)

    def envelope(size: int) -> transport_pb2.Envelope:
        message = transport_pb2.Envelope(payload=b"\x07" * size)
        setattr(message, "from", driver.node_ids[3])  # a Python keyword
        return message

    await driver._on_inbound(envelope(600))
    blocked = asyncio.create_task(driver._on_inbound(envelope(600)))
    for _ in range(5):  # let it run until it waits (yields, no timing)
        await asyncio.sleep(0)
    assert not blocked.done()
    assert driver.verifying_bytes == 600
    await driver._deliver_one_verified()  # the first is checked and handed on
    await blocked
    assert driver.verifying_bytes == 600
    await driver._deliver_one_verified()
    assert driver.verifying_bytes == 0
    # one message larger than the bound still goes, alone
    await driver._on_inbound(envelope(5000))
    assert driver.verifying_bytes == 5000
    await driver._deliver_one_verified()
    # what was checked reached the replica task, in order (undecodable: a fault each)
    assert driver._inbox.qsize() == 3


async def test_messages_waiting_for_the_replica_task_stay_counted(monkeypatch: Any) -> None:
    """Checked messages wait in the replica task's inbox while it waits itself (a persist
    to a full disk, a storage that is down): they were no longer counted there, and a
    consensus process grew from 99 to 329 MB in 4.5 minutes (audit, 2026-12-04). Their
    bytes now count until the replica task applies them: beyond the bound, the
    transport stream is not read."""
    status = encode_envelope(StatusEnvelope(view=0, active=True, last_executed=0, stable_seq=0))
    monkeypatch.setattr(driver_module, "VERIFYING_MAX_BYTES", 3 * len(status))
    driver = unstarted_driver(Config(n=4, replica_id=0), tick_ms=10)
    message = transport_pb2.Envelope(payload=status)
    setattr(message, "from", driver.node_ids[3])
    for _ in range(3):
        await driver._on_inbound(message)
        await driver._deliver_one_verified()
    assert driver._inbox.qsize() == 3  # checked, valid, waiting for the replica task
    assert driver.verifying_bytes == 3 * len(status)
    blocked = asyncio.create_task(driver._on_inbound(message))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not blocked.done()  # the stream is not read on
    driver._apply(driver._inbox.get_nowait())  # the replica task takes one
    await asyncio.wait_for(blocked, 5)
    assert driver.verifying_bytes == 3 * len(status)
