"""The signing mark's file: the highest view and seq this replica signed, outside storage.

Storage (RocksDB) holds the replica's signed messages, but storage can go back in
time: a restored backup, a database moved aside or reset. The mark, written here
before anything it covers is sent, outlives that; on start the replica compares
it with the records and, when the records are older, signs nothing at or below
it (``Replica``, docs/security.md). The file is tiny JSON, replaced atomically.

Never restore this file from a backup, nor delete it: an old or missing mark is
exactly what lets a rolled-back replica sign twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.consensus.core.durable import SigningMark


class MarkFileError(Exception):
    """The mark file exists but cannot be read or written; the message says what to do."""


class MarkFile:
    def __init__(self, path: Path) -> None:
        self.path = path

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
        """Replace the file with ``mark``, durably (write, fsync, rename, fsync the dir)."""
        directory = self.path.parent
        tmp = self.path.with_suffix(".tmp")
        body = json.dumps({"view": mark.view, "seq": mark.seq}).encode() + b"\n"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise MarkFileError(f"cannot write the signing mark {self.path}: {exc}") from None
