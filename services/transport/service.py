"""Build the transport service of one node from its config."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cretoai.config import ConfigError, NodeConfig
from cretoai.crypto import get_backend, load_private_key
from cretoai.serving import GrpcService
from services.transport.node import TransportNode
from services.transport.servicer import transport_servicer
from services.transport.settings import members_of, settings_from_config


async def build_node(cfg: NodeConfig) -> TransportNode:
    """The started :class:`TransportNode` (QUIC bound, dialing) for ``cfg``."""
    settings = settings_from_config(cfg)
    key = load_private_key(cfg.key_path, cfg.crypto.backend)
    expected = cfg.validators[cfg.replica_index].public_key_bytes
    if key.public_key != expected:
        raise ConfigError(
            f"{cfg.source}: the key {cfg.key_path} is not the public key listed for "
            f"node {cfg.node.name!r} in [[validators]]"
        )
    node = TransportNode(
        settings=settings,
        key=key,
        backend=get_backend(cfg.crypto.backend),
        members=members_of(cfg),
        self_name=cfg.node.name,
    )
    await node.start()
    return node


@dataclass(kw_only=True)
class TransportService(GrpcService):
    """The transport's GrpcService, and its QUIC node (for tests and benchmarks)."""

    transport: TransportNode


async def build(cfg: NodeConfig) -> TransportService:
    """The transport service for ``cfg``; its QUIC node is already bound and dialing."""
    # aioquic logs every handshake at INFO; our own lines say what matters.
    logging.getLogger("quic").setLevel(logging.WARNING)
    node = await build_node(cfg)
    return TransportService.for_node(
        cfg,
        "transport",
        servicers=[transport_servicer(node)],
        max_message_bytes=max(16 * 1024 * 1024, 2 * cfg.transport.max_frame_bytes),
        cleanup=[node.stop],
        transport=node,
    )
