"""The stream of finalized batches: from storage (catch-up), then live, without gaps.

A watcher subscribes *before* reading storage, so a batch executed meanwhile is
either in storage or in its queue; duplicates are skipped by seq. A watcher that
falls more than ``buffer`` batches behind is cut off (its stream ends with
RESOURCE_EXHAUSTED and the client resumes from its last seq) instead of growing
memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from prometheus_client import Gauge

from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2

WATCHERS = Gauge("cretoai_consensus_finalized_watchers", "Open WatchFinalized streams")

PAGE = 128
REJECTED = vertex_pb2.VERTEX_STATUS_REJECTED


class WatcherTooSlow(Exception):
    """The watcher fell too far behind and was cut off."""


def batch_of(entry: storage_pb2.FinalizedEntry) -> vertex_pb2.FinalizedBatch:
    batch = vertex_pb2.FinalizedBatch()
    batch.CopyFrom(entry.batch)
    if not batch.rejected:
        batch.rejected.extend(r.hash for r in entry.results if r.status == REJECTED)
    return batch


class FinalizedFeed:
    def __init__(self, storage: storage_pb2_grpc.StorageStub, *, buffer: int = 1024) -> None:
        self._storage = storage
        self._buffer = buffer
        self._watchers: set[asyncio.Queue[vertex_pb2.FinalizedBatch | None]] = set()

    def publish(self, batch: vertex_pb2.FinalizedBatch) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait(batch)
            except asyncio.QueueFull:
                self._watchers.discard(queue)
                queue.get_nowait()  # make room for the end marker
                queue.put_nowait(None)

    async def read(
        self, from_seq: int, to_seq: int = 0
    ) -> AsyncGenerator[vertex_pb2.FinalizedBatch, None]:
        """Executed batches ``from_seq..to_seq`` (inclusive; ``to_seq=0``: to the last one)."""
        next_seq = from_seq
        end = to_seq + 1 if to_seq else 0  # storage's to_seq is exclusive
        while True:
            count = 0
            request = storage_pb2.GetFinalizedRequest(from_seq=next_seq, to_seq=end, limit=PAGE)
            async for entry in self._storage.GetFinalized(request, timeout=60):
                count += 1
                next_seq = entry.batch.seq + 1
                yield batch_of(entry)
            if count < PAGE or (to_seq and next_seq > to_seq):
                return

    async def watch(self, from_seq: int) -> AsyncIterator[vertex_pb2.FinalizedBatch]:
        queue: asyncio.Queue[vertex_pb2.FinalizedBatch | None] = asyncio.Queue(self._buffer)
        self._watchers.add(queue)
        WATCHERS.inc()
        next_seq = max(from_seq, 1)
        try:
            async for batch in self.read(next_seq):
                next_seq = batch.seq + 1
                yield batch
            while True:
                live = await queue.get()
                if live is None:
                    raise WatcherTooSlow(f"fell more than {self._buffer} batches behind")
                if live.seq < next_seq:
                    continue
                if live.seq > next_seq:  # cannot happen unless storage lagged: fill the gap
                    async for missed in self.read(next_seq, live.seq - 1):
                        yield missed
                yield live
                next_seq = live.seq + 1
        finally:
            self._watchers.discard(queue)
            WATCHERS.dec()
