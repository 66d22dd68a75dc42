"""Opening the database: created when missing, refused clearly when locked, corrupt or foreign."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.storage.errors import DatabaseCorrupt, DatabaseError, DatabaseLocked
from services.storage.keys import FINALIZED, SCHEMA_VERSION_KEY, seq_key, u32
from services.storage.service import build
from services.storage.store import Store
from tests.storage.support import (
    Dag,
    RawDb,
    ServiceProcess,
    make_config,
    start_service,
)


async def fill(db: Path, batches: int = 3) -> None:
    """Commit a few batches through a short-lived in-process service."""
    running = await start_service(make_config(db.parent, db=db))
    try:
        dag = Dag(payload_size=1024)
        for _ in range(batches):
            await running.stub.CommitBatch(dag.next_batch(50))
    finally:
        await running.stop()


async def test_a_missing_database_directory_is_created(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "db"
    running = await start_service(make_config(tmp_path, db=db))
    try:
        assert (db / "CURRENT").exists()
        from cretoai.v1 import storage_pb2

        stats = await running.stub.GetStats(storage_pb2.GetStatsRequest())
        assert (stats.path, stats.last_seq, stats.schema_version) == (str(db), 0, 1)
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


async def test_a_foreign_non_empty_directory_is_not_turned_into_a_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(DatabaseError, match="holds no RocksDB database"):
        Store.open(path)
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt"]


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
        raw.db.put(SCHEMA_VERSION_KEY, u32(2))
    with pytest.raises(DatabaseError, match="has schema version 2; this build reads version 1"):
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
    with pytest.raises(DatabaseCorrupt, match="holds data but no schema version"):
        Store.open(path)
