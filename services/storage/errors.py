"""Storage errors, and the one place that maps them to gRPC status codes.

Two families:

* :class:`StorageError` — a request that cannot be carried out (the caller's
  mistake, or a fault of this node's disk). Each subclass has one gRPC status
  code; :func:`status_of` is the only mapping.
* :class:`DatabaseError` — the database cannot be opened at all (locked by
  another process, corrupt, written by a newer version). Raised at startup; it
  is an :class:`OSError` so that the shared entry point prints it as one line
  and exits non-zero.
"""

from __future__ import annotations

import grpc


class StorageError(Exception):
    """A request failed; ``code`` is its gRPC status."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(StorageError):
    """A malformed request: wrong lengths, missing fields, limits exceeded."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(StorageError):
    """Well-formed but not applicable now (a seq gap; results contradicting what is stored)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(StorageError):
    """The target already holds something different (a seq, a backup directory)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(StorageError):
    code = grpc.StatusCode.NOT_FOUND


class WriteFailed(StorageError):
    """RocksDB or the disk failed a write. The store halts writes afterwards."""

    code = grpc.StatusCode.INTERNAL


class DiskFull(WriteFailed):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackupFailed(StorageError):
    """A checkpoint could not be written (the target, not the database, is at fault)."""

    code = grpc.StatusCode.INTERNAL


class Halted(StorageError):
    """Writes are refused after an earlier write error, until the service restarts."""

    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(StorageError):
    code = grpc.StatusCode.UNAVAILABLE


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for an exception raised while serving a call."""
    if isinstance(exc, StorageError):
        return exc.code, str(exc)
    if isinstance(exc, DatabaseError):  # e.g. corruption found while reading
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def write_error(message: str) -> WriteFailed:
    """The right :class:`WriteFailed` for a RocksDB/OS error message."""
    lowered = message.lower()
    if "no space left" in lowered or "enospc" in lowered or "disk quota" in lowered:
        return DiskFull(f"disk full: {message}")
    return WriteFailed(f"write failed: {message}")


class DatabaseError(OSError):
    """The database cannot be opened; the message names the path and what to do."""


class DatabaseLocked(DatabaseError):
    pass


class DatabaseCorrupt(DatabaseError):
    pass
