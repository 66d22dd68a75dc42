"""Files another local user must not be able to plant, swap or redirect.

A node's keys, TLS material, configs and signing mark decide who it trusts and what it
signs. A directory another user owns or can write lets that user replace any of them (a
CA of their own, a stale signing mark) or plant a symlink at a name the node writes to,
so the node overwrites a file of the link's choosing. So: files the node writes are
created under a fresh random name, exclusively and never through a symlink, then renamed
into place; and the files and directories it trusts must belong to the user it runs as
and be writable by nobody else.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a new file beside it (created with O_EXCL and
    O_NOFOLLOW under a random name, so nothing planted at a predictable name is followed),
    synced, given ``mode`` and renamed over ``path`` (a link at ``path`` is replaced, not
    followed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def foreign_problem(path: Path, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` (a file or directory the node trusts) could have been planted or
    swapped by another local user; None when it cannot: it belongs to the user this
    process runs as (or to root) and neither group nor others may write it."""
    st = os.stat(path) if st is None else st
    if st.st_uid not in (os.geteuid(), 0):
        return f"belongs to uid {st.st_uid}, not to uid {os.geteuid()} that runs the node"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_directories(directories: list[Path]) -> str | None:
    """The first problem of :func:`foreign_problem` among those of ``directories`` that
    exist, as "<path> <problem>"; None when there is none."""
    for directory in directories:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue
        problem = foreign_problem(directory, st)
        if problem is not None:
            return f"{directory} {problem}"
    return None
