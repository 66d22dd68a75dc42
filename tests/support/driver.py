"""A consensus driver that is not started, around a real replica with real ML-DSA-87 keys.

Tests apply its inputs as the replica task would; its storage and transport targets are
never called (the channel connects lazily, to a port nothing listens on).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import grpc

from cretoai.crypto.backend import PrivateKey, get_backend
from services.consensus.core.config import Config
from services.consensus.core.crypto import MlDsaSigner, MlDsaVerifier
from services.consensus.core.quorum import weak_quorum_size
from services.consensus.core.replica import Replica
from services.consensus.driver import Driver, StorageClient
from services.consensus.feed import FinalizedFeed
from services.consensus.verify import Verifier
from services.consensus.vouches import Vouches

NOWHERE = "127.0.0.1:9"


def unstarted_driver(
    config: Config,
    *,
    tick_ms: int,
    clock: Callable[[], float] = time.monotonic,
    pending_max_bytes: int | None = None,
    vouches: bool = False,
    keys: Sequence[PrivateKey] | None = None,
) -> Driver:
    """A driver for replica ``config.replica_id`` of ``config.n``, each with a fresh key.

    There is no storage behind it, so its replica does not start as a fresh one that
    asks its peers for its view floor: that writes a record with its first Ready, and
    carrying such a Ready out here would retry the write for ever."""
    config = replace(config, fresh_start_asks_peers=False)
    backend = get_backend("auto")
    if keys is None:
        keys = [backend.private_key_from_seed(os.urandom(32)) for _ in range(config.n)]
    public = [key.public_key for key in keys]
    replica = Replica(
        config,
        signer=MlDsaSigner(keys[config.replica_id]),
        verifier=MlDsaVerifier(public, backend),
    )
    storage = StorageClient(grpc.aio.insecure_channel(NOWHERE))
    return Driver(
        replica=replica,
        public_keys=public,
        storage=storage,
        transport_target=NOWHERE,
        verifier=Verifier(
            backend,
            threads=1,
            vouches=Vouches(config.n, adopt_at=weak_quorum_size(config.n)) if vouches else None,
        ),
        feed=FinalizedFeed(storage),
        tick_ms=tick_ms,
        pending_max=100,
        pending_max_bytes=pending_max_bytes,
        clock=clock,
    )
