"""``cretoai-node backup``, ``restore``, ``verify`` and ``evidence`` (mounted by node/cli.py).

A failure prints one ``error: ...`` line and returns 1; a bad config raises
ConfigError, which the CLI reports with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cretoai.config import NodeConfig, load_config
from cretoai.v1 import storage_pb2
from services.consensus.core.durable import CorruptState, evidence_key, parse_records
from services.consensus.core.messages import Message, Signed
from services.storage.backup import BackupError, backup, exclusive, progress_printer, restore
from services.storage.errors import REMEDY, DatabaseCorrupt, DatabaseError, DatabaseLocked
from services.storage.store import Owner, Store, inspect, verify


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


def _describe(signed: Signed[Message]) -> str:
    msg = signed.msg
    where = ", ".join(f"{f} {getattr(msg, f)}" for f in ("view", "seq") if hasattr(msg, f))
    return f"{type(msg).__name__} ({where})" if where else type(msg).__name__


def held_evidence(store: Store) -> dict[int, str]:
    """Validator index -> what its equivocation evidence in the consensus records shows
    (read as the replica reads its records, :func:`parse_records`)."""
    prefix = evidence_key(0).encode().rpartition(b"/")[0] + b"/"
    entries: list[storage_pb2.StateEntry] = []
    while page := store.scan_state(prefix, after=entries[-1].key if entries else None, limit=64):
        entries += page
    held: dict[int, str] = {}
    for entry in entries:
        key = entry.key.decode()
        try:
            (signer, evidence), *_ = parse_records({key: entry.value}).evidence.items()
        except (CorruptState, ValueError):  # the replica drops an unproven record at start
            held[int(key.rpartition("/")[2])] = "left an unreadable record"
            continue
        first, second = _describe(evidence.first), _describe(evidence.second)
        held[signer] = f"signed two conflicting messages: {first} and {second}"
    return held


def evidence_command(args: argparse.Namespace) -> int:
    """``evidence --config F [--forgive NAME]``: the validators this node's consensus bans
    for equivocation; ``--forgive`` lifts one ban (the storage service must be stopped).

    A ban by evidence outlives restarts, and with no way to lift it the cluster ran one
    fault short for good, whatever the cause (an audit, 2026-12-04: a whole data directory
    restored on a primary, or two instances of one node, equivocate). Forgiving removes
    the ban record from this node's consensus records only; storage's evidence log (appended
    when the evidence was found) keeps what happened."""
    cfg = load_config(args.config)
    names = [v.name for v in cfg.validators]
    forgive: str | None = args.forgive
    if forgive is not None and forgive not in names:
        print(
            f"error: {forgive} is not a validator of this cluster ({', '.join(names)})",
            file=sys.stderr,
        )
        return 1
    try:
        store = Store.open(
            cfg.storage_path, create=False, read_only=forgive is None, owner=Owner.of_node(cfg)
        )
    except DatabaseLocked as exc:
        print(
            f"error: {exc}. Stop this node's services first (cretoai-node start, or cluster "
            "up, stops them on Ctrl-C): consensus holds its bans in memory while it runs",
            file=sys.stderr,
        )
        return 1
    except DatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        held = held_evidence(store)

        def name(i: int) -> str:
            return names[i] if 0 <= i < len(names) else f"validator #{i} (not in this config)"

        if forgive is None:
            if not held:
                print(f"{cfg.node.name} bans no validator for equivocation")
            for i, what in sorted(held.items()):
                print(f"{name(i)}: banned for equivocation; it {what}")
            return 0
        index = names.index(forgive)
        if index not in held:
            print(
                f"{cfg.node.name} holds no equivocation evidence against {forgive}: nothing to do"
            )
            return 0
        store.write_state(storage_pb2.WriteStateRequest(deletes=[evidence_key(index).encode()]))
        store.sync()
    finally:
        store.close()
    print(
        f"{cfg.node.name} forgave {forgive} (it {held[index]}): its consensus no longer bans "
        f"{forgive} once it starts again. Storage's evidence log keeps the record. Do the same on "
        "every node: a node that still holds the evidence goes on banning it. Forgive only "
        f"once the cause is gone (a second process running {forgive}'s key, a data directory "
        "restored whole): a key that signs conflicting messages again is banned again"
    )
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """``verify --config F [--path DIR]``: read every block of the node's database (or of
    the database or backup at DIR) and check its checksum; the storage service must be
    stopped (a live database changes under a reader; ``backup`` verifies what it writes)."""
    cfg = load_config(args.config)
    path = Path(args.path).absolute() if args.path else cfg.storage_path
    started = time.monotonic()
    try:
        with exclusive(path, "verifying it (or verify a backup: backup checks every block)"):
            info, keys_read = verify(path, progress_printer(f"verifying {path}"))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DatabaseCorrupt as exc:
        remedy = f"; {REMEDY}" if path == cfg.storage_path else ""
        print(f"error: {exc}{remedy}", file=sys.stderr)
        return 1
    except DatabaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{path}: intact, every block's checksum verified ({keys_read:,} keys in "
        f"{time.monotonic() - started:.1f}s): last_seq {info.last_seq}, "
        f"{info.vertices} vertices"
    )
    return 0
