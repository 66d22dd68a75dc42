"""Build the gateway of one node: backend channels, the finality hub, HTTP and gRPC APIs.

Startup: channels to consensus, storage and transport (for health), the one
``WatchFinalized`` subscription, the HTTP site on ``gateway.http``; the
returned :class:`GatewayService` (a :class:`GrpcService`) then serves the
public gRPC API on ``gateway.grpc``. Shutdown (the GrpcService's order): not serving → gRPC drain
→ cleanup here (waiters and subscribers told, HTTP stopped, channels closed,
crypto pool shut down) → telemetry flushed.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cretoai.channels import internal_channel
from cretoai.config import ConfigError, NodeConfig
from cretoai.crypto import NodeKey, get_backend, load_private_key
from cretoai.crypto.backend import Backend
from cretoai.serving import (
    PLUMBING_PER_CLIENT,
    ArrivalInterceptor,
    GrpcService,
    PerClientLimitInterceptor,
    Servicer,
    ensure_open_files,
)
from services.gateway import grpc_api, metrics
from services.gateway.backends import ConsensusClient, StorageClient
from services.gateway.connections import RESERVED_FDS
from services.gateway.core import Gateway, Limits
from services.gateway.finality import FinalityHub
from services.gateway.grpc_api import SERVICE_NAME, GatewayServicer, client_address
from services.gateway.rest import RestApi

log = logging.getLogger(__name__)

#: Threads that sign unsigned vertices with the submitter key (signing releases the GIL).
CRYPTO_THREADS = 2


def submitter_key(cfg: NodeConfig, backend: Backend) -> NodeKey | None:
    """The key unsigned submissions are signed with, or None when they are turned off.

    The gateway is the node's public process: it never loads the validator key, and a
    submitter key that is a validator's is refused.
    """
    path = cfg.submitter_key_path
    if path is None:
        return None
    key = load_private_key(path, backend)
    if key.public_key in cfg.validator_public_keys:
        raise ConfigError(
            f"{cfg.source}: gateway.submitter_key {path} is a validator key; the gateway "
            "must not hold one (make a key of its own: cretoai-node keygen)"
        )
    return key


@dataclass(kw_only=True)
class GatewayService(GrpcService):
    """The gateway's GrpcService, its HTTP API (already listening) and its core."""

    rest: RestApi
    gateway: Gateway

    @property
    def http_port(self) -> int:
        return self.rest.port


async def build(cfg: NodeConfig) -> GatewayService:
    """The gateway for ``cfg`` with its HTTP site listening (KeyFileError, OSError); its
    cleanup stops the HTTP site."""
    needed = 2 * cfg.gateway.max_connections + RESERVED_FDS  # HTTP and gRPC listeners
    open_files = ensure_open_files(needed)
    if open_files < needed:
        log.warning(
            "the open files limit is below what gateway.max_connections needs: a flood of "
            "connections can use up the gateway's file descriptors",
            extra={"fields": {"limit": open_files, "needed": needed}},
        )
    backend = get_backend(cfg.crypto.backend)
    key = submitter_key(cfg, backend)
    pool = ThreadPoolExecutor(max_workers=CRYPTO_THREADS, thread_name_prefix="gateway-crypto")
    channels = {
        name: internal_channel(cfg, name, tls=cfg.gateway_tls)
        for name in ("consensus", "transport", "storage")
    }
    if cfg.tls.ca and not cfg.tls.gateway_cert:
        log.warning(
            "no tls.gateway_cert: the gateway presents the services' certificate, which "
            "every internal service obeys in full (cretoai-node cluster init --reuse-keys "
            "issues the gateway its own; docs/security.md)"
        )
    consensus = ConsensusClient(channels["consensus"])
    storage = StorageClient(channels["storage"])
    hub = FinalityHub(
        consensus,
        storage,
        buffer_bytes=cfg.gateway.stream_buffer_bytes,
        max_streams=cfg.gateway.max_streams,
        max_streams_per_client=cfg.gateway.max_streams_per_client,
    )
    gateway = Gateway(
        key=key,
        consensus=consensus,
        storage=storage,
        hub=hub,
        pool=pool,
        limits=Limits(
            max_payload_bytes=cfg.gateway.max_payload_bytes,
            wait_timeout_s=cfg.gateway.wait_timeout_ms / 1000,
            max_in_progress=cfg.gateway.max_submissions_in_progress,
            client_vertices_per_s=cfg.gateway.client_vertices_per_s,
            client_burst_vertices=cfg.gateway.client_burst_vertices,
            max_request_bytes=cfg.gateway.max_request_bytes_in_progress,
            max_answer_bytes=cfg.gateway.max_answer_bytes_in_progress,
        ),
        probes=channels,
    )
    rest = RestApi(
        gateway,
        max_body_bytes=cfg.gateway.max_body_bytes,
        max_connections=cfg.gateway.max_connections,
        max_connections_per_client=cfg.gateway.max_connections_per_client,
        idle_timeout_s=cfg.gateway.idle_timeout_ms / 1000,
        body_timeout_s=cfg.gateway.body_timeout_ms / 1000,
        sampling_ratio=cfg.telemetry.sampling_ratio,
        allowed_origins=cfg.gateway.allowed_origins,
    )

    async def cleanup() -> None:
        await gateway.admission.close()
        await gateway.close()
        await hub.close()
        await rest.stop()
        for channel in channels.values():
            await channel.close()
        pool.shutdown(wait=False, cancel_futures=True)

    servicer = GatewayServicer(gateway)
    # public (cretoai.registry): the client API; it calls the internal services with TLS
    service = GatewayService.for_node(
        cfg,
        "gateway",
        servicers=[
            Servicer(
                name=SERVICE_NAME,
                register=lambda server: grpc_api.register(servicer, server),
            )
        ],
        cleanup=[cleanup],
        # gRPC reads a whole request before the handler: the API's largest, and a bounded
        # number at once, so anonymous callers hold at most their product.
        max_receive_bytes=rest.max_batch_body,
        # the application calls' bound is the interceptor's (shared fairly between
        # clients); gRPC's own leaves room for health checks and calls being ended
        max_concurrent_rpcs=cfg.gateway.grpc_max_concurrent_rpcs * 3 // 2 + PLUMBING_PER_CLIENT,
        interceptors=[
            PerClientLimitInterceptor(
                min(
                    cfg.gateway.grpc_max_concurrent_rpcs_per_client,
                    cfg.gateway.grpc_max_concurrent_rpcs,
                ),
                client_address,
                setting="gateway.grpc_max_concurrent_rpcs_per_client",
                on_refused=metrics.GRPC_CALLS_REFUSED.labels("per_client").inc,
                total=cfg.gateway.grpc_max_concurrent_rpcs,
                total_setting="gateway.grpc_max_concurrent_rpcs",
                on_refused_total=metrics.GRPC_CALLS_REFUSED.labels("total").inc,
                on_evicted=metrics.GRPC_CALLS_EVICTED.inc,
            ),
            # last: the handlers above run when a call arrives, not once its message has
            ArrivalInterceptor(cfg.gateway.body_timeout_ms / 1000),
        ],
        max_connections=cfg.gateway.max_connections,
        # room for one client's calls (application and plumbing) on one connection, and
        # one more, to be told RESOURCE_EXHAUSTED rather than wait for a stream
        max_streams_per_connection=cfg.gateway.grpc_max_concurrent_rpcs_per_client
        + PLUMBING_PER_CLIENT
        + 1,
        idle_timeout_ms=cfg.gateway.idle_timeout_ms,
        rest=rest,
        gateway=gateway,
    )
    try:
        await rest.start(cfg.gateway.http)
    except OSError:
        for channel in channels.values():
            await channel.close()
        pool.shutdown(wait=False)
        raise
    hub.start()
    gateway.admission.start()
    return service
