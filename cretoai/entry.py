"""The ``__main__`` of every service: ``python -m services.NAME --config FILE``.

Loads the node config (clear one-line errors, exit 2), sets up logs, builds the
service's :class:`~cretoai.serving.GrpcService` and runs it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable

from cretoai.allocator import fix_mmap_threshold, trim_heap_every
from cretoai.config import ConfigError, NodeConfig, load_config
from cretoai.crypto import KeyFileError
from cretoai.logs import setup_logging
from cretoai.serving import SERVICE_OPEN_FILES, GrpcService, ServiceFailed, ensure_open_files

Builder = Callable[[NodeConfig], Awaitable[GrpcService]]

log = logging.getLogger(__name__)


def _log_crypto_backend(cfg: NodeConfig) -> None:
    """Say which ML-DSA-87 backend this process uses (liboqs or cryptography), and why."""
    from cretoai.crypto import BackendUnavailable, get_backend
    from cretoai.crypto.backend import available_backends

    requested = cfg.crypto.backend
    try:
        backend = get_backend(requested).name
    except BackendUnavailable as exc:  # the service reports it when it loads its key
        reason = {"requested": requested, "reason": str(exc)}
        log.warning("crypto backend unavailable", extra={"fields": reason})
        return
    fields = {"backend": backend, "requested": requested}
    if requested == "auto" and "oqs" not in available_backends():
        fields["reason"] = "liboqs not installed"
    log.info("crypto backend", extra={"fields": fields})


#: Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def _settle_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a started service.

    Profiles of a loaded cluster showed CPython's collector taking a quarter to half of
    a service's CPU: every full collection walked the hundreds of thousands of objects
    the imports (gRPC, protobuf, OpenTelemetry) and the start-up made, none of which is
    ever garbage. They are frozen (moved to a generation the collector skips), and young
    collections run every :data:`GC_YOUNG_THRESHOLD` allocations instead of 700. Cycles
    made later are still collected.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run_service(
    name: str, build: Builder, argv: list[str] | None = None, *, mmap_threshold: int = 0
) -> int:
    """Run service ``name`` until SIGTERM/SIGINT; its exit code. ``mmap_threshold``: fix
    glibc's mmap threshold at that many bytes before the service is built (0: glibc's
    dynamic threshold; an operator's ``MALLOC_MMAP_THRESHOLD_`` wins either way)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{name}", description=f"Run the {name} service of one node."
    )
    parser.add_argument("--config", required=True, help="the node's TOML config file")
    args = parser.parse_args(argv)
    # What a service creates (the database, backups, the signing mark's directory) is
    # for the node's user and group, not for every user of the host.
    os.umask(0o027)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(
        service=name,
        node=cfg.node.name,
        level=cfg.telemetry.log_level,
        log_format=cfg.telemetry.log_format,
    )
    _log_crypto_backend(cfg)
    if mmap_threshold and fix_mmap_threshold(mmap_threshold):
        log.info("glibc mmap threshold fixed", extra={"fields": {"bytes": mmap_threshold}})
    # the usual soft limit (1,024) was as many idle connections to a port away from a
    # service that can open no file (storage then halts its writes)
    ensure_open_files(SERVICE_OPEN_FILES)
    if not cfg.tls.ca and name != "gateway":
        log.warning(
            "no [tls] in the config: this internal service speaks plaintext on loopback, and "
            "any local process can call it (cluster init writes [tls]; docs/security.md)"
        )

    async def main() -> None:
        service = await build(cfg)
        _settle_gc()
        trimmer = asyncio.create_task(trim_heap_every(), name="malloc-trim")
        try:
            await service.run()
        finally:
            trimmer.cancel()

    try:
        asyncio.run(main())
    except (ConfigError, KeyFileError, OSError) as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ServiceFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. a storage error while consensus restores its state
        log.critical("failed", exc_info=True)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {name} failed: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    return 0
