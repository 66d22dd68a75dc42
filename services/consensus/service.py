"""Wiring of the consensus service: restore the replica from storage, start its driver."""

from __future__ import annotations

import logging
import math

from cretoai.channels import service_channel, service_endpoint
from cretoai.config import ConfigError, NodeConfig
from cretoai.crypto import get_backend, load_private_key
from cretoai.crypto.keys import node_id
from cretoai.serving import GrpcService, Servicer
from cretoai.v1 import consensus_pb2, consensus_pb2_grpc, storage_pb2, storage_pb2_grpc
from services.consensus.byzantine import Byzantine
from services.consensus.core import quorum
from services.consensus.core.config import Config
from services.consensus.core.crypto import MlDsaSigner, MlDsaVerifier
from services.consensus.core.durable import ExecutedState
from services.consensus.core.replica import Replica
from services.consensus.driver import Driver, StorageClient
from services.consensus.feed import FinalizedFeed
from services.consensus.mark import MarkFile, MarkFileError
from services.consensus.retry import call_until_done
from services.consensus.servicer import ConsensusServicer
from services.consensus.verify import Verifier
from services.consensus.vouches import VOUCH_CONTEXT, Vouches

log = logging.getLogger(__name__)

SERVICE_NAME = consensus_pb2.DESCRIPTOR.services_by_name["Consensus"].full_name


#: Room for signatures, certificates and framing beside the request bytes of a message.
FRAME_MARGIN_BYTES = 262_144


def core_config(cfg: NodeConfig) -> Config:
    """The replica's parameters: durations in ms become ticks of ``tick_ms``."""
    c = cfg.consensus

    def ticks(ms: int) -> int:
        return max(1, math.ceil(ms / c.tick_ms))

    return Config(
        n=len(cfg.validators),
        replica_id=cfg.replica_index,
        batch_max_count=c.batch_max_count,
        batch_max_bytes=c.batch_max_bytes,
        batch_timeout=ticks(c.batch_timeout_ms),
        max_inflight=c.max_inflight_batches,
        max_inflight_full=c.max_inflight_full_batches,
        checkpoint_interval=c.checkpoint_interval,
        watermark_window=cfg.watermark_window,
        view_change_timeout=ticks(c.view_change_timeout_ms),
        request_timeout=ticks(c.request_timeout_ms),
        progress_timeout=ticks(c.progress_timeout_ms),
        admission_max_wait=min(
            ticks(c.admission_max_wait_ms or c.request_timeout_ms // 4),
            ticks(c.request_timeout_ms) - 1,
        )
        or None,
        status_interval=ticks(c.status_interval_ms),
        status_quiet_intervals=c.status_quiet_intervals,
        pool_max=c.pool_max,
        pool_max_bytes=c.pool_max_bytes,
        # two batches per transfer message, within the transport's frame limit
        transfer_max_bytes=max(
            1, min(2 * c.batch_max_bytes, cfg.transport.max_frame_bytes - FRAME_MARGIN_BYTES)
        ),
        reputation_threshold=c.reputation_threshold,
    )


async def load_records(storage: storage_pb2_grpc.StorageStub) -> dict[str, bytes]:
    """Every durable record the replica persisted (its consensus state)."""
    records: dict[str, bytes] = {}
    after = b""
    while True:
        page = 0
        request = storage_pb2.ScanStateRequest(prefix=b"", after=after, limit=1000)
        async for chunk in storage.ScanState(request, timeout=60):
            for entry in chunk.entries:
                records[entry.key.decode()] = entry.value
                after = entry.key
                page += 1
        if page < 1000:
            return records


def check_storage_owner(stats: storage_pb2.StorageStats, cfg: NodeConfig) -> None:
    """Refuse to run over a storage service whose database belongs to another node or
    another validator set than this config's (ConfigError naming both).

    Storage checks its stamp against its own config when it opens the database, but
    each service reads the config when it starts: a node.toml edited while the node
    ran (validators reordered, replaced, added) and then a restart of consensus alone
    ran the replica under another set than its storage's."""
    key = node_id(cfg.validator_public_keys[cfg.replica_index])[:32]
    if stats.owner_key and stats.owner_key != key:
        raise ConfigError(
            f"{cfg.source}: the storage service's database ({stats.path}) belongs to "
            f"{stats.owner_node} (key {stats.owner_key[:16]}), not to this node's key "
            f"({cfg.node.name}, {key[:16]}): every service of a node runs with its config"
        )
    validator_set = cfg.validator_set_digest[:32]
    if stats.owner_validator_set and stats.owner_validator_set != validator_set:
        raise ConfigError(
            f"{cfg.source}: lists a validator set (digest {validator_set[:16]}, "
            f"{len(cfg.validators)} keys) other than the one the storage service's database "
            f"was written under ({stats.owner_validator_set[:16]}): was [[validators]] "
            "edited while the node ran? Every service of a node must run with the same "
            "config: put the cluster's validator list back, or restart the whole node"
        )


async def load_executed(
    storage: storage_pb2_grpc.StorageStub, stats: storage_pb2.StorageStats
) -> ExecutedState:
    """The last executed seq and the state digest after it (from the finalized log)."""
    if stats.last_seq == 0:
        return ExecutedState()
    request = storage_pb2.GetFinalizedRequest(
        from_seq=stats.last_seq, to_seq=stats.last_seq + 1, limit=1, omit_vertices=True
    )
    async for entry in storage.GetFinalized(request, timeout=30):
        if not entry.batch.state_digest:
            raise ConfigError(f"storage: batch {stats.last_seq} has no state digest")
        return ExecutedState(seq=stats.last_seq, state_digest=entry.batch.state_digest)
    raise ConfigError(f"storage: last_seq {stats.last_seq} has no finalized entry")


async def build(cfg: NodeConfig) -> GrpcService:
    """The consensus service for ``cfg``: the replica restored from storage (waits for
    storage to answer), its driver started."""
    key = load_private_key(cfg.key_path, cfg.crypto.backend)
    index = cfg.replica_index
    if key.public_key != cfg.validator_public_keys[index]:
        raise ConfigError(
            f"{cfg.source}: {cfg.key_path} is not the key of validators[{index}] ({cfg.node.name})"
        )
    backend = get_backend(cfg.crypto.backend)
    storage_target, tls = service_endpoint(cfg, "storage")
    storage_channel = service_channel(storage_target, tls=tls)
    storage = StorageClient(storage_channel)
    log.info("restoring from storage", extra={"fields": {"storage": storage_target}})
    stats = await call_until_done(
        lambda: storage.GetStats(storage_pb2.GetStatsRequest(), timeout=30), what="storage stats"
    )
    check_storage_owner(stats, cfg)
    records = await call_until_done(lambda: load_records(storage), what="load records")
    executed = await call_until_done(lambda: load_executed(storage, stats), what="load executed")
    mark_file = MarkFile(cfg.signing_mark_path)
    try:
        mark_file.acquire()
        signing_mark = mark_file.load()
    except MarkFileError as exc:
        raise ConfigError(str(exc)) from None
    signer = MlDsaSigner(key.private)
    private = key.private

    def sign_vouch(message: bytes) -> bytes:
        return private.sign(message, context=VOUCH_CONTEXT)

    byzantine = None
    if cfg.fault_injection.enabled and cfg.fault_injection.byzantine:
        byzantine = Byzantine(
            cfg.fault_injection.byzantine,
            replica_id=index,
            n=len(cfg.validators),
            signer=signer,
            vouch_signer=sign_vouch,
        )
        log.warning("BYZANTINE TEST MODE", extra={"fields": {"mode": byzantine.mode}})
    replica = Replica(
        core_config(cfg),
        signer=signer,
        verifier=MlDsaVerifier(cfg.validator_public_keys, backend),
        records=records,
        executed=executed,
        signing_mark=signing_mark,
    )
    if signing_mark is None and records:
        # records of a replica that has run, and no mark: deleted (or a new volume for
        # it). Safe while the records are whole (they hold what was signed, and the mark
        # is written again from them); it is what lets an old copy of the records sign
        # twice, so say so.
        log.warning(
            "the signing mark is missing but storage holds this replica's records "
            "(deleted, or its volume replaced?); writing it again from the records. Never "
            "delete it: with records restored from an older copy it is what stops this "
            "replica signing twice",
            extra={"fields": {"mark_file": str(mark_file.path), "storage_seq": executed.seq}},
        )
    if replica.signing_floor is not None:
        floor = replica.signing_floor
        log.warning(
            "storage is older than what this replica signed (restored backup or reset "
            "database?): it signs nothing at or below the signing floor and rejoins by "
            "state transfer",
            extra={
                "fields": {
                    "floor_view": floor.view,
                    "floor_seq": floor.seq,
                    "storage_seq": executed.seq,
                    "mark_file": str(mark_file.path),
                }
            },
        )
    log.info(
        "replica restored",
        extra={
            "fields": {
                "view": replica.view,
                "seq": replica.last_executed,
                "stable": replica.stable_seq,
                "records": len(records),
            }
        },
    )
    n = len(cfg.validators)
    vouches = (
        Vouches(
            n,
            adopt_at=quorum.weak_quorum_size(n),
            per_member=cfg.consensus.pool_max,
            min_copies=cfg.consensus.vouch_min_copies,
        )
        if cfg.consensus.vouch
        else None
    )
    verifier = Verifier(backend, threads=cfg.consensus.verify_threads, vouches=vouches)
    driver = Driver(
        replica=replica,
        public_keys=cfg.validator_public_keys,
        storage=storage,
        transport_target=service_endpoint(cfg, "transport")[0],
        tls=tls,
        verifier=verifier,
        feed=FinalizedFeed(storage),
        tick_ms=cfg.consensus.tick_ms,
        pending_max=2 * cfg.consensus.pool_max,
        executed=executed,
        mark_file=mark_file,
        byzantine=byzantine,
        vouch_signer=sign_vouch if cfg.consensus.vouch else None,
        peer_names=[v.name for v in cfg.validators],
        cross_check_recent=cfg.consensus.cross_check_recent,
    )
    servicer = ConsensusServicer(cfg, driver, storage)
    driver.start()

    async def cleanup() -> None:
        await driver.stop()
        mark_file.close()
        verifier.close()
        await storage_channel.close()

    service = GrpcService.for_node(
        cfg,
        "consensus",
        servicers=[
            Servicer(
                name=SERVICE_NAME,
                register=lambda server: consensus_pb2_grpc.add_ConsensusServicer_to_server(
                    servicer, server
                ),
            )
        ],
        cleanup=[cleanup],
    )
    driver.on_fatal = service.fail
    return service
