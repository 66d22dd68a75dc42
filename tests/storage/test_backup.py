"""Backup (RocksDB checkpoints, online and offline) and restore, through the RPC, the
functions the CLI mounts, and the CLI itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from cretoai.config import load_config, parse_config
from cretoai.crypto import get_backend
from cretoai.v1 import storage_pb2
from devkit.ports import free_tcp_port
from devkit.storage import ServiceProcess, config_dict, make_config, write_config
from services.consensus.core.durable import SigningMark
from services.consensus.mark import MarkFile
from services.storage import backup as backup_module
from services.storage import keys
from services.storage.backup import (
    BackupError,
    backup,
    backup_offline,
    backup_via_service,
    restore,
)
from services.storage.errors import DatabaseCorrupt
from services.storage.store import BACKUP_MANIFEST, Owner, Store, inspect
from services.storage.store import verify as verify_database
from tests.conftest import cli
from tests.storage.support import (
    REPO,
    Dag,
    RawDb,
    Running,
    collect,
    damage_a_table_block,
    snapshot,
    start_service,
    write_flushed_state,
)
from tests.storage.test_commit import expect, stats


def check_whole(db: Path, last_seq: int) -> None:
    """The database holds exactly the whole batches 1..last_seq."""
    from services.storage import keys

    with RawDb(db, read_only=True) as raw:
        seqs = [keys.read_u64(k) for k, _ in raw.items(keys.FINALIZED)]
        assert seqs == list(range(1, last_seq + 1))
        expected = sum(
            len(storage_pb2.StoredBatch.FromString(v).results) for _, v in raw.items(keys.FINALIZED)
        )
        assert len(raw.items(keys.METADATA)) == expected
        assert len(raw.items(keys.INDEX_HEIGHT)) == expected


async def test_backup_rpc_while_commits_go_on(tmp_path: Path, running: Running) -> None:
    dag = Dag(payload_size=1024)
    for _ in range(5):
        await running.stub.CommitBatch(dag.next_batch(50))

    async def keep_committing() -> int:
        for _ in range(20):
            await running.stub.CommitBatch(dag.next_batch(50))
        return dag.seq

    writer = asyncio.create_task(keep_committing())
    target = tmp_path / "backups" / "one"
    reply = await running.stub.Backup(storage_pb2.BackupRequest(path=str(target)))
    assert await writer == 25
    assert 5 <= reply.last_seq <= 25
    assert reply.path == str(target)
    assert reply.vertices == reply.last_seq * 50
    assert reply.size_bytes > reply.vertices * 5000
    info = inspect(target)
    assert (info.last_seq, info.vertices) == (reply.last_seq, reply.vertices)
    check_whole(target, reply.last_seq)
    manifest = json.loads((target / BACKUP_MANIFEST).read_text())
    assert manifest["last_seq"] == reply.last_seq and manifest["node"] == "node1"
    assert manifest["source"] == str(running.cfg.storage_path)
    # the live database went on
    assert (await stats(running)).last_seq == 25

    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        running.stub.Backup(storage_pb2.BackupRequest(path=str(target))),
        "already exists",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.Backup(storage_pb2.BackupRequest(path="relative/dir")),
        "is not absolute",
    )
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        running.stub.Backup(storage_pb2.BackupRequest()),
        "path: missing",
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    await expect(
        grpc.StatusCode.INTERNAL,
        running.stub.Backup(storage_pb2.BackupRequest(path=str(blocker / "backup"))),
        f"backup into {blocker / 'backup'} failed",
    )
    # a failed backup is not a database write error: writes go on
    assert not (await stats(running)).halted
    await running.stub.CommitBatch(dag.next_batch(1))


async def fill(running: Running, dag: Dag, batches: int) -> list[storage_pb2.CommitBatchRequest]:
    requests = [dag.next_batch(10) for _ in range(batches)]
    for request in requests:
        await running.stub.CommitBatch(request)
    return requests


async def backup_of_a_node(tmp_path: Path, *, batches: int) -> Path:
    """``batches`` finalized batches on a node of their own (under ``tmp_path/source``),
    backed up by its running service into ``tmp_path/b<batches>``."""
    running = await start_service(make_config(tmp_path / "source"))
    try:
        await fill(running, Dag(), batches)
        path = tmp_path / f"b{batches}"
        await running.stub.Backup(storage_pb2.BackupRequest(path=str(path)))
    finally:
        await running.stop()
    return path


async def test_backup_functions_online_offline_and_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, port=free_tcp_port())
    dag = Dag()
    running = await start_service(cfg)
    try:
        await fill(running, dag, 4)
        online = await asyncio.to_thread(backup_via_service, cfg, tmp_path / "online")
        assert (online.last_seq, online.vertices, online.path) == (4, 40, tmp_path / "online")
        assert "last_seq 4, 40 vertices" in str(online)
        with pytest.raises(BackupError, match="is in use"):
            backup_offline(cfg, tmp_path / "offline")
        assert not (tmp_path / "offline").exists()
        with pytest.raises(BackupError, match="already exists"):
            await asyncio.to_thread(backup_via_service, cfg, tmp_path / "online")
        await fill(running, dag, 1)
    finally:
        await running.stop()

    monkeypatch.setattr(backup_module, "CONNECT_TIMEOUT_S", 0.3)
    with pytest.raises(backup_module.ServiceUnavailable, match="does not answer"):
        backup_via_service(cfg, tmp_path / "unreachable")
    offline = backup_offline(cfg, tmp_path / "offline")
    assert (offline.last_seq, offline.vertices) == (5, 50)
    check_whole(tmp_path / "offline", 5)
    fallback = backup(cfg, tmp_path / "fallback")
    assert fallback.last_seq == 5
    with pytest.raises(BackupError, match="there is no database"):
        backup_offline(make_config(tmp_path / "other"), tmp_path / "nothing")


async def test_restore_round_trip_keeps_the_previous_database_and_catches_up(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path)
    dag = Dag()
    running = await start_service(cfg)
    try:
        early = await fill(running, dag, 5)
        await running.stub.Backup(storage_pb2.BackupRequest(path=str(tmp_path / "b5")))
        late = await fill(running, dag, 5)
    finally:
        await running.stop()

    with pytest.raises(BackupError, match="already holds a database \\(last_seq 10\\)"):
        restore(cfg, tmp_path / "b5", force=False)
    info = restore(cfg, tmp_path / "b5", force=True)
    assert (info.path, info.last_seq, info.vertices) == (cfg.storage_path, 5, 50)
    assert info.previous is not None and info.previous.name.startswith("db.before-restore-")
    assert inspect(info.previous).last_seq == 10  # kept, not deleted
    assert "the previous database is kept at" in str(info)

    running = await start_service(cfg)
    try:
        assert (await stats(running)).last_seq == 5
        entries = await collect(running.stub.GetFinalized(storage_pb2.GetFinalizedRequest()))
        assert [e.batch for e in entries] == [r.batch for r in early]
        gone = await running.stub.GetVertex(
            storage_pb2.GetVertexRequest(hash=late[0].results[0].hash)
        )
        assert not gone.found
        # catching up: the batches after the backup are executed again, in order
        for request in late:
            reply = await running.stub.CommitBatch(request)
            assert not reply.already_committed
        assert (await stats(running)).last_seq == 10
        with pytest.raises(BackupError, match="in use"):
            restore(cfg, tmp_path / "b5", force=True)
    finally:
        await running.stop()


async def test_restore_refuses_bad_sources_and_restores_into_an_empty_node(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path)
    with pytest.raises(BackupError, match="no such backup directory"):
        restore(cfg, tmp_path / "absent", force=False)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file").write_text("x")
    with pytest.raises(BackupError, match="is not a usable backup"):
        restore(cfg, junk, force=True)
    assert not cfg.storage_path.exists()

    await backup_of_a_node(tmp_path, batches=3)
    info = restore(cfg, tmp_path / "b3", force=False)
    assert (info.last_seq, info.previous) == (3, None)
    check_whole(cfg.storage_path, 3)
    # the backup itself is untouched by the restored node's writes
    running = await start_service(cfg)
    try:
        reply = await running.stub.CommitBatch(Dag(seq=3).next_batch(2))
        assert reply.last_seq == 4
    finally:
        await running.stop()
    assert inspect(tmp_path / "b3").last_seq == 3


async def test_restore_force_replaces_a_damaged_database_and_keeps_it_as_it_was(
    tmp_path: Path,
) -> None:
    """What the storage service's error advises for a database that lost its CURRENT."""
    cfg = make_config(tmp_path)
    running = await start_service(cfg)
    try:
        await fill(running, Dag(), 3)
        await running.stub.Backup(storage_pb2.BackupRequest(path=str(tmp_path / "b3")))
        await fill(running, Dag(seq=3), 2)
    finally:
        await running.stop()
    (cfg.storage_path / "CURRENT").unlink()
    damaged = snapshot(cfg.storage_path)
    with pytest.raises(BackupError, match="already holds a database \\(unreadable\\)"):
        restore(cfg, tmp_path / "b3", force=False)
    info = restore(cfg, tmp_path / "b3", force=True)
    assert info.last_seq == 3 and info.previous is not None
    assert snapshot(info.previous) == damaged  # kept aside exactly as it was
    check_whole(cfg.storage_path, 3)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
async def test_the_cli_backs_up_a_running_node_and_restores_a_stopped_one(
    tmp_path: Path,
) -> None:
    proc = ServiceProcess.create(tmp_path / "node")
    proc.spawn()
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            from cretoai.v1 import storage_pb2_grpc

            stub = storage_pb2_grpc.StorageStub(channel)
            dag = Dag()
            for _ in range(3):
                await stub.CommitBatch(dag.next_batch(5))
        out = tmp_path / "backup"
        done = await asyncio.to_thread(
            run_cli, "backup", "--config", str(proc.config), "--output", str(out)
        )
        assert done.returncode == 0, done.stderr
        assert f"backup written to {out}: last_seq 3, 15 vertices" in done.stdout
        refused = await asyncio.to_thread(
            run_cli, "restore", "--config", str(proc.config), "--from", str(out), "--force"
        )
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: the database at")
        assert "stop the node's storage service" in refused.stderr
    finally:
        assert proc.terminate() == 0
    exists = run_cli("restore", "--config", str(proc.config), "--from", str(out))
    assert exists.returncode == 1 and "pass --force" in exists.stderr
    restored = run_cli("restore", "--config", str(proc.config), "--from", str(out), "--force")
    assert restored.returncode == 0, restored.stderr
    assert "last_seq 3, 15 vertices" in restored.stdout
    again = run_cli("backup", "--config", str(proc.config), "--output", str(tmp_path / "b2"))
    assert again.returncode == 0 and "last_seq 3" in again.stdout  # offline this time
    bad = run_cli("backup", "--config", str(tmp_path / "missing.toml"), "--output", "x")
    assert bad.returncode == 2 and "config file not found" in bad.stderr


async def test_restore_refuses_a_backup_another_validator_set_certified(tmp_path: Path) -> None:
    """Another cluster's backup (or this one's under other keys) was restored without a
    word: the node then served certificates no client could verify, lost its own history
    and finalized on top of the foreign one. Its batches must be certified by this node's
    validator set; nothing is changed otherwise."""
    await backup_of_a_node(tmp_path, batches=3)
    raw = config_dict(tmp_path / "other")
    for validator in raw["validators"]:  # the same names and addresses, others' keys
        if validator["name"] == raw["node"]["name"]:
            continue  # this node's own key is the same (another key: test_..._of_another_node)
        key = get_backend("cryptography").private_key_from_seed(os.urandom(32))
        validator["public_key"] = key.public_key.hex()
    other = parse_config(raw, tmp_path / "other" / "node.toml")
    # the database's stamp names its validator set (since 2026-12-04): refused by it
    # before the certificates are checked
    with pytest.raises(BackupError, match=r"in a cluster of 4 validators .* this config lists 4"):
        restore(other, tmp_path / "b3", force=True)
    assert not other.storage_path.exists()  # nothing changed
    info = restore(make_config(tmp_path / "mine"), tmp_path / "b3", force=False)
    assert info.last_seq == 3  # this validator set's own backup is restored


async def test_restore_refuses_another_nodes_backup(tmp_path: Path) -> None:
    """A backup holds its node's consensus records (what that node signed): another node
    would load them as its own. The manifest names the node; nothing is changed."""
    await backup_of_a_node(tmp_path, batches=2)
    assert json.loads((tmp_path / "b2" / BACKUP_MANIFEST).read_text())["node"] == "node1"
    raw = config_dict(tmp_path / "node2")
    raw["node"]["name"] = "node2"
    node2 = parse_config(raw, tmp_path / "node2" / "node.toml")
    with pytest.raises(BackupError, match="is a backup of node1; this node is node2"):
        restore(node2, tmp_path / "b2", force=True)
    assert not node2.storage_path.exists()


async def test_restore_refuses_another_nodes_database_without_a_manifest(tmp_path: Path) -> None:
    """A hand copy of node1's data directory (no manifest, or one edited to say node2):
    the stamp inside the database still says whose it is; nothing is changed."""
    await backup_of_a_node(tmp_path, batches=2)
    (tmp_path / "b2" / BACKUP_MANIFEST).unlink()
    raw = config_dict(tmp_path / "node2")
    raw["node"]["name"] = "node2"
    node2 = parse_config(raw, tmp_path / "node2" / "node.toml")
    with pytest.raises(BackupError, match=r"holds the database of node1 .* this node is node2"):
        restore(node2, tmp_path / "b2", force=True)
    assert not node2.storage_path.exists()
    # renamed, node1 (the same validator key) still restores its own
    raw = config_dict(tmp_path / "renamed")
    raw["node"]["name"] = "node2"
    raw["validators"][0]["name"], raw["validators"][1]["name"] = "node2", "node1"
    renamed = parse_config(raw, tmp_path / "renamed" / "node.toml")
    assert restore(renamed, tmp_path / "b2", force=False).last_seq == 2


def test_restore_refuses_to_roll_a_single_node_cluster_back_behind_its_mark(
    cluster_factory: Any, tmp_path: Path
) -> None:
    """A replica restored behind its signing mark fetches the seqs above the backup from
    its peers; a node alone has none, and stayed in a view change for good after such a
    restore (found by an audit, 2026-12-04). Refused, saying why; nothing is changed."""
    layout = cluster_factory(1)
    config = layout.nodes[0].config
    cfg = load_config(config, environ={})
    mark = MarkFile(cfg.signing_mark_path)
    mark.store(SigningMark(0, 10))
    mark.close()
    backup_dir = tmp_path / "backup"
    Store.open(backup_dir).close()  # a database that ends at seq 0
    result = subprocess.run(
        cli("restore", "--config", str(config), "--from", str(backup_dir), "--force"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this single-node cluster signed up to seq 10" in result.stderr
    assert "fetch seqs 1..10" in result.stderr and "Nothing was changed" in result.stderr
    assert not cfg.storage_path.exists()


@pytest.mark.slow
def test_a_damaged_table_block_fails_verify_backup_and_restore(tmp_path: Path) -> None:
    """Storage audit (2026-12-04): a flipped byte in a table block passed `backup` and
    `restore` (both "verified" a database by opening it, which reads no data block), and
    the restored node went down at its first read of the block. Both now read every
    block, and `verify` does it on demand."""
    config = write_config(tmp_path / "node", port=free_tcp_port())
    cfg = load_config(config)
    store = Store.open(cfg.storage_path, owner=Owner.of_node(cfg))
    write_flushed_state(store, rows=40)
    store.close()
    intact = run_cli("verify", "--config", str(config))
    assert intact.returncode == 0, intact.stderr
    assert f"{cfg.storage_path}: intact, every block's checksum verified (" in intact.stdout
    good = run_cli("backup", "--config", str(config), "--output", str(tmp_path / "good"))
    assert good.returncode == 0, good.stderr

    damage_a_table_block(cfg.storage_path)
    found = run_cli("verify", "--config", str(config))
    assert found.returncode == 1
    assert found.stderr.startswith(f"error: the database at {cfg.storage_path}, column family ")
    assert ", is damaged: Corruption: block checksum mismatch" in found.stderr
    assert "restore it from a backup (cretoai-node restore --from DIR --force)" in found.stderr
    refused = run_cli("backup", "--config", str(config), "--output", str(tmp_path / "bad"))
    assert refused.returncode == 1
    assert "is damaged, and so most likely is the node's database it was taken from" in (
        refused.stderr
    )
    # a damaged copy of the good backup is refused before anything is touched
    before = snapshot(cfg.storage_path)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "good", copy)
    damage_a_table_block(copy)
    assert run_cli("verify", "--config", str(config), "--path", str(copy)).returncode == 1
    unusable = run_cli("restore", "--config", str(config), "--from", str(copy), "--force")
    assert unusable.returncode == 1
    assert f"error: {copy} is not a usable backup: " in unusable.stderr
    assert "nothing was changed" in unusable.stderr
    assert snapshot(cfg.storage_path) == before
    # the good backup brings the node back
    restored = run_cli(
        "restore", "--config", str(config), "--from", str(tmp_path / "good"), "--force"
    )
    assert restored.returncode == 0, restored.stderr
    assert run_cli("verify", "--config", str(config)).returncode == 0


def test_damage_in_a_tables_index_or_filter_partitions_fails_verify(tmp_path: Path) -> None:
    """Index and filter blocks live in the block cache, partitioned (services/storage/
    options.py), so an open no longer reads them whole: a flipped byte anywhere after a
    table's data blocks (filter partitions, index partitions, the top-level index) is
    still found by `verify`, as a data block's is."""
    db = tmp_path / "db"
    store = Store.open(db)
    write_flushed_state(store, rows=40)
    state = store._cf[keys.CONSENSUS_STATE]
    state.flush()
    properties = state.property_value("rocksdb.aggregated-table-properties") or ""
    store.close()
    [table] = [p for p in db.glob("*.sst") if p.stat().st_size > 500_000]
    data_end = int(re.search(r"data block size=(\d+)", properties).group(1))  # type: ignore[union-attr]
    assert "# index partitions=" in properties  # the partitioned layout
    intact = table.read_bytes()
    end = len(intact) - 64  # the footer is checked at open anyway
    offsets = range(data_end + 8, end, max(1, (end - data_end) // 10))
    for offset in offsets:
        copy = tmp_path / f"copy{offset}"
        shutil.copytree(db, copy)
        flipped = bytearray(intact)
        flipped[offset] ^= 0xFF
        (copy / table.name).write_bytes(bytes(flipped))
        with pytest.raises(DatabaseCorrupt):
            verify_database(copy)
    assert len(offsets) >= 10
