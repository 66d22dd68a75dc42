"""The driver's cache of vertices not yet executed (``Driver.pending``: parent checks,
``GetPending``) is bounded in bytes: a peer forwarding large, validly signed vertices
evicts the oldest instead of growing the process. A real driver, not started, with real
ML-DSA-87 keys; the forwards go through its decode-and-verify path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cretoai.crypto.backend import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.vertex import make_vertex, vertex_hash
from services.consensus.core.codec import encode_envelope
from services.consensus.core.config import Config
from services.consensus.core.messages import Request, RequestsEnvelope
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
