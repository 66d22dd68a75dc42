"""The signing mark's file: the highest view and seq this replica signed, outside storage.

Storage (RocksDB) holds the replica's signed messages, but storage can go back in
time: a restored backup, a database moved aside or reset. The mark, written here
before anything it covers is sent, outlives that; on start the replica compares
it with the records and, when the records are older, signs nothing at or below
it (``Replica``, docs/security.md). The file is one small JSON object, padded to a
fixed size and rewritten in place (one block, one sync).

Never restore this file from a backup, nor delete it: an old or missing mark is
exactly what lets a rolled-back replica sign twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from prometheus_client import Histogram

from cretoai.files import foreign_problem
from services.consensus.core.durable import SigningMark

log = logging.getLogger(__name__)

MARK_SYNC = Histogram(
    "cretoai_consensus_mark_sync_seconds",
    "One durable write of the signing mark (pwrite + fdatasync)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)


class MarkFileError(Exception):
    """The mark file exists but cannot be read or written; the message says what to do."""


#: The file's size: one JSON object padded with spaces (and a newline) to this many bytes.
RECORD_BYTES = 128


class MarkFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock_fd: int | None = None
        #: The last mark written (written again at :meth:`close` if the file went away).
        self._last: SigningMark | None = None

    def acquire(self) -> None:
        """Hold the mark for this process (an exclusive lock on a file beside it, kept
        until :meth:`close` or exit). Two consensus processes on one data directory (two
        nodes configured with the same ``data_dir``, say) would overwrite each other's
        mark, which is what keeps a rolled-back replica from signing twice."""
        lock = self.path.with_name(self.path.name + ".lock")
        if not lock.parent.parent.is_dir():
            # as storage: a missing data directory is a volume not mounted or a wrong
            # path, where a new mark would let this key sign a second history
            raise MarkFileError(
                f"the data directory {lock.parent.parent} does not exist (a volume not "
                "mounted, or a wrong data_dir?): consensus creates its signing mark only "
                f"inside an existing one. For a new node: mkdir -m 700 {lock.parent.parent}"
            )
        try:
            lock.parent.mkdir(exist_ok=True, mode=0o700)
            foreign = foreign_problem(lock.parent)
            if foreign is not None:  # another user could swap or remove the mark
                raise MarkFileError(
                    f"the signing mark's directory {lock.parent} {foreign}: only the node's "
                    "user may write it"
                )
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise MarkFileError(f"cannot lock the signing mark {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MarkFileError(
                f"the signing mark {self.path} is in use by another consensus process: two "
                f"nodes (or two consensus processes of one node) share the data directory "
                f"{self.path.parent.parent}; each node needs its own node.data_dir"
            ) from None
        self._lock_fd = fd

    def load(self) -> SigningMark | None:
        """The stored mark; None when there is no file yet (a new replica)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MarkFileError(f"cannot read the signing mark {self.path}: {exc}") from None
        try:
            data = json.loads(text)
            view, seq = data["view"], data["seq"]
            if not (isinstance(view, int) and isinstance(seq, int) and view >= 0 and seq >= 0):
                raise ValueError("view and seq must be non-negative integers")
        except (ValueError, KeyError, TypeError) as exc:
            raise MarkFileError(
                f"the signing mark {self.path} is damaged ({exc}); it must say the highest "
                "view and seq this replica signed. If you cannot restore it, write a view and "
                "seq at or above the cluster's current ones (see cretoai-node status on a "
                "peer), so the replica rejoins without signing below them"
            ) from None
        return SigningMark(view, seq)

    def store(self, mark: SigningMark) -> None:
        """Write ``mark`` durably: one in-place write of one block, then one fdatasync.

        The record is padded to :data:`RECORD_BYTES` (well inside one disk sector, so
        the write is all or nothing); the file is created (and its directory synced)
        once. One sync per new mark keeps the cost on the signing path low.
        """
        body = json.dumps({"view": mark.view, "seq": mark.seq}).encode()
        record = body.ljust(RECORD_BYTES - 1) + b"\n"
        try:
            if self._fd is not None and not self._is_the_file():
                # deleted or replaced while we run: writing on to the old inode would leave
                # no mark (or someone else's) for the next start, which would then sign again
                log.error(
                    "the signing mark was deleted or replaced while consensus runs; "
                    "writing it again (never delete or restore it)",
                    extra={"fields": {"path": str(self.path), "view": mark.view, "seq": mark.seq}},
                )
                os.close(self._fd)
                self._fd = None
                with contextlib.suppress(FileNotFoundError):  # made anew, the node's own
                    self.path.unlink()
            if self._fd is None:
                self._open()
            assert self._fd is not None
            with MARK_SYNC.time():
                os.pwrite(self._fd, record, 0)
                os.fdatasync(self._fd)
        except OSError as exc:
            raise MarkFileError(f"cannot write the signing mark {self.path}: {exc}") from None
        self._last = mark

    def _is_the_file(self) -> bool:
        """Whether the open descriptor is still the file at :attr:`path`."""
        assert self._fd is not None
        try:
            at_path = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        ours = os.fstat(self._fd)
        return (at_path.st_dev, at_path.st_ino) == (ours.st_dev, ours.st_ino)

    def _open(self) -> None:
        directory = self.path.parent
        directory.mkdir(exist_ok=True, mode=0o700)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if created:
            os.ftruncate(fd, RECORD_BYTES)
            os.fsync(fd)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        elif os.fstat(fd).st_size != RECORD_BYTES:  # e.g. written by hand: rewrite whole
            os.ftruncate(fd, RECORD_BYTES)
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None and self._last is not None and not self._is_the_file():
            with contextlib.suppress(MarkFileError):  # logged by store; closing goes on
                self.store(self._last)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
