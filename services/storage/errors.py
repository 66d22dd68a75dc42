"""Storage errors.

Two families:

* Failed requests: the shared :mod:`cretoai.errors` classes (each is one gRPC
  status, turned into the call's status by :mod:`cretoai.serving`), re-exported
  here, and storage's own subclasses of them below: a fault of this node's disk
  (:class:`WriteFailed`, :class:`DiskFull`, :class:`BackupFailed`) and writes
  refused (:class:`Halted`, :class:`ShuttingDown`).
* :class:`DatabaseError` — the database cannot be opened at all (locked by
  another process, corrupt, written by a newer version). Raised at startup; it
  is an :class:`OSError` so that the shared entry point prints it as one line
  and exits non-zero.
"""

from __future__ import annotations

import grpc

from cretoai.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)

__all__ = [
    "REMEDY",
    "AlreadyExists",
    "BackupFailed",
    "DatabaseCorrupt",
    "DatabaseDamaged",
    "DatabaseError",
    "DatabaseLocked",
    "DatabaseOfAnotherCluster",
    "DatabaseOfAnotherNode",
    "DiskFull",
    "FailedPrecondition",
    "Halted",
    "InvalidArgument",
    "NotFound",
    "ReadFailed",
    "ServiceError",
    "ShuttingDown",
    "WriteFailed",
    "is_damage",
    "write_error",
]


#: What an operator can do about a damaged database (in every such error).
REMEDY = (
    "restore it from a backup (cretoai-node restore --from DIR --force) or move the directory "
    "aside to start with an empty database (the node then rejoins the cluster by state transfer)"
)


def is_damage(message: str) -> bool:
    """Whether a RocksDB error says the data on disk is damaged (a checksum mismatch, a
    corrupt block), as opposed to the disk refusing a write."""
    return "corruption" in message.lower()


class WriteFailed(Internal):
    """RocksDB or the disk failed a write. The store halts writes afterwards."""


class DatabaseDamaged(WriteFailed):
    """A write (a compaction, a lookup it needed) met damaged data: restarting does not
    help, the database must be restored or rebuilt."""

    STATUS = grpc.StatusCode.DATA_LOSS


class DiskFull(WriteFailed):
    STATUS = grpc.StatusCode.RESOURCE_EXHAUSTED


class ReadFailed(Internal):
    """A read met damaged data (a table block that fails its checksum): never a shorter
    answer. DATA_LOSS: restore the node from a backup or let it catch up from peers."""

    STATUS = grpc.StatusCode.DATA_LOSS


class BackupFailed(Internal):
    """A checkpoint could not be written (the target, not the database, is at fault)."""


class Halted(Unavailable):
    """Writes are refused after an earlier write error, until the service restarts."""


class ShuttingDown(Unavailable):
    pass


def write_error(message: str) -> WriteFailed:
    """The right :class:`WriteFailed` for a RocksDB/OS error message."""
    lowered = message.lower()
    if "no space left" in lowered or "enospc" in lowered or "disk quota" in lowered:
        return DiskFull(f"disk full: {message}")
    if is_damage(message):
        return DatabaseDamaged(f"the database is damaged: {message}")
    return WriteFailed(f"write failed: {message}")


class DatabaseError(OSError):
    """The database cannot be opened; the message names the path and what to do."""


class DatabaseLocked(DatabaseError):
    pass


class DatabaseCorrupt(DatabaseError):
    pass


class DatabaseOfAnotherCluster(DatabaseError):
    """The database was written under another validator set (list, order or keys)."""


class DatabaseOfAnotherNode(DatabaseError):
    """The database was written by another validator (copied from its node): the names
    and key fingerprints of the one it belongs to (``stamped_*``) and of this node."""

    def __init__(
        self, message: str, *, stamped_node: str, stamped_key: str, node: str, key: str
    ) -> None:
        super().__init__(message)
        self.stamped_node, self.stamped_key = stamped_node, stamped_key
        self.node, self.key = node, key
