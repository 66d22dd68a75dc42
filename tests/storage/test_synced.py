"""Synced writes that a damaged WAL took are noticed at open (services/storage/synced.py).

RocksDB's point-in-time recovery stops at the first damaged WAL record and opens what came
before without an error; the synced mark is what turns that into a refusal.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import stat
from pathlib import Path

import pytest

from cretoai.v1 import storage_pb2, storage_pb2_grpc
from devkit.storage import ServiceProcess, make_config
from services.storage.backup import restore
from services.storage.errors import DatabaseCorrupt
from services.storage.store import Store, inspect
from services.storage.synced import MARK_FILE, SyncedMark, read_mark
from tests.storage.support import Dag, snapshot, start_service
from tests.storage.test_startup import assert_says_what_to_do

BATCHES = 20


async def write_and_kill(tmp: Path, db: Path) -> int:
    """Commit ``BATCHES`` batches (each acknowledged, so synced) and a state record through
    a real storage process, then SIGKILL it: what was synced is only in the WAL."""
    proc = ServiceProcess.create(tmp / "writer", db=db)
    proc.spawn()
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            dag = Dag(payload_size=1024)
            for _ in range(BATCHES):
                await stub.CommitBatch(dag.next_batch(10))
                vote = storage_pb2.StateEntry(key=b"own/commit/0/1", value=b"signed")
                await stub.WriteState(storage_pb2.WriteStateRequest(puts=[vote]))
    finally:
        proc.kill()
    return BATCHES


def damage_the_middle_of_the_wal(db: Path) -> None:
    wal = max(db.glob("*.log"), key=lambda p: p.stat().st_size)
    raw = bytearray(wal.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    wal.write_bytes(bytes(raw))


async def test_a_damaged_wal_that_drops_synced_writes_is_refused_at_every_start(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    acked = await write_and_kill(tmp_path, db)
    mark = read_mark(db)
    assert mark is not None and mark.last_seq == acked
    assert stat.S_IMODE((db / MARK_FILE).stat().st_mode) == 0o600

    # no false alarm: a SIGKILLed database with an intact WAL opens with everything
    intact = tmp_path / "intact"
    shutil.copytree(db, intact)
    assert inspect(intact).last_seq == acked

    damage_the_middle_of_the_wal(db)
    before = snapshot(db)
    proc = ServiceProcess.create(tmp_path / "proc", db=db)
    for _ in range(2):
        proc.spawn()
        try:
            assert proc.wait_exit(30) == 1
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill()  # it started: the test fails, with nothing left running
        errors = [line for line in proc.stderr().splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stderr()
        assert errors[0].startswith(f"error: the database at {db} is corrupt: synced writes ")
        assert f"write {mark.writes} (last_seq {acked}) was synced" in errors[0]
        assert "write-ahead log is damaged" in errors[0]
        assert_says_what_to_do(errors[0])
        assert "Traceback" not in proc.stderr()
        assert snapshot(db) == before  # left as it was, for whoever salvages it

    # what the mark guards against: without it the same files open, silently shorter
    (db / MARK_FILE).unlink()
    assert inspect(db).last_seq < acked


async def test_the_mark_follows_every_sync_and_checks_only_its_own_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "db"
    running = await start_service(make_config(tmp_path, db=db))
    try:
        dag = Dag()
        marks = []
        for seq in (1, 2):
            await running.stub.CommitBatch(dag.next_batch(3))
            mark = read_mark(db)
            assert mark is not None and mark.last_seq == seq
            marks.append(mark)
        assert marks[1].writes == marks[0].writes + 1
        state = storage_pb2.WriteStateRequest(puts=[storage_pb2.StateEntry(key=b"k", value=b"v")])
        await running.stub.WriteState(state)
        after_state = read_mark(db)
        assert after_state is not None and after_state.writes == marks[1].writes + 1
    finally:
        await running.stop()

    # the mark of another database (its IDENTITY differs) checks nothing
    other = SyncedMark(after_state.writes + 100, 99, b"another-database")
    (db / MARK_FILE).write_bytes(other.to_bytes())
    with caplog.at_level(logging.INFO, logger="services.storage.store"):
        assert inspect(db).last_seq == 2
    assert "the synced mark belongs to another database; not checked" in caplog.messages

    # a torn mark (a crash while it was rewritten) checks nothing, and says so
    ahead = SyncedMark(after_state.writes + 100, 99, after_state.identity).to_bytes()
    (db / MARK_FILE).write_bytes(ahead[:-3])
    with caplog.at_level(logging.WARNING, logger="services.storage.synced"):
        assert inspect(db).last_seq == 2
    assert "the synced mark is unreadable; not checked" in caplog.messages

    # the same mark whole: this database is behind it
    (db / MARK_FILE).write_bytes(ahead)
    with pytest.raises(DatabaseCorrupt, match="synced writes are missing"):
        Store.open(db, read_only=True)


async def test_a_restored_copy_does_not_bring_the_mark_of_its_source(tmp_path: Path) -> None:
    source = tmp_path / "source"
    running = await start_service(make_config(tmp_path / "a", db=source))
    try:
        await running.stub.CommitBatch(Dag().next_batch(3))
    finally:
        await running.stop()
    assert (source / MARK_FILE).exists()  # a plain copy of a data directory holds one
    target = tmp_path / "node" / "db"
    restored = await asyncio.to_thread(restore, make_config(tmp_path / "b", db=target), source,
                                       force=True)  # fmt: skip
    assert restored is not None
    assert not (target / MARK_FILE).exists()
    assert inspect(target).last_seq == 1
