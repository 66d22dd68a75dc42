"""The synced mark: what the storage service last made durable, kept beside the database.

RocksDB's *point in time* WAL recovery (``options.py``) replays the write-ahead log up
to its first damaged record and opens what came before, without an error: one bad byte
in the middle of the WAL silently takes every synced write after it. The stricter
recovery modes cannot be used with the recycled WAL files the sync latency relies on
(docs/storage.md). So the service keeps its own record instead: every write carries a
count (``StoredCounters.writes``), and after each WAL sync the count just made durable
is written to ``CRETOAI-SYNCED`` in the database directory (in place, not synced: the
file only ever says less than the WAL holds, never more). An open that finds the
database *behind* its mark refuses it (:class:`DatabaseCorrupt`): writes that were
acknowledged are gone, and the node must not go on as if they never were.

The mark names the database it belongs to (RocksDB's ``IDENTITY``); a mark of another
database, a torn one (a crash while it was written) or none at all checks nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARK_FILE = "CRETOAI-SYNCED"
_MAGIC = b"cretoai-synced\x00\x01"
#: magic, writes, last_seq, identity (RocksDB's IDENTITY, a UUID), CRC32 of the rest.
_RECORD = struct.Struct(">16sQQ64s")
_CRC = struct.Struct(">I")
SIZE = _RECORD.size + _CRC.size


@dataclass(frozen=True)
class SyncedMark:
    """Write ``writes`` (at ``last_seq``) of the database ``identity`` was synced."""

    writes: int
    last_seq: int
    identity: bytes

    def to_bytes(self) -> bytes:
        body = _RECORD.pack(_MAGIC, self.writes, self.last_seq, self.identity)
        return body + _CRC.pack(zlib.crc32(body))


def identity_of(path: Path) -> bytes:
    """RocksDB's IDENTITY of the database at ``path`` (b"" when it has none)."""
    try:
        return (path / "IDENTITY").read_bytes().strip()[:64]
    except OSError:
        return b""


def read_mark(path: Path, *, strict: bool = False) -> SyncedMark | None:
    """The mark in the database directory ``path``; None when missing or unreadable.
    ``strict`` (the storage service's own open): a mark the file system refuses to read
    raises the OSError, which would otherwise turn the check off without a word but a
    warning (a storage audit, 2026-12-04: a mark at mode 000 or 0400)."""
    try:
        raw = (path / MARK_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if strict:
            raise
        fields = {"path": str(path), "error": str(exc)}
        log.warning("cannot read the synced mark; not checked", extra={"fields": fields})
        return None
    body = raw[: _RECORD.size]
    if (
        len(raw) != SIZE
        or _CRC.unpack(raw[_RECORD.size :])[0] != zlib.crc32(body)
        or not body.startswith(_MAGIC)
    ):
        # a crash while it was rewritten: nothing to compare with, say so
        fields = {"path": str(path)}
        log.warning("the synced mark is unreadable; not checked", extra={"fields": fields})
        return None
    _, writes, last_seq, identity = _RECORD.unpack(body)
    return SyncedMark(writes, last_seq, identity.rstrip(b"\x00"))


class MarkWriter:
    """Rewrites the mark of one database in place (the writer thread's, after each sync)."""

    def __init__(self, path: Path, identity: bytes) -> None:
        self._path = path / MARK_FILE
        self._identity = identity
        self._fd: int | None = None
        self._failed = False

    def open(self) -> None:
        """Open the mark for writing now (the service's start): OSError when it cannot be,
        rather than a warning at the first write and no check at the next open."""
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, writes: int, last_seq: int) -> None:
        """Record that write ``writes`` is durable. Never raises: a mark that cannot be
        written keeps its older value, which only weakens the next open's check (logged
        once)."""
        if self._failed:
            return
        try:
            self.open()
            assert self._fd is not None
            os.pwrite(self._fd, SyncedMark(writes, last_seq, self._identity).to_bytes(), 0)
        except OSError as exc:
            self._failed = True
            self.close()
            log.warning(
                "cannot write the synced mark; the next open cannot tell lost synced writes",
                extra={"fields": {"path": str(self._path), "error": str(exc)}},
            )

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
