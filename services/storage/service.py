"""Build the storage service of one node: open the database, start the writer, serve."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from grpc_health.v1 import health_pb2

from cretoai.allocator import fix_mmap_threshold
from cretoai.config import NodeConfig
from cretoai.crypto import get_backend
from cretoai.serving import GrpcService, Servicer
from cretoai.v1 import storage_pb2_grpc
from services.storage import metrics
from services.storage.certify import Certifier
from services.storage.options import (
    MIB,
    MMAP_THRESHOLD_BYTES,
    TRIM_THRESHOLD_BYTES,
    MemoryBudget,
)
from services.storage.servicer import SERVICE_NAME, StorageServicer
from services.storage.store import Owner, Store
from services.storage.writer import Writer

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 10.0
#: The largest request: a batch of up to consensus.batch_max_bytes plus certificates.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def refresh_gauges(store: Store, servicer: StorageServicer, interval: float) -> None:
    while True:
        servicer.refresh_gauges()
        try:
            size = await asyncio.to_thread(store.disk_bytes)
            metrics.DB_BYTES.set(size)
        except OSError as exc:
            log.warning("cannot measure the database size", extra={"fields": {"error": str(exc)}})
        await asyncio.sleep(interval)


async def build(cfg: NodeConfig) -> GrpcService:
    """The storage service for ``cfg`` (raises :class:`DatabaseError`, an OSError, at start)."""
    # before RocksDB allocates: its memtables' arena blocks then leave with each flush
    if fix_mmap_threshold(MMAP_THRESHOLD_BYTES, trim_threshold=TRIM_THRESHOLD_BYTES):
        log.info(
            "glibc mmap and trim thresholds fixed",
            extra={"fields": {"bytes": MMAP_THRESHOLD_BYTES, "trim_bytes": TRIM_THRESHOLD_BYTES}},
        )
    budget = MemoryBudget(
        memtables_bytes=cfg.storage.memtables_mb * MIB,
        block_cache_bytes=cfg.storage.block_cache_mb * MIB,
    )
    store = await asyncio.to_thread(
        functools.partial(Store.open, cfg.storage_path, owner=Owner.of_node(cfg), budget=budget)
    )
    metrics.MEMORY_BUDGET_BYTES.labels("memtables").set(budget.memtables_bytes)
    metrics.MEMORY_BUDGET_BYTES.labels("block_cache").set(budget.block_cache_bytes)
    writer = Writer(store)
    writer.start()
    service: GrpcService | None = None

    async def halted() -> None:
        if service is not None:
            for name in ("", SERVICE_NAME):
                await service.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    loop = asyncio.get_running_loop()
    damage_said = False

    def damaged(message: str) -> None:
        """A read met damaged data (any thread): counted, said once, and the service no
        longer serving: its database must be restored or moved aside."""
        nonlocal damage_said
        metrics.DAMAGED_READS.inc()
        if not damage_said:
            damage_said = True
            log.error("damaged data read", extra={"fields": {"error": message}})
            loop.call_soon_threadsafe(lambda: loop.create_task(halted()))

    store.on_damage = damaged

    # a finalized batch is stored only with a certificate of this validator set
    certifier = Certifier(cfg.validator_public_keys, get_backend(cfg.crypto.backend))
    servicer = StorageServicer(
        store, writer, certifier=certifier, node=cfg.node.name, on_halt=halted
    )
    tasks = [
        asyncio.create_task(
            refresh_gauges(store, servicer, GAUGE_INTERVAL_S), name="storage-gauges"
        ),
    ]

    async def cleanup() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await writer.stop()
        certifier.close()
        await asyncio.to_thread(store.close)

    service = GrpcService.for_node(
        cfg,
        "storage",
        servicers=[
            Servicer(
                name=SERVICE_NAME,
                register=lambda server: storage_pb2_grpc.add_StorageServicer_to_server(
                    servicer, server
                ),
            )
        ],
        max_message_bytes=MAX_MESSAGE_BYTES,
        cleanup=[cleanup],
    )
    return service
