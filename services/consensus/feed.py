"""The stream of finalized batches: from storage (catch-up), then live, without gaps.

Two forms: whole batches (``WatchFinalized``) and notices without the vertex bodies
(``WatchFinalizedNotices``, what the gateway follows).

A watcher subscribes *before* reading storage, so a batch executed meanwhile is
either in storage or in its queue; duplicates are skipped by seq. A watcher that
falls more than ``buffer`` batches behind is cut off (its stream ends with
RESOURCE_EXHAUSTED and the client resumes from its last seq) instead of growing
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import Gauge

from cretoai.v1 import consensus_pb2, storage_pb2, storage_pb2_grpc, vertex_pb2

if TYPE_CHECKING:
    from services.consensus.executor import Executed

WATCHERS = Gauge(
    "cretoai_consensus_finalized_watchers", "Open WatchFinalized and WatchFinalizedNotices streams"
)

PAGE = 128
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED
FINALIZED = vertex_pb2.VERTEX_STATUS_FINALIZED

Item = TypeVar("Item", vertex_pb2.FinalizedBatch, consensus_pb2.FinalizedNotice)


class WatcherTooSlow(Exception):
    """The watcher fell too far behind and was cut off."""


def batch_of(entry: storage_pb2.FinalizedEntry) -> vertex_pb2.FinalizedBatch:
    batch = vertex_pb2.FinalizedBatch()
    batch.CopyFrom(entry.batch)
    if not batch.rejected:
        batch.rejected.extend(r.hash for r in entry.results if r.status == REJECTED)
    return batch


def notice_of_entry(entry: storage_pb2.FinalizedEntry) -> consensus_pb2.FinalizedNotice:
    """A stored batch's notice (read with ``omit_vertices``): storage keeps no signed
    digests, so ``copies`` stays empty."""
    return consensus_pb2.FinalizedNotice(batch=batch_of(entry), results=entry.results)


def notice_of(executed: Executed) -> consensus_pb2.FinalizedNotice:
    """The notice of a batch just executed: its header, results and copies."""
    seq = executed.header.seq
    return consensus_pb2.FinalizedNotice(
        batch=executed.header,
        results=[
            vertex_pb2.VertexRecord(
                hash=result.hash,
                status=REJECTED if result.rejected else FINALIZED,
                seq=seq,
                height=height,
                reject_reason=result.reject_reason,
            )
            for result, height in zip(executed.results, executed.heights, strict=True)
        ],
        copies=executed.copies,
    )


def _seq_of(item: vertex_pb2.FinalizedBatch | consensus_pb2.FinalizedNotice) -> int:
    return item.batch.seq if isinstance(item, consensus_pb2.FinalizedNotice) else item.seq


class _Watchers(Generic[Item]):
    """The live queues of one form of the stream."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Item | None]] = set()

    def offer(self, item: Item) -> None:
        for queue in list(self.queues):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.queues.discard(queue)
                queue.get_nowait()  # make room for the end marker
                queue.put_nowait(None)


class FinalizedFeed:
    def __init__(self, storage: storage_pb2_grpc.StorageStub, *, buffer: int = 1024) -> None:
        self._storage = storage
        self._buffer = buffer
        self._batches: _Watchers[vertex_pb2.FinalizedBatch] = _Watchers()
        self._notices: _Watchers[consensus_pb2.FinalizedNotice] = _Watchers()

    def publish(self, executed: Executed) -> None:
        # each form built only when someone follows it
        if self._batches.queues:
            self._batches.offer(executed.batch)
        if self._notices.queues:
            self._notices.offer(notice_of(executed))

    async def _read_entries(
        self, from_seq: int, to_seq: int, *, bodies: bool
    ) -> AsyncGenerator[storage_pb2.FinalizedEntry, None]:
        next_seq = from_seq
        end = to_seq + 1 if to_seq else 0  # storage's to_seq is exclusive
        while True:
            count = 0
            request = storage_pb2.GetFinalizedRequest(
                from_seq=next_seq, to_seq=end, limit=PAGE, omit_vertices=not bodies
            )
            async for entry in self._storage.GetFinalized(request, timeout=60):
                count += 1
                next_seq = entry.batch.seq + 1
                yield entry
            if count < PAGE or (to_seq and next_seq > to_seq):
                return

    async def read(
        self, from_seq: int, to_seq: int = 0
    ) -> AsyncGenerator[vertex_pb2.FinalizedBatch, None]:
        """Executed batches ``from_seq..to_seq`` (inclusive; ``to_seq=0``: to the last one)."""
        async with contextlib.aclosing(self._read_entries(from_seq, to_seq, bodies=True)) as read:
            async for entry in read:
                yield batch_of(entry)

    async def read_notices(
        self, from_seq: int, to_seq: int = 0
    ) -> AsyncGenerator[consensus_pb2.FinalizedNotice, None]:
        """:meth:`read`'s batches as notices, read without their bodies."""
        async with contextlib.aclosing(self._read_entries(from_seq, to_seq, bodies=False)) as read:
            async for entry in read:
                yield notice_of_entry(entry)

    def watch(self, from_seq: int) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        return self._watch(self._batches, self.read, from_seq)

    def watch_notices(self, from_seq: int) -> AsyncIterator[consensus_pb2.FinalizedNotice]:
        return self._watch(self._notices, self.read_notices, from_seq)

    async def _watch(
        self,
        watchers: _Watchers[Item],
        read: Callable[[int, int], AsyncGenerator[Item, None]],
        from_seq: int,
    ) -> AsyncIterator[Item]:
        queue: asyncio.Queue[Item | None] = asyncio.Queue(self._buffer)
        watchers.queues.add(queue)
        WATCHERS.inc()
        next_seq = max(from_seq, 1)
        try:
            async for item in read(next_seq, 0):
                next_seq = _seq_of(item) + 1
                yield item
            while True:
                live = await queue.get()
                if live is None:
                    raise WatcherTooSlow(f"fell more than {self._buffer} batches behind")
                seq = _seq_of(live)
                if seq < next_seq:
                    continue
                if seq > next_seq:  # cannot happen unless storage lagged: fill the gap
                    async for missed in read(next_seq, seq - 1):
                        yield missed
                yield live
                next_seq = seq + 1
        finally:
            watchers.queues.discard(queue)
            WATCHERS.dec()
