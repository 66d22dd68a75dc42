"""Waiting callers (``?wait=true``) are answered by their own copy, not by another copy's fate.

Copies of one vertex differ only in their signature; consensus orders and decides each
copy on its own bytes. A badly signed copy of the content being rejected must not
answer a caller whose validly signed copy is still on its way.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from cretoai.v1 import vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from services.gateway.finality import FinalityHub
from tests.gateway.support import client_key


def _copies() -> tuple[vertex_pb2.Vertex, vertex_pb2.Vertex]:
    good = make_vertex(client_key(), b"payload", [], 1_700_000_000_000)
    bad = vertex_pb2.Vertex()
    bad.CopyFrom(good)
    bad.signature = bytes(len(good.signature))
    return good, bad


def _batch(seq: int, vertices: list[vertex_pb2.Vertex], rejected: list[bytes]) -> Any:
    return vertex_pb2.FinalizedBatch(seq=seq, vertices=vertices, rejected=rejected)


async def test_another_copys_rejection_does_not_answer_the_waiter() -> None:
    good, bad = _copies()
    h = vertex_hash(good)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(h, signed_digest(good)) as mine, hub.waiter(h, signed_digest(bad)) as theirs:
        await hub._on_batch(_batch(1, [bad], [h]))  # the bad copy, rejected
        assert theirs.done() and theirs.result().rejected
        assert not mine.done()
        # Both copies in one batch, the bad one first and rejected: the content is final.
        await hub._on_batch(_batch(2, [bad, good], [h]))
        assert mine.done() and mine.result().seq == 2 and not mine.result().rejected


async def test_a_duplicate_copy_rejected_answers_its_own_waiter() -> None:
    good, _ = _copies()
    h = vertex_hash(good)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(h, signed_digest(good)) as mine:
        await hub._on_batch(_batch(1, [good], [h]))  # e.g. already finalized before
        outcome = await asyncio.wait_for(mine, 1)
        assert outcome.rejected and outcome.seq == 1
