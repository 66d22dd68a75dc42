"""``cretoai-node backup`` and ``cretoai-node restore`` (mounted by cretoai/cli.py).

A failure prints one ``error: ...`` line and returns 1; a bad config raises
ConfigError, which the CLI reports with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cretoai.config import load_config
from services.storage.backup import BackupError, backup, restore


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
    try:
        info = restore(cfg, Path(args.source), force=bool(args.force))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(info)
    return 0
