"""Waiting callers (``?wait=true``) are answered by their own copy, not by another copy's fate.

Copies of one vertex differ only in their signature; consensus orders and decides each
copy on its own bytes. A badly signed copy of the content being rejected must not
answer a caller whose validly signed copy is still on its way.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from cretoai.v1 import consensus_pb2, vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from services.gateway import finality
from services.gateway.finality import FinalityHub
from tests.gateway.support import client_key

KEY = client_key()
FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED


def _copies() -> tuple[vertex_pb2.Vertex, vertex_pb2.Vertex]:
    good = make_vertex(KEY, b"payload", [], 1_700_000_000_000)
    bad = vertex_pb2.Vertex()
    bad.CopyFrom(good)
    bad.signature = bytes(len(good.signature))
    return good, bad


def _notice(seq: int, copies: list[tuple[vertex_pb2.Vertex, bool]]) -> Any:
    """The notice of a batch of ``copies`` (each with whether it was rejected)."""
    return consensus_pb2.FinalizedNotice(
        batch=vertex_pb2.FinalizedBatch(
            seq=seq, rejected=[vertex_hash(v) for v, rejected in copies if rejected]
        ),
        results=[
            vertex_pb2.VertexRecord(
                hash=vertex_hash(v), status=REJECTED if rejected else FINALIZED, seq=seq
            )
            for v, rejected in copies
        ],
        copies=[signed_digest(v) for v, _ in copies],
    )


async def test_another_copys_rejection_does_not_answer_the_waiter() -> None:
    good, bad = _copies()
    h = vertex_hash(good)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(h, good) as mine, hub.waiter(h, bad) as theirs:
        await hub._on_batch(_notice(1, [(bad, True)]))  # the bad copy, rejected
        assert theirs.done() and theirs.result().rejected
        assert not mine.done()
        # Both copies in one batch, the bad one first and rejected: the content is final.
        await hub._on_batch(_notice(2, [(bad, True), (good, False)]))
        assert mine.done() and mine.result().seq == 2 and not mine.result().rejected


async def test_a_duplicate_copy_rejected_answers_its_own_waiter() -> None:
    good, _ = _copies()
    h = vertex_hash(good)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(h, good) as mine:
        await hub._on_batch(_notice(1, [(good, True)]))  # e.g. already finalized before
        outcome = await asyncio.wait_for(mine, 1)
        assert outcome.rejected and outcome.seq == 1


async def test_another_valid_copy_finalized_answers_the_waiter() -> None:
    good, _ = _copies()
    other = make_vertex(KEY, b"payload", [], 1_700_000_000_000)  # re-signed
    assert other.signature != good.signature and vertex_hash(other) == vertex_hash(good)
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(vertex_hash(good), good) as mine:
        await hub._on_batch(_notice(1, [(other, False)]))
        outcome = await asyncio.wait_for(mine, 1)
        assert outcome.seq == 1 and not outcome.rejected
        assert outcome.notice is not None
        # the record is the executed copy's, not the caller's: read from storage
        assert outcome.notice.record(vertex_hash(good), good, signed_digest(good)) is None


async def test_finalized_batches_cost_the_gateway_no_hashing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The notice names each copy by its signed digest: a finalized content answers its
    waiters without hashing anything; only a content the batch rejected has its waiters'
    copies hashed, to tell whose copy it was."""
    good, bad = _copies()
    hashed: list[bytes] = []

    def counting_digest(vertex: vertex_pb2.Vertex) -> bytes:
        hashed.append(vertex.signature)
        return signed_digest(vertex)

    monkeypatch.setattr(finality, "signed_digest", counting_digest)
    strangers = [make_vertex(KEY, b"x%d" % i, [], 1_600_000_000_000) for i in range(3)]
    hub = FinalityHub(cast(Any, None), cast(Any, None), buffer_bytes=1 << 20)
    with hub.waiter(vertex_hash(good), good) as mine:
        await hub._on_batch(_notice(1, [(s, False) for s in strangers]))
        assert not mine.done() and hashed == []
        await hub._on_batch(_notice(2, [(bad, True)]))
        assert not mine.done() and hashed == [good.signature]
        await hub._on_batch(_notice(3, [*((s, False) for s in strangers), (good, False)]))
        assert (await asyncio.wait_for(mine, 1)).seq == 3 and len(hashed) == 1
