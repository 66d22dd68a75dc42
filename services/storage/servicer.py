"""The gRPC service ``cretoai.v1.Storage``.

Requests are checked on the event loop (:mod:`services.storage.validate`),
writes go to the one writer thread (:mod:`services.storage.writer`), reads run
on the event loop in bounded pages. Failures are raised as the errors of
:mod:`services.storage.errors`; :mod:`cretoai.serving` turns them into statuses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cretoai.v1 import storage_pb2, storage_pb2_grpc, vertex_pb2
from services.storage import keys, metrics
from services.storage.certify import Certifier, resolve_reference
from services.storage.errors import InvalidArgument, NotFound, WriteFailed
from services.storage.store import (
    STATE_PAGE_ENTRIES,
    Store,
    dir_bytes,
    now_ms,
    write_backup_manifest,
)
from services.storage.validate import (
    MAX_STATE_KEY_BYTES,
    check_commit_shape,
    check_evidence,
    check_hash,
    check_keys,
    check_optional_hash,
    check_write_state,
    limit_of,
)
from services.storage.writer import Writer

log = logging.getLogger(__name__)

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name

#: Records fetched per read of the database while streaming.
PAGE = 64

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self", bound="StorageServicer")


def _unary(
    fn: Callable[[Self, Req, Context], Awaitable[Resp]],
) -> Callable[[Self, Req, Context], Awaitable[Resp]]:
    """A call that may write: its failure is checked for a halt (see :meth:`on_error`)."""

    @functools.wraps(fn)
    async def call(self: Self, request: Req, context: Context) -> Resp:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await self.on_error(exc)
            raise

    return call


def _check_state_bytes(value: bytes, what: str) -> None:
    if len(value) > MAX_STATE_KEY_BYTES:
        raise InvalidArgument(f"{what}: {len(value)} bytes; the limit is {MAX_STATE_KEY_BYTES}")


class StorageServicer(storage_pb2_grpc.StorageServicer):
    def __init__(
        self,
        store: Store,
        writer: Writer,
        *,
        certifier: Certifier,
        node: str = "",
        on_halt: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._writer = writer
        self._certifier = certifier
        self._node = node
        self._on_halt = on_halt
        self._halted = False

    async def on_error(self, exc: BaseException) -> None:
        """A write error halts the store: tell health checks and metrics (once)."""
        if self._store.halt_reason is None or self._halted:
            return
        self._halted = True
        metrics.HALTED.set(1)
        if isinstance(exc, WriteFailed):
            log.error("write failed", extra={"fields": {"error": str(exc)}})
        if self._on_halt is not None:
            await self._on_halt()

    def refresh_gauges(self) -> None:
        counters = self._store.published
        metrics.LAST_SEQ.set(counters.last_seq)
        metrics.VERTICES.labels("finalized").set(counters.finalized_vertices)
        metrics.VERTICES.labels("rejected").set(counters.rejected_vertices)
        metrics.EDGES.set(counters.edges)
        metrics.EVIDENCE.set(counters.evidence)
        memory = self._store.memory_bytes()
        metrics.MEMTABLE_BYTES.set(memory.memtables)
        metrics.BLOCK_CACHE_BYTES.set(memory.block_cache)
        metrics.TABLE_READERS_BYTES.set(memory.table_readers)

    # ------------------------------------------------------------------ writes

    @_unary
    async def CommitBatch(
        self, request: storage_pb2.CommitBatchRequest, context: Context
    ) -> storage_pb2.CommitBatchResponse:
        started = time.perf_counter()
        origin, voted = "batch.vertices", None
        if request.voted_batch_key:  # the vertices from the consensus's VotedBatch record
            origin, voted = resolve_reference(request, self._store.read_voted)
        check_commit_shape(request)
        # each result's hash and the proof of finality, off the loop
        await self._certifier.check(request.batch, origin, results=request.results)
        store = self._store
        outcome = await self._writer.submit(
            lambda: store.commit_batch(request, voted), kind="commit"
        )
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        if not outcome.already_committed:
            metrics.BATCH_VERTICES.observe(outcome.vertices)
            metrics.BATCH_BYTES.observe(outcome.bytes)
        self.refresh_gauges()
        return storage_pb2.CommitBatchResponse(
            last_seq=outcome.last_seq,
            already_committed=outcome.already_committed,
            heights=outcome.heights,
        )

    @_unary
    async def WriteState(
        self, request: storage_pb2.WriteStateRequest, context: Context
    ) -> storage_pb2.WriteStateResponse:
        check_write_state(request)
        store = self._store
        await self._writer.submit(lambda: store.write_state(request), kind="state")
        return storage_pb2.WriteStateResponse()

    @_unary
    async def AppendEvidence(
        self, request: storage_pb2.AppendEvidenceRequest, context: Context
    ) -> storage_pb2.AppendEvidenceResponse:
        check_evidence(request)
        store = self._store
        evidence_id, duplicate = await self._writer.submit(
            lambda: store.append_evidence(request, now_ms=now_ms()), kind="evidence"
        )
        if not duplicate:
            log.warning(
                "evidence recorded",
                extra={
                    "fields": {
                        "id": evidence_id,
                        "offender": request.evidence.first.signer,
                        "kind": request.kind,
                    }
                },
            )
        self.refresh_gauges()
        return storage_pb2.AppendEvidenceResponse(id=evidence_id, duplicate=duplicate)

    @_unary
    async def Backup(
        self, request: storage_pb2.BackupRequest, context: Context
    ) -> storage_pb2.BackupResponse:
        if not request.path:
            raise InvalidArgument("path: missing")
        target = Path(request.path)
        if not target.is_absolute():
            raise InvalidArgument(f"path: {request.path!r} is not absolute")
        store = self._store
        started = time.perf_counter()
        info = await self._writer.submit(
            lambda: store.checkpoint(target), kind="backup", barrier=True
        )
        await asyncio.to_thread(write_backup_manifest, info, node=self._node, source=store.path)
        size = await asyncio.to_thread(dir_bytes, target)
        log.info(
            "backup written",
            extra={
                "fields": {
                    "path": str(target),
                    "last_seq": info.last_seq,
                    "bytes": size,
                    "ms": round((time.perf_counter() - started) * 1e3, 1),
                }
            },
        )
        return storage_pb2.BackupResponse(
            path=str(target), last_seq=info.last_seq, vertices=info.vertices, size_bytes=size
        )

    # ------------------------------------------------------------------ point reads

    @_unary
    async def GetVertex(
        self, request: storage_pb2.GetVertexRequest, context: Context
    ) -> storage_pb2.GetVertexResponse:
        record = self._store.get_vertex(check_hash(request.hash, "hash"))
        if record is None:
            return storage_pb2.GetVertexResponse(found=False)
        return storage_pb2.GetVertexResponse(found=True, record=record)

    @_unary
    async def GetVertexStatuses(
        self, request: storage_pb2.GetVertexStatusesRequest, context: Context
    ) -> storage_pb2.GetVertexStatusesResponse:
        hashes = list(request.hashes)
        check_keys(hashes, "hashes")
        for i, h in enumerate(hashes):
            check_hash(h, f"hashes[{i}]")
        return storage_pb2.GetVertexStatusesResponse(records=self._store.vertex_statuses(hashes))

    @_unary
    async def GetStats(
        self, request: storage_pb2.GetStatsRequest, context: Context
    ) -> storage_pb2.StorageStats:
        stats = await asyncio.to_thread(self._store.stats)
        metrics.DB_BYTES.set(stats.disk_bytes)
        for cf in stats.column_families:
            metrics.KEYS.labels(cf.name).set(cf.estimated_keys)
        return stats

    # ------------------------------------------------------------------ streams

    async def ScanState(
        self, request: storage_pb2.ScanStateRequest, context: Context
    ) -> AsyncIterator[storage_pb2.ScanStateResponse]:
        # Pages of at most STATE_PAGE_ENTRIES entries and STATE_PAGE_BYTES of keys and
        # values (one larger entry goes alone): a message is never more than 1 MiB or one
        # record, however many large records the prefix holds (the node's channels take
        # 16 MiB). A short page is not the end; an empty one is.
        _check_state_bytes(request.prefix, "prefix")
        _check_state_bytes(request.after, "after")
        remaining = request.limit or None
        after = request.after or None
        while remaining is None or remaining > 0:
            page = min(remaining or STATE_PAGE_ENTRIES, STATE_PAGE_ENTRIES)
            entries = self._store.scan_state(request.prefix, after=after, limit=page)
            if not entries:
                break
            yield storage_pb2.ScanStateResponse(entries=entries)
            if remaining is not None:
                remaining -= len(entries)
            after = entries[-1].key

    async def ListParents(
        self, request: storage_pb2.ListParentsRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.VertexRecord]:
        h = check_hash(request.hash, "hash")
        records = self._store.parents(h, certificates=request.with_certificates)
        if records is None:
            raise NotFound(f"vertex {h.hex()} is not stored")
        for record in records:
            yield record

    async def ListChildren(
        self, request: storage_pb2.ListChildrenRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.VertexRecord]:
        h = check_hash(request.hash, "hash")
        after = check_optional_hash(request.after, "after")
        remaining = limit_of(request.limit)
        if not self._store.exists(h):
            raise NotFound(f"vertex {h.hex()} is not stored")
        while remaining > 0:
            page = min(remaining, PAGE)
            records = self._store.children(
                h, after=after, limit=page, certificates=request.with_certificates
            )
            for record in records[:remaining]:
                yield record
            remaining -= len(records)
            if len(records) < page:
                break
            after = records[-1].hash

    async def GetFinalized(
        self, request: storage_pb2.GetFinalizedRequest, context: Context
    ) -> AsyncIterator[storage_pb2.FinalizedEntry]:
        limit = limit_of(request.limit)
        first = max(request.from_seq, 1)
        last = self._store.published.last_seq
        if request.to_seq:
            if request.to_seq < first:
                raise InvalidArgument(f"to_seq {request.to_seq} is below from_seq {first}")
            last = min(last, request.to_seq - 1)
        for seq in range(first, min(last, first + limit - 1) + 1):
            entry = self._store.finalized_entry(seq, vertices=not request.omit_vertices)
            if entry is None:
                break
            yield entry

    async def _index_stream(
        self,
        read: Callable[..., tuple[list[vertex_pb2.VertexRecord], bytes | None]],
        start: bytes,
        end: bytes | None,
        limit: int,
        certificates: bool,
    ) -> AsyncIterator[vertex_pb2.VertexRecord]:
        remaining = limit
        cursor: bytes | None = start
        while remaining > 0 and cursor is not None and (end is None or cursor < end):
            records, cursor = read(
                start=cursor, end=end, limit=min(remaining, PAGE), certificates=certificates
            )
            for record in records[:remaining]:
                yield record
            remaining -= len(records)

    async def ListVerticesByHeight(
        self, request: storage_pb2.ListVerticesByHeightRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.VertexRecord]:
        limit = limit_of(request.limit)
        if request.to_height and request.to_height <= request.from_height:
            raise InvalidArgument("to_height must be greater than from_height (or 0: no bound)")
        start = keys.position_key(request.from_height, 0, 0)
        after = check_optional_hash(request.after, "after")
        if after is not None:
            start = max(start, self._store.height_cursor(after))
        end = keys.position_key(request.to_height, 0, 0) if request.to_height else None
        async for record in self._index_stream(
            self._store.by_height, start, end, limit, request.with_certificates
        ):
            yield record

    async def ListVerticesByTime(
        self, request: storage_pb2.ListVerticesByTimeRequest, context: Context
    ) -> AsyncIterator[vertex_pb2.VertexRecord]:
        limit = limit_of(request.limit)
        if request.to_ms and request.to_ms <= request.from_ms:
            raise InvalidArgument("to_ms must be greater than from_ms (or 0: no bound)")
        start = keys.position_key(request.from_ms, 0, 0)
        after = check_optional_hash(request.after, "after")
        if after is not None:
            start = max(start, self._store.time_cursor(after))
        end = keys.position_key(request.to_ms, 0, 0) if request.to_ms else None
        async for record in self._index_stream(
            self._store.by_time, start, end, limit, request.with_certificates
        ):
            yield record
