"""Waiting callers (``?wait=true``) are answered by their own copy, not by another copy's fate.

Copies of one vertex differ only in their signature; consensus orders and decides each
copy on its own bytes. A badly signed copy of the content being rejected must not
answer a caller whose validly signed copy is still on its way.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from cretoai.v1 import vertex_pb2
from cretoai.vertex import make_vertex, vertex_hash
from services.gateway import finality
from services.gateway.finality import FinalityHub
from tests.gateway.support import client_key

KEY = client_key()


def _copies() -> tuple[vertex_pb2.Vertex, vertex_pb2.Vertex]:
    good = make_vertex(KEY, b"payload", [], 1_700_000_000_000)
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
    with hub.waiter(h, good) as mine, hub.waiter(h, bad) as theirs:
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
    with hub.waiter(h, good) as mine:
        await hub._on_batch(_batch(1, [good], [h]))  # e.g. already finalized before
        outcome = await asyncio.wait_for(mine, 1)
        assert outcome.rejected and outcome.seq == 1


async def test_another_valid_copy_finalized_answers_the_waiter() -> None:
    good, _ = _copies()
    other = make_vertex(KEY, b"payload", [], 1_700_000_000_000)  # re-signed
    assert other.signature != good.signature and vertex_hash(other) == vertex_hash(good)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(vertex_hash(good), good) as mine:
        await hub._on_batch(_batch(1, [other], []))
        outcome = await asyncio.wait_for(mine, 1)
        assert outcome.seq == 1 and not outcome.rejected


async def test_only_vertices_that_may_be_waited_for_are_hashed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch vertex whose creator and timestamp no waiter has cannot be waited for: the
    hub does not spend 8 KB of SHA3 on it. One with them (the waited content, or another
    content of the same creator and time) is hashed and told apart by its hash."""
    good, _ = _copies()
    same_time = make_vertex(KEY, b"another payload", [], good.timestamp_ms)
    strangers = [make_vertex(KEY, b"x%d" % i, [], 1_600_000_000_000) for i in range(3)]
    strangers += [make_vertex(client_key(), b"y", [], good.timestamp_ms)]  # another creator
    hashed: list[bytes] = []

    def counting_hash(vertex: vertex_pb2.Vertex) -> bytes:
        hashed.append(vertex.payload)
        return vertex_hash(vertex)

    monkeypatch.setattr(finality, "vertex_hash", counting_hash)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(vertex_hash(good), good) as mine:
        await hub._on_batch(_batch(1, [*strangers, same_time], []))
        assert hashed == [b"another payload"] and not mine.done()
        await hub._on_batch(_batch(2, [*strangers, good], []))
        assert hashed == [b"another payload", b"payload"]
        assert (await asyncio.wait_for(mine, 1)).seq == 2
    assert not hub._fingerprints  # forgotten with the waiter
