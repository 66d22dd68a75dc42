"""Opening the database: created when missing or empty, refused clearly when locked, corrupt
or foreign — and a refused directory is left exactly as it was."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w

from cretoai.config import NodeConfig, parse_config
from cretoai.v1 import storage_pb2, storage_pb2_grpc
from devkit.storage import ServiceProcess, config_dict, make_config
from services.storage.errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseOfAnotherCluster,
    DatabaseOfAnotherNode,
    ReadFailed,
)
from services.storage.keys import FINALIZED, OWNER_KEY, SCHEMA_VERSION_KEY, seq_key, u32
from services.storage.service import build
from services.storage.store import Owner, Store, inspect
from services.storage.synced import MARK_FILE
from tests.conftest import cli
from tests.storage.support import (
    REPO,
    WITHOUT_DAC_OVERRIDE,
    Dag,
    RawDb,
    damage_a_table_block,
    snapshot,
    start_service,
    write_flushed_state,
)


async def fill(db: Path, batches: int = 3) -> None:
    """Commit a few batches and a consensus-state record through a short-lived in-process
    service."""
    running = await start_service(make_config(db.parent, db=db))
    try:
        dag = Dag(payload_size=1024)
        for _ in range(batches):
            await running.stub.CommitBatch(dag.next_batch(50))
        vote = storage_pb2.StateEntry(key=b"own/commit/0/1", value=b"signed")
        await running.stub.WriteState(storage_pb2.WriteStateRequest(puts=[vote]))
    finally:
        await running.stop()


def assert_says_what_to_do(message: str) -> None:
    assert "restore it from a backup (cretoai-node restore --from DIR --force)" in message
    assert "move the directory aside to start with an empty database" in message
    assert "rejoins the cluster by state transfer" in message


def _manifest(db: Path) -> Path:
    return db / (db / "CURRENT").read_text().strip()


DAMAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "no CURRENT": (lambda db: (db / "CURRENT").unlink(), "but no CURRENT file"),
    "CURRENT names a missing MANIFEST": (
        lambda db: _manifest(db).unlink(),
        "its CURRENT file names MANIFEST-",
    ),
    "an empty MANIFEST": (lambda db: _manifest(db).write_bytes(b""), "which is empty"),
    "CURRENT holds garbage": (
        lambda db: (db / "CURRENT").write_bytes(b"\x00" * 16),
        "its CURRENT file does not name a MANIFEST",
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
async def test_a_damaged_database_fails_every_open_and_is_left_unchanged(
    tmp_path: Path, damage: str
) -> None:
    db = tmp_path / "db"
    await fill(db, batches=2)
    do_damage, what = DAMAGES[damage]
    do_damage(db)
    before = snapshot(db)
    for _ in range(2):  # the first failed open must not turn the next one into a new database
        with pytest.raises(DatabaseCorrupt) as info:
            Store.open(db)
        message = str(info.value)
        assert f"the database at {db} is corrupt: " in message and what in message, message
        assert_says_what_to_do(message)
        assert snapshot(db) == before
    # read-only inspection (backup, restore) refuses it too, and touches nothing either
    with pytest.raises(DatabaseCorrupt, match=what):
        inspect(db)
    assert snapshot(db) == before


def test_a_database_is_never_created_where_its_parent_directory_is_missing(
    tmp_path: Path,
) -> None:
    """A missing parent is a volume not mounted or a wrong path (found by an audit:
    every node pointed at a missing data_dir made new databases and signing marks,
    and the cluster finalized a second seq 1 with a valid certificate): refused,
    naming the directory, and nothing is created."""
    db = tmp_path / "unmounted" / "db"
    with pytest.raises(DatabaseError, match=f"directory {tmp_path / 'unmounted'} does not exist"):
        Store.open(db)
    assert not (tmp_path / "unmounted").exists()


async def test_a_missing_database_directory_is_created(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "db"
    db.parent.mkdir(parents=True)  # the data directory exists (cluster init makes it)
    running = await start_service(make_config(tmp_path, db=db))
    try:
        assert (db / "CURRENT").exists()
        from cretoai.v1 import storage_pb2

        stats = await running.stub.GetStats(storage_pb2.GetStatsRequest())
        assert (stats.path, stats.last_seq, stats.schema_version) == (str(db), 0, 2)
    finally:
        await running.stop()


async def test_a_second_process_on_the_same_database_fails_naming_the_path(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    first = ServiceProcess.create(tmp_path / "a", db=db)
    first.spawn()
    try:
        await first.wait_serving()
        second = ServiceProcess.create(tmp_path / "b", db=db)
        second.spawn()
        assert second.wait_exit(60) == 1
        err = second.stderr()
        assert f"error: the database at {db} is in use by another process" in err, err
        assert "LOCK" in err
        assert "Traceback" not in err
    finally:
        assert first.terminate() == 0


async def test_a_second_open_in_one_process_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    try:
        with pytest.raises(DatabaseLocked, match="already open in this process"):
            Store.open(tmp_path / "db")
    finally:
        store.close()
    Store.open(tmp_path / "db").close()  # closed means the LOCK is released


async def test_a_file_where_the_database_should_be(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.write_text("not a database")
    with pytest.raises(DatabaseError, match=f"the database path {path} exists and is not a dir"):
        await build(make_config(tmp_path, db=path))


async def test_a_directory_with_an_unrelated_file_fails_every_open_and_is_left_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    before = snapshot(path)
    for _ in range(2):
        with pytest.raises(DatabaseError) as info:
            Store.open(path)
        message = str(info.value)
        assert message.startswith(
            f"the database path {path} is a non-empty directory that holds no RocksDB database "
            "(it holds notes.txt); refusing to create one among other files: "
            "set [storage] path to a missing or empty directory"
        ), message
        assert_says_what_to_do(message)
        assert snapshot(path) == before


async def test_an_empty_directory_gets_a_new_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db"
    path.mkdir()
    with caplog.at_level(logging.WARNING, logger="services.storage.store"):
        store = Store.open(path)
    try:
        assert store.published.last_seq == 0 and (path / "CURRENT").exists()
    finally:
        store.close()
    assert "created a new, empty database" in caplog.messages
    Store.open(path).close()  # and opens as an existing one afterwards


def test_the_storage_service_refuses_a_damaged_database_at_every_start(tmp_path: Path) -> None:
    db = tmp_path / "db"
    asyncio.run(fill(db, batches=2))
    (db / "CURRENT").unlink()
    before = snapshot(db)
    config = ServiceProcess.create(tmp_path / "proc", db=db).config
    for _ in range(2):
        proc = subprocess.run(
            cli("start", "--config", str(config), "--service", "storage"),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stderr
        assert errors[0].startswith(f"error: the database at {db} is corrupt: "), errors
        assert "but no CURRENT file" in errors[0]
        assert_says_what_to_do(errors[0])
        assert "Traceback" not in proc.stderr
        assert snapshot(db) == before


async def test_a_corrupt_manifest_is_reported_at_start(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await fill(db)
    manifest = next(db.glob("MANIFEST-*"))
    raw = bytearray(manifest.read_bytes())
    for i in range(0, len(raw), 7):
        raw[i] ^= 0x5A
    manifest.write_bytes(bytes(raw))
    with pytest.raises(DatabaseCorrupt) as info:
        Store.open(db)
    message = str(info.value)
    assert f"the database at {db} is corrupt" in message
    assert "restore it from a backup" in message
    # and the service process says so in one line, exit code 1
    proc = ServiceProcess.create(tmp_path / "proc", db=db)
    proc.spawn()
    assert proc.wait_exit(60) == 1
    assert f"error: the database at {db} is corrupt" in proc.stderr()


async def test_a_truncated_table_file_is_reported_at_start(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await fill(db)  # closing flushes the memtables into table files
    table = max(db.glob("*.sst"), key=lambda p: p.stat().st_size)
    with table.open("r+b") as f:
        f.truncate(table.stat().st_size // 2)
    with pytest.raises(DatabaseCorrupt, match=str(db)):
        Store.open(db)


async def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await fill(db, batches=1)
    with RawDb(db) as raw:
        raw.db.put(SCHEMA_VERSION_KEY, u32(3))
    with pytest.raises(DatabaseError, match="has schema version 3; this build reads versions 1, 2"):
        Store.open(db)


async def test_a_missing_finalized_entry_is_reported_as_corruption(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await fill(db, batches=2)
    with RawDb(db) as raw:
        raw.cfs[FINALIZED].delete(seq_key(2))
    with pytest.raises(DatabaseCorrupt, match="last_seq is 2 but its finalized entry is missing"):
        Store.open(db)


async def test_read_only_inspection_of_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="there is no database at"):
        Store.open(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()


async def test_a_foreign_rocksdb_database_is_not_adopted(tmp_path: Path) -> None:
    from rocksdict import Options, Rdict

    path = tmp_path / "db"
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    foreign = Rdict(str(path), options)
    foreign[b"someone"] = b"else's data"
    foreign.close()
    before = snapshot(path)
    with pytest.raises(DatabaseCorrupt, match="it lacks the column families vertices, "):
        Store.open(path)
    assert snapshot(path) == before  # no column family was added to it


async def test_data_without_a_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "db"
    await fill(db, batches=1)
    with RawDb(db) as raw:
        raw.db.delete(SCHEMA_VERSION_KEY)
    with pytest.raises(DatabaseCorrupt, match="holds data but no schema version"):
        Store.open(db)


def test_a_damaged_table_block_fails_a_scan_instead_of_shortening_it(
    tmp_path: Path,
) -> None:
    """One flipped byte in a table file passes the open (RocksDB checks blocks as it reads
    them): a point read of a key in the bad block fails, but a range scan used to stop
    at the block and return the keys before it, with no error. The consensus loads its
    records with such a scan at start; a shorter answer is a silent loss."""
    db = tmp_path / "db"
    store = Store.open(db)
    write_flushed_state(store, rows=100)
    assert sum(1 for _ in store._scan("consensus_state", b"k/", None, 10_000)) == 5000
    store.close()
    damage_a_table_block(db)
    store = Store.open(db)
    try:
        with pytest.raises(ReadFailed, match="damaged"):
            after = None
            while page := store.scan_state(b"k/", after=after, limit=256):
                after = page[-1].key
    finally:
        store.close()


def _node2(tmp: Path, db: Path) -> NodeConfig:
    """The config of another validator of the same cluster (node2), on ``db``."""
    raw = config_dict(tmp, db=db)
    raw["node"]["name"] = "node2"
    return parse_config(raw, tmp / "node.toml")


async def test_a_database_of_another_node_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    """An operator copied node1's data directory to node2 (or mounted the wrong volume): node2
    would take node1's consensus records, what node1 signed, for its own. The database
    carries its validator's stamp; another validator's storage refuses it, touching nothing."""
    db = tmp_path / "db"
    await fill(db, batches=1)  # by node1's storage service: stamped as node1's
    node1 = Owner.of_node(make_config(tmp_path, db=db))
    node2 = Owner.of_node(_node2(tmp_path / "n2", db))
    store = Store.open(db, read_only=True)
    try:
        assert store.owner() == node1 != node2
    finally:
        store.close()
    before = snapshot(db)
    with pytest.raises(DatabaseOfAnotherNode) as info:
        Store.open(db, owner=node2)
    message = str(info.value)
    assert f"belongs to node1 (validator key {node1.key_fingerprint})" in message
    assert f"not to this node, node2 (key {node2.key_fingerprint})" in message
    assert "Restore this node's own backup (cretoai-node restore --from DIR --force)" in message
    assert "move the directory aside to start with an empty database" in message
    assert snapshot(db) == before
    Store.open(db, owner=node1).close()  # its own node opens it
    # a renamed node keeps its database: the key is compared, not the name
    Store.open(db, owner=Owner("renamed", node1.key_fingerprint)).close()
    with pytest.raises(DatabaseOfAnotherNode, match="the node's validator key was changed since"):
        Store.open(db, owner=Owner("node1", node2.key_fingerprint))  # its key swapped


async def test_the_storage_process_of_another_node_exits_with_the_reason(tmp_path: Path) -> None:
    db = tmp_path / "db"
    Store.open(db, owner=Owner.of_node(_node2(tmp_path / "n2", db))).close()
    proc = ServiceProcess.create(tmp_path / "proc", db=db)  # node1's storage
    proc.spawn()
    assert proc.wait_exit(60) == 1
    assert f"error: the database at {db} belongs to node2" in proc.stderr()
    assert "Traceback" not in proc.stderr()


async def test_a_database_is_refused_under_another_validator_set(tmp_path: Path) -> None:
    """Found by an audit: node4 started once with a config listing only itself finalized
    alone on the cluster's data and served a history of its own for good (and cluster
    init --nodes 1 --reuse-keys over a 4-node cluster did the same). The database holds
    its cluster's validator set since: the storage process under another list, order or
    key exits with the reason and leaves the files as they were."""
    db = tmp_path / "db"
    cfg = make_config(tmp_path, db=db)
    four = Owner.of_node(cfg)
    assert four.validators == 4 and len(four.validator_set) == 32
    Store.open(db, owner=four).close()
    before = snapshot(db)
    solo = dataclasses.replace(cfg, validators=cfg.validators[:1])
    with pytest.raises(DatabaseOfAnotherCluster) as info:
        Store.open(db, owner=Owner.of_node(solo))
    message = str(info.value)
    assert "in a cluster of 4 validators" in message and "this config lists 1" in message
    assert snapshot(db) == before
    reordered = dataclasses.replace(cfg, validators=(cfg.validators[0], *cfg.validators[:0:-1]))
    with pytest.raises(DatabaseOfAnotherCluster):
        Store.open(db, owner=Owner.of_node(reordered))
    Store.open(db, owner=four).close()  # its own cluster's config opens it
    # the storage process, as the operator sees it
    proc = ServiceProcess.create(tmp_path / "proc", db=db)
    data = tomllib.loads(proc.config.read_text())
    data["validators"] = data["validators"][:1]  # a config listing only this node
    proc.config.write_text(tomli_w.dumps(data))
    proc.spawn()
    assert proc.wait_exit(60) == 1
    assert "in a cluster of 4 validators" in proc.stderr()
    assert "Traceback" not in proc.stderr()


def stamp_of(db: Path, owner: Owner | None = None) -> Owner | None:
    """The database's stamp, read by a read-only open (as ``owner``, if given)."""
    reader = Store.open(db, read_only=True, owner=owner)
    try:
        return reader.owner()
    finally:
        reader.close()


def test_a_stamp_from_before_the_validator_set_gets_it(tmp_path: Path) -> None:
    db = tmp_path / "db"
    owner = Owner.of_node(make_config(tmp_path, db=db))
    Store.open(db, owner=Owner(owner.node, owner.key_fingerprint)).close()  # an older stamp
    Store.open(db, owner=owner).close()
    assert stamp_of(db) == owner


def test_an_unstamped_database_is_stamped_by_its_node_not_by_a_reader(tmp_path: Path) -> None:
    """Databases written before stamps: the first read-write open by the storage service
    stamps it; a read-only open (inspection, restore) writes nothing."""
    db = tmp_path / "db"
    Store.open(db).close()  # no owner: as before stamps
    owner = Owner.of("node1", b"\x01" * 2592)
    assert stamp_of(db, owner) is None
    Store.open(db, owner=owner).close()
    assert stamp_of(db) == owner


@pytest.mark.parametrize("record", [b"\xff not json", b'{"node": 1}', b"[]"])
async def test_a_damaged_stamp_is_reported_as_corruption_not_taken_for_none(
    tmp_path: Path, record: bytes
) -> None:
    """A damaged stamp must not read as "not stamped yet": the next open would stamp the
    database anew as whoever opens it, whichever node it belonged to."""
    db = tmp_path / "db"
    await fill(db, batches=1)
    with RawDb(db) as raw:
        raw.db.put(OWNER_KEY, record)
    before = snapshot(db)
    owner = Owner.of_node(make_config(tmp_path, db=db))
    for read_only in (True, False):
        with pytest.raises(DatabaseCorrupt, match="unreadable owner: not an owner record"):
            Store.open(db, read_only=read_only, owner=owner)
    assert snapshot(db) == before


async def test_a_database_with_data_but_no_stamp_is_stamped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage audit (2026-12-04): node2's database put under node3 with its stamp removed
    was stamped as node3's with an info line only. Now it is said (and consensus refuses
    records another replica signed, tests/consensus/test_durability.py); a new database
    is stamped quietly."""
    db = tmp_path / "db"
    owner = Owner.of_node(make_config(tmp_path, db=db))
    with caplog.at_level(logging.WARNING, logger="services.storage.store"):
        Store.open(db, owner=owner).close()
    assert "no identity stamp" not in caplog.text
    await fill(db, batches=1)
    with RawDb(db) as raw:
        raw.db.delete(OWNER_KEY)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="services.storage.store"):
        Store.open(db, owner=owner).close()
    assert "the database holds data but no identity stamp: stamped now" in caplog.text
    assert stamp_of(db) == owner


async def test_a_database_of_another_cluster_with_the_same_node_name_is_named_so(
    tmp_path: Path,
) -> None:
    """Storage audit (2026-12-04): another cluster's node1 database was refused as "the
    node's validator key was changed since", though its validator set differs too."""
    db = tmp_path / "db"
    await fill(db, batches=1)
    theirs = Owner("node1", "f" * 32, validator_set="e" * 32, validators=4)
    with pytest.raises(DatabaseOfAnotherNode, match="it comes from another cluster"):
        Store.open(db, owner=theirs)
    # the same key under another set is the validator-set check's (DatabaseOfAnotherCluster)


async def test_an_unreadable_current_file_is_a_permission_error_not_corruption(
    tmp_path: Path,
) -> None:
    """Storage audit (2026-12-04): CURRENT at mode 000 was reported as a corrupt database,
    whose remedy (restore a backup, or move the directory aside) throws a history away for
    a mode bit. Root ignores mode bits: the process runs without that capability."""
    db = tmp_path / "db"
    await fill(db, batches=1)
    (db / "CURRENT").chmod(0)
    before = snapshot(db)
    proc = ServiceProcess.create(tmp_path / "proc", db=db)
    proc.spawn(wrapper=WITHOUT_DAC_OVERRIDE)
    assert proc.wait_exit(60) == 1
    err = proc.stderr()
    assert f"error: cannot read the database at {db}: Permission denied" in err, err
    assert "must own the database directory and its files" in err
    assert "corrupt" not in err and "move the directory aside" not in err
    (db / "CURRENT").chmod(0o600)
    assert snapshot(db) == before


async def test_a_young_database_whose_write_ahead_log_was_deleted_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """Storage audit (2026-12-04): everything still in the write-ahead log, the *.log
    files deleted ("they're logs"): the service said only "the database ... was never
    initialised". The synced mark is checked first now: it says what is missing."""
    proc = ServiceProcess.create(tmp_path / "node")
    proc.spawn()
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            dag = Dag()
            for _ in range(3):
                await stub.CommitBatch(dag.next_batch(10), timeout=30)
    finally:
        proc.kill()  # no flush at close: everything is in the write-ahead log
    db = Path(tomllib.loads(proc.config.read_text())["node"]["data_dir"]) / "db"
    logs = list(db.glob("*.log"))
    assert logs and not list(db.glob("*.sst"))
    for log_file in logs:
        log_file.unlink()
    again = ServiceProcess(proc.config, proc.port)
    again.spawn()
    assert again.wait_exit(60) == 1
    err = again.stderr()
    assert "synced writes are missing: write " in err and "(last_seq 3) was synced" in err, err
    assert "never initialised" not in err


@pytest.mark.parametrize(("mode", "doing"), [(0, "read"), (0o400, "write")])
async def test_a_synced_mark_the_service_cannot_use_stops_it_instead_of_the_check(
    tmp_path: Path, mode: int, doing: str
) -> None:
    """Storage audit (2026-12-04): with CRETOAI-SYNCED at mode 000 or 0400 the service
    served with a warning and the check for synced writes lost at the next start off."""
    db = tmp_path / "db"
    await fill(db, batches=1)
    (db / MARK_FILE).chmod(mode)
    proc = ServiceProcess.create(tmp_path / "proc", db=db)
    proc.spawn(wrapper=WITHOUT_DAC_OVERRIDE)
    assert proc.wait_exit(60) == 1
    err = proc.stderr()
    assert f"error: cannot {doing} the database's synced mark {db / MARK_FILE}: " in err, err
    assert "Permission denied" in err and "must own the database directory" in err
    # read-only inspection still works (an operator's tool, maybe as another user)
    assert inspect(db).last_seq == 1
