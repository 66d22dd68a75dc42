"""Backup and restore of a node's database (RocksDB checkpoints).

* :func:`backup_via_service` asks the running storage service for a checkpoint
  (consistent, taken while it serves); :func:`backup_offline` opens the database
  itself when the service is stopped; :func:`backup` tries the first, then the
  second.
* :func:`restore` replaces the node's database with a copy of a backup. It
  refuses while the database is in use, and refuses to replace an existing
  database without ``force``; the previous database is kept aside
  (``<db>.before-restore-<time>``), never deleted.

A backup directory is a RocksDB database plus ``CRETOAI-BACKUP.json``. A node
restored from an older backup starts from that backup's last seq and catches
up by state transfer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from cretoai.channels import blocking_channel, service_endpoint
from cretoai.config import NodeConfig
from cretoai.v1 import storage_pb2, storage_pb2_grpc
from services.storage.errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseOfAnotherNode,
)
from services.storage.store import (
    BACKUP_MANIFEST,
    Owner,
    Store,
    dir_bytes,
    inspect,
    open_in_this_process,
    verify,
    write_backup_manifest,
)
from services.storage.synced import MARK_FILE

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
BACKUP_TIMEOUT_S = 600.0


class BackupError(Exception):
    """A backup or restore failed; the message says why and what to do."""


class ServiceUnavailable(BackupError):
    """The storage service does not answer at its configured address."""


@dataclass(frozen=True, kw_only=True)
class BackupInfo:
    path: Path
    last_seq: int
    vertices: int
    size_bytes: int

    def __str__(self) -> str:
        return (
            f"backup written to {self.path}: last_seq {self.last_seq}, "
            f"{self.vertices} vertices, {self.size_bytes} bytes"
        )


@dataclass(frozen=True, kw_only=True)
class RestoreInfo:
    path: Path
    source: Path
    last_seq: int
    vertices: int
    #: Where the database that was replaced now lives (None: there was none).
    previous: Path | None

    def __str__(self) -> str:
        kept = f"; the previous database is kept at {self.previous}" if self.previous else ""
        return (
            f"restored {self.source} into {self.path}: last_seq {self.last_seq}, "
            f"{self.vertices} vertices{kept}"
        )


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def progress_printer(what: str) -> Callable[[int], None]:
    """A :meth:`Store.verify` progress callback that says on stderr how far ``what`` is."""

    def say(keys_read: int) -> None:
        print(f"  {what}: {keys_read:,} keys read…", file=sys.stderr, flush=True)

    return say


def _verify(path: Path, last_seq: int) -> None:
    """The backup opens, every block of it reads back (checksums), and it holds what the
    service said it holds."""
    try:
        info, _ = verify(path, progress_printer(f"verifying {path}"))
    except DatabaseCorrupt as exc:
        raise BackupError(
            f"the backup at {path} is damaged, and so most likely is the node's database it "
            f"was taken from (check it: cretoai-node verify --config FILE): {exc}"
        ) from None
    except DatabaseError as exc:
        raise BackupError(f"the backup at {path} does not open: {exc}") from None
    if info.last_seq != last_seq:
        raise BackupError(
            f"the backup at {path} holds last_seq {info.last_seq}, expected {last_seq}"
        )


def backup_via_service(cfg: NodeConfig, output: Path) -> BackupInfo:
    """Ask the node's running storage service to write a checkpoint into ``output`` (new dir)."""
    target = _absolute(output)
    address, tls = service_endpoint(cfg, "storage")
    with blocking_channel(address, tls=tls) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise ServiceUnavailable(
                f"the storage service of {cfg.node.name} does not answer at {address}"
            ) from None
        stub = storage_pb2_grpc.StorageStub(channel)
        try:
            reply = stub.Backup(
                storage_pb2.BackupRequest(path=str(target)), timeout=BACKUP_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            raise BackupError(f"backup failed: {exc.code().name}: {exc.details()}") from None
    info = BackupInfo(
        path=Path(reply.path),
        last_seq=reply.last_seq,
        vertices=reply.vertices,
        size_bytes=reply.size_bytes,
    )
    if info.path.is_dir():  # the service may run on another host (a container)
        _verify(info.path, info.last_seq)
    return info


def backup_offline(cfg: NodeConfig, output: Path) -> BackupInfo:
    """Write a checkpoint of the node's database while its storage service is stopped."""
    target = _absolute(output)
    if target.exists():
        raise BackupError(f"{target} already exists; a backup goes into a new directory")
    try:
        store = Store.open(cfg.storage_path, create=False, owner=Owner.of_node(cfg))
    except DatabaseLocked as exc:
        raise BackupError(
            f"{exc}. While the storage service runs, back up through it "
            "(cretoai-node backup reaches it at [storage] listen)"
        ) from None
    except DatabaseError as exc:
        raise BackupError(str(exc)) from None
    try:
        info = store.checkpoint(target)
    except Exception as exc:
        raise BackupError(f"backup into {target} failed: {exc}") from None
    finally:
        store.close()
    write_backup_manifest(info, node=cfg.node.name, source=cfg.storage_path)
    _verify(target, info.last_seq)
    return BackupInfo(
        path=target, last_seq=info.last_seq, vertices=info.vertices, size_bytes=dir_bytes(target)
    )


def backup(cfg: NodeConfig, output: Path) -> BackupInfo:
    """Through the running service when it answers, else offline."""
    try:
        return backup_via_service(cfg, output)
    except ServiceUnavailable as exc:
        log.info("backing up offline", extra={"fields": {"reason": str(exc)}})
        return backup_offline(cfg, output)


@contextlib.contextmanager
def exclusive(db: Path, doing: str = "restoring") -> Iterator[None]:
    """Hold the database's RocksDB LOCK (fcntl) so no storage service opens it meanwhile;
    :class:`BackupError` when one has it open, saying to stop it before ``doing``."""
    if open_in_this_process(db):
        raise BackupError(f"the database at {db} is in use (open in this process)")
    lock_file = db / "LOCK"
    if not lock_file.exists():
        yield
        return
    fd = os.open(lock_file, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BackupError(
                f"the database at {db} is in use (its RocksDB LOCK is held): "
                f"stop the node's storage service before {doing}"
            ) from None
        yield
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in (*dirs, "."):
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_same_node(cfg: NodeConfig, source: Path) -> None:
    """Refuse another node's backup: its consensus records are what *that* node signed,
    and this one would load them as its own. (A backup without a manifest, copied by
    hand, is taken as it is.)"""
    try:
        manifest = json.loads((source / BACKUP_MANIFEST).read_text())
    except (OSError, ValueError):
        return
    node = manifest.get("node") if isinstance(manifest, dict) else None
    if isinstance(node, str) and node and node != cfg.node.name:
        raise BackupError(
            f"{source} is a backup of {node}; this node is {cfg.node.name}. A node's "
            "consensus records are its own: restore one of its own backups, or start it "
            "with an empty database to catch up from its peers; nothing was changed"
        )


def _check_same_owner(cfg: NodeConfig, source: Path) -> None:
    """Refuse a database another validator wrote, whatever its manifest says (a copied
    data directory has none; a manifest is a file anyone can edit): the stamp is inside
    the database, written by the storage service of the node it belongs to."""
    try:
        Store.open(source, create=False, read_only=True, owner=Owner.of_node(cfg)).close()
    except DatabaseOfAnotherNode as exc:
        raise BackupError(
            f"{source} holds the database of {exc.stamped_node} (validator key "
            f"{exc.stamped_key}); this node is {exc.node} (key {exc.key}). A node's "
            "consensus records are what that node signed; restore a backup of this node, "
            "or start it with an empty database to catch up by state transfer. Nothing "
            "was changed"
        ) from None
    except DatabaseError as exc:
        raise BackupError(f"{source} is not a usable backup: {exc}") from None


def _check_certified_here(cfg: NodeConfig, source: Path, last_seq: int) -> None:
    """Refuse a backup whose finalized batches this node's validator set did not certify:
    another cluster's, or this one's from before its keys changed. Its certificates would
    not verify for any client, and the node would build on a history that is not its
    cluster's. The first and the last batch are checked (a quorum of COMMITs each)."""
    if last_seq == 0:
        return
    from cretoai.crypto import get_backend
    from services.consensus.core.certificate import InvalidCertificate, check_certificate
    from services.consensus.core.crypto import MlDsaVerifier

    verifier = MlDsaVerifier(cfg.validator_public_keys, get_backend(cfg.crypto.backend))
    store = Store.open(source, create=False, read_only=True)
    try:
        for seq in sorted({1, last_seq}):
            entry = store.finalized_entry(seq, vertices=False)
            if entry is None:
                raise BackupError(f"{source}: finalized batch {seq} is missing")
            try:
                check_certificate(entry.batch.certificate, n=len(cfg.validators), verifier=verifier)
            except InvalidCertificate as exc:
                raise BackupError(
                    f"{source}: finalized batch {seq} is not certified by this node's "
                    f"validator set ({exc}): a backup of another cluster, or of this one "
                    "under other keys; nothing was changed"
                ) from None
    except DatabaseError as exc:
        raise BackupError(f"{source} is not a usable backup: {exc}") from None
    finally:
        store.close()


def restore(cfg: NodeConfig, source: Path, *, force: bool) -> RestoreInfo:
    """Replace the node's database with a copy of the backup ``source``."""
    source = _absolute(source)
    target = cfg.storage_path
    if not source.is_dir():
        raise BackupError(f"{source}: no such backup directory")
    if source == target:
        raise BackupError(f"{source} is the node's database itself")
    try:
        wanted, _ = verify(source, progress_printer(f"verifying {source}"))
    except DatabaseError as exc:
        raise BackupError(f"{source} is not a usable backup: {exc}; nothing was changed") from None
    _check_same_node(cfg, source)
    _check_same_owner(cfg, source)
    _check_certified_here(cfg, source, wanted.last_seq)
    has_db = target.exists() and any(target.iterdir())
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    aside = target.with_name(f"{target.name}.before-restore-{stamp}")
    with exclusive(target) if target.is_dir() else contextlib.nullcontext():
        if has_db and not force:
            try:
                current = f"last_seq {inspect(target).last_seq}"
            except DatabaseError:
                current = "unreadable"
            raise BackupError(
                f"{target} already holds a database ({current}); pass --force to replace it "
                "(it is kept aside, not deleted)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.restoring-{stamp}")
        try:
            # a copy's synced mark speaks for the directory it came from, not for this one
            ignore = shutil.ignore_patterns(MARK_FILE)
            shutil.copytree(source, staging, symlinks=False, ignore=ignore)
            _fsync_tree(staging)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise BackupError(f"cannot copy {source} to {staging}: {exc}") from None
        previous = None
        if target.exists():
            os.rename(target, aside)
            previous = aside
        try:
            os.rename(staging, target)
        except OSError as exc:
            if previous is not None:
                os.rename(previous, target)
            raise BackupError(f"cannot move the restored database into {target}: {exc}") from None
        _fsync_dir(target.parent)
    try:
        restored = inspect(target)
    except DatabaseError as exc:
        raise BackupError(f"the restored database at {target} does not open: {exc}") from None
    if restored.last_seq != wanted.last_seq:  # pragma: no cover - a copy that changed under us
        raise BackupError(
            f"the restored database holds last_seq {restored.last_seq}, "
            f"the backup {wanted.last_seq}"
        )
    log.warning(
        "database restored",
        extra={
            "fields": {
                "path": str(target),
                "source": str(source),
                "last_seq": restored.last_seq,
                "previous": str(previous or ""),
            }
        },
    )
    return RestoreInfo(
        path=target,
        source=source,
        last_seq=restored.last_seq,
        vertices=restored.vertices,
        previous=previous,
    )


__all__ = [
    "BackupError",
    "BackupInfo",
    "RestoreInfo",
    "ServiceUnavailable",
    "backup",
    "backup_offline",
    "backup_via_service",
    "restore",
]
