"""``cretoai-node backup`` and ``cretoai-node restore`` (mounted by node/cli.py).

A failure prints one ``error: ...`` line and returns 1; a bad config raises
ConfigError, which the CLI reports with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cretoai.config import NodeConfig, load_config
from services.storage.backup import BackupError, backup, restore
from services.storage.errors import DatabaseError
from services.storage.store import inspect


def backup_command(args: argparse.Namespace) -> int:
    """``backup --config F --output DIR``: through the running service, else offline."""
    cfg = load_config(args.config)
    try:
        info = backup(cfg, Path(args.output))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(info)
    return 0


def restore_command(args: argparse.Namespace) -> int:
    """``restore --config F --from DIR [--force]``: the storage service must be stopped."""
    cfg = load_config(args.config)
    alone = single_node_rollback(cfg, Path(args.source))
    if alone is not None:
        print(f"error: {alone}", file=sys.stderr)
        return 1
    try:
        info = restore(cfg, Path(args.source), force=bool(args.force))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(info)
    print(signing_mark_notice(cfg.signing_mark_path, info.last_seq))
    return 0


def single_node_rollback(cfg: NodeConfig, source: Path) -> str | None:
    """Why restoring ``source`` would stop a single-node cluster for good, if it would.

    A replica restored behind its signing mark signs nothing at or below the mark and
    fetches the seqs above the backup from its peers; a node alone has none, so it
    never finalized again (found by an audit, 2026-12-04: ``restore`` said it would
    "fetch them from its peers", and the node stayed in a view change for good)."""
    if len(cfg.validators) != 1:
        return None
    try:
        mark = json.loads(cfg.signing_mark_path.read_text())
        signed = int(mark["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no mark (or unreadable): restore and its notice say what follows
    try:
        last_seq = inspect(source).last_seq
    except DatabaseError:
        return None  # not a backup: restore says so
    if signed <= last_seq:
        return None
    return (
        f"this single-node cluster signed up to seq {signed} ({cfg.signing_mark_path}), "
        f"and the backup {source} ends at seq {last_seq}: a node alone has no peers to "
        f"fetch seqs {last_seq + 1}..{signed} from, and it signs nothing at or below its "
        "mark, so it would never finalize again. Nothing was changed. Restore a backup "
        f"that reaches seq {signed}; a single node cannot roll back its finalized history "
        "(clients may hold certificates for those seqs)"
    )


def signing_mark_notice(path: Path, last_seq: int) -> str:
    """What the node's consensus replica will do with the restored (older) database."""
    try:
        mark = json.loads(path.read_text())
        view, seq = int(mark["view"]), int(mark["seq"])
    except FileNotFoundError:
        return (
            f"no signing mark at {path}: this node's consensus never signed anything here, "
            "or the file was lost; if the replica did sign before, nothing stops it from "
            "signing a conflicting message now (see docs/security.md)"
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the signing mark {path} is unreadable ({exc}); consensus will refuse to start"
    if seq <= last_seq:
        return f"signing mark {path}: view {view}, seq {seq} (the database covers it)"
    return (
        f"this node's consensus signed up to view {view}, seq {seq} ({path}); the restored "
        f"database ends at seq {last_seq}. On start the replica signs nothing at or below "
        f"that mark (so it cannot contradict what it sent before the restore), fetches "
        f"seqs {last_seq + 1}..{seq} and later from its peers by state transfer, and votes "
        f"again above seq {seq}. Keep {path}: never delete it or restore it from a backup."
    )
