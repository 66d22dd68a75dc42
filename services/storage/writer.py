"""The single writer thread: ordered writes, one WAL sync per group (group commit).

rocksdict holds the GIL for the whole of a RocksDB call, and an fsync under
``WriteOptions.sync`` would hold it for milliseconds. So every write is applied
unsynced, in submission order, on this one thread; then the thread syncs the
WAL once for the whole group with ``flush_wal(sync=True)`` (which releases the
GIL) and only then answers every caller of the group and publishes the writes
to readers. A caller therefore never hears "done" before its data is on disk,
and writes queued while a sync runs share the next one.

An operation marked ``barrier`` (a checkpoint) runs alone, after the previous
group is synced. Its own durability is not a WAL sync (a checkpoint flushes the
memtables into synced files and syncs the files it makes): it is counted apart,
in ``cretoai_storage_barrier_writes_total``; a WAL sync before it (only after a
group's sync failed) is timed in ``cretoai_storage_wal_sync_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.storage import metrics
from services.storage.errors import ServiceError, ShuttingDown, WriteFailed
from services.storage.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 64


@dataclass(eq=False)
class _Op(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    kind: str
    barrier: bool = False
    queued_at: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled); the write happened anyway
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Writer:
    """Owns every write to a :class:`Store`. Start with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, store: Store, *, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Op[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="storage-writer", daemon=True)
        self._stopping = False
        self._depth = 0
        self._depth_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    async def submit(self, fn: Callable[[], T], *, kind: str, barrier: bool = False) -> T:
        """Run ``fn`` on the writer thread; returns once its group is synced."""
        if self._stopping:
            raise ShuttingDown("the storage service is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._depth_lock:
            self._depth += 1
            metrics.WRITER_QUEUE.set(self._depth)
        self._queue.put(_Op(fn=fn, future=future, loop=loop, kind=kind, barrier=barrier))
        return await future

    async def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the thread. Idempotent."""
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            log.error("the writer thread did not stop in time", extra={"fields": {"s": timeout}})

    # ------------------------------------------------------------------ the thread

    def _take(self, pending: _Op[Any] | None) -> tuple[list[_Op[Any]], _Op[Any] | None, bool]:
        """The next group, the op held back for the group after it, and whether to stop."""
        first = pending if pending is not None else self._queue.get()
        if first is None:
            return [], None, True
        group = [first]
        if first.barrier:
            return group, None, False
        while len(group) < self._max_group:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is None:
                return group, None, True
            if op.barrier:
                return group, op, False
            group.append(op)
        return group, None, False

    def _run(self) -> None:
        pending: _Op[Any] | None = None
        while True:
            group, pending, stop = self._take(pending)
            if group:
                self._run_group(group)
            if stop:
                break
        # anything submitted after stop() began
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                self._finish(op, None, ShuttingDown("the storage service is shutting down"))

    def _run_group(self, group: list[_Op[Any]]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        started = time.perf_counter()
        for op in group:
            metrics.WRITER_WAIT.labels(op.kind).observe(started - op.queued_at)
            t0 = time.perf_counter()
            try:
                if op.barrier:
                    self._sync_before_barrier()
                    metrics.BARRIER_WRITES.inc()
                outcomes.append((op.fn(), None))
            except ServiceError as exc:
                outcomes.append((None, exc))
            except Exception as exc:  # a bug: never leave a caller waiting
                log.exception("write operation failed unexpectedly")
                outcomes.append((None, exc))
            metrics.WRITE_APPLY.labels(op.kind).observe(time.perf_counter() - t0)
        if self._store.dirty:
            t0 = time.perf_counter()
            try:
                self._store.sync()
            except WriteFailed as exc:
                outcomes = [(None, error or exc) for _, error in outcomes]
            metrics.WAL_SYNC.observe(time.perf_counter() - t0)
        metrics.GROUP_SIZE.observe(len(group))
        for op, (result, error) in zip(group, outcomes, strict=True):
            if isinstance(error, WriteFailed):
                metrics.WRITE_ERRORS.labels(type(error).__name__).inc()
            self._finish(op, result, error)

    def _sync_before_barrier(self) -> None:
        """The WAL sync a barrier waits for, timed like a group's (it is one). The group
        before a barrier ends with its own sync, so this only syncs after a failed one."""
        if not self._store.dirty:
            return
        t0 = time.perf_counter()
        try:
            self._store.sync()
        finally:
            metrics.WAL_SYNC.observe(time.perf_counter() - t0)

    def _finish(self, op: _Op[Any], result: Any, error: BaseException | None) -> None:
        with self._depth_lock:
            self._depth -= 1
            metrics.WRITER_QUEUE.set(self._depth)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            op.loop.call_soon_threadsafe(_resolve, op.future, result, error)
