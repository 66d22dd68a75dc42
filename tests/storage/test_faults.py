"""Write faults fail loudly: a write error, a full disk. Real service processes."""

from __future__ import annotations

import resource
import subprocess
import tomllib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cretoai.v1 import storage_pb2, storage_pb2_grpc
from devkit.storage import ServiceProcess
from tests.storage.support import Dag, collect, damage_a_table_block
from tests.storage.test_commit import expect

pytestmark = pytest.mark.slow

FILE_LIMIT = 12 * 1024 * 1024


async def fill_until_failure(
    stub: storage_pb2_grpc.StorageStub, dag: Dag, max_batches: int = 100
) -> tuple[storage_pb2.CommitBatchRequest, grpc.aio.AioRpcError]:
    """Commit 100-vertex batches (~830 KB) until one fails; returns it and its error."""
    for _ in range(max_batches):
        request = dag.next_batch(100)
        try:
            await stub.CommitBatch(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return request, exc
    raise AssertionError(f"no write failed within {max_batches} batches")


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


async def test_a_write_error_fails_the_rpc_halts_writes_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    # RLIMIT_FSIZE makes the WAL append fail with EFBIG ("File too large") once the
    # file reaches 12 MiB: a real I/O error from the kernel, no privileges needed.
    proc = ServiceProcess.create(tmp_path, metrics=True)
    proc.spawn(preexec=limit_file_size)
    dag = Dag(payload_size=1024)
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            failed, error = await fill_until_failure(stub, dag)
            assert error.code() == grpc.StatusCode.INTERNAL, error.details()
            assert "write failed" in (error.details() or "")
            assert "File too large" in (error.details() or "")
            acked = failed.batch.seq - 1
            assert acked >= 3

            # every later write is refused with the reason, until a restart
            details = await expect(
                grpc.StatusCode.UNAVAILABLE,
                stub.CommitBatch(dag.next_batch(1)),
                "writes are halted after a write error",
                "restart the storage service",
            )
            assert "File too large" in details
            await expect(
                grpc.StatusCode.UNAVAILABLE,
                stub.WriteState(
                    storage_pb2.WriteStateRequest(
                        puts=[storage_pb2.StateEntry(key=b"k", value=b"v")]
                    )
                ),
                "halted",
            )
            # reads go on, and show only what was acknowledged
            stats = await stub.GetStats(storage_pb2.GetStatsRequest())
            assert (stats.last_seq, stats.halted) == (acked, True)
            assert "File too large" in stats.halt_reason
            reply = await stub.GetVertex(storage_pb2.GetVertexRequest(hash=failed.results[0].hash))
            assert not reply.found
            assert await proc.health() == health_pb2.HealthCheckResponse.NOT_SERVING
            text = proc.metrics()
            assert 'cretoai_storage_write_errors_total{kind="WriteFailed"} 1.0' in text
            assert "cretoai_storage_halted 1.0" in text
        assert "storage writes halted" in proc.stderr()
        assert proc.terminate() == 0
    finally:
        proc.terminate()

    # restarted without the limit: every acknowledged batch is there, the failed one is not
    again = ServiceProcess(proc.config, proc.port)
    again.spawn()
    try:
        await again.wait_serving()
        async with again.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            stats = await stub.GetStats(storage_pb2.GetStatsRequest())
            assert (stats.last_seq, stats.halted) == (acked, False)
            assert stats.vertices == acked * 100
            entries = await collect(
                stub.GetFinalized(storage_pb2.GetFinalizedRequest(omit_vertices=True))
            )
            assert [e.batch.seq for e in entries] == list(range(1, acked + 1))
            # the consensus re-sends the batch that failed: now it commits
            reply = await stub.CommitBatch(failed)
            assert (reply.last_seq, reply.already_committed) == (acked + 1, False)
    finally:
        assert again.terminate() == 0


def _can_mount_tmpfs() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_mount_tmpfs(), reason="needs user namespaces to mount a small tmpfs (unshare -rm)"
)
async def test_a_full_disk_is_resource_exhausted(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    proc = ServiceProcess.create(tmp_path, db=db)
    # the database lives on a 16 MiB tmpfs of the service's own mount namespace
    mount = 'mount -t tmpfs -o size=16m tmpfs "$0" && exec "$@"'
    proc.spawn(wrapper=["unshare", "-rm", "sh", "-c", mount, str(db)])
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            failed, error = await fill_until_failure(stub, Dag(payload_size=1024))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "disk full" in (error.details() or "")
            assert "No space left on device" in (error.details() or "")
            stats = await stub.GetStats(storage_pb2.GetStatsRequest())
            assert stats.halted and stats.last_seq == failed.batch.seq - 1
        assert proc.terminate() == 0
    finally:
        proc.terminate()


async def test_a_damaged_table_block_met_by_a_read_is_data_loss_counted_and_not_serving(
    tmp_path: Path,
) -> None:
    """Storage audit (2026-12-04): reads of a vertex in a damaged table block answered
    INTERNAL "internal error: Exception: Corruption: ..." (the gateway passed it, with the
    database's path, to HTTP clients), counted nowhere, the service still SERVING. Now
    DATA_LOSS saying what to do, counted, and the service NOT_SERVING."""
    proc = ServiceProcess.create(tmp_path / "node", metrics=True)
    proc.spawn()
    hashes: list[bytes] = []
    try:
        await proc.wait_serving()
        async with proc.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            dag = Dag()
            for _ in range(6):
                request = dag.next_batch(100)
                await stub.CommitBatch(request, timeout=30)
                hashes += [r.hash for r in request.results]
    finally:
        assert proc.terminate() == 0  # closing flushes the memtables into table files
    db = Path(tomllib.loads(proc.config.read_text())["node"]["data_dir"]) / "db"
    damage_a_table_block(db)

    again = ServiceProcess(proc.config, proc.port, metrics_port=proc.metrics_port)
    again.spawn()
    try:
        await again.wait_serving()  # an open reads no data block
        codes: dict[grpc.StatusCode, list[str]] = {}
        async with again.channel() as channel:
            stub = storage_pb2_grpc.StorageStub(channel)
            for h in hashes:
                try:
                    await stub.GetVertex(storage_pb2.GetVertexRequest(hash=h), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    codes.setdefault(exc.code(), []).append(exc.details() or "")
        assert list(codes) == [grpc.StatusCode.DATA_LOSS], {c: d[:1] for c, d in codes.items()}
        detail = codes[grpc.StatusCode.DATA_LOSS][0]
        assert f"the database at {db} is damaged: Corruption: block checksum mismatch" in detail
        assert "restore it from a backup (cretoai-node restore --from DIR --force)" in detail
        assert await again.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        damaged = len(codes[grpc.StatusCode.DATA_LOSS])
        assert f"cretoai_storage_damaged_reads_total {float(damaged)}" in again.metrics()
        assert again.terminate() == 0
        assert again.stderr().count("damaged data read") == 1  # said once, counted each time
    finally:
        again.terminate()


def test_a_write_meeting_damaged_data_halts_with_the_remedy_not_a_disk_hint(
    tmp_path: Path,
) -> None:
    """Storage audit (2026-12-04): a compaction over a damaged block halted writes with
    "fix the cause (e.g. free disk space) and restart the storage service"; the restart
    opened cleanly (an open reads no data block) and halted again at the next compaction."""
    from services.storage.errors import DatabaseDamaged, Halted, write_error
    from services.storage.store import Store

    failure = write_error("Corruption: block checksum mismatch: stored = 1, computed = 2")
    assert isinstance(failure, DatabaseDamaged)
    assert failure.grpc_status == grpc.StatusCode.DATA_LOSS
    assert type(write_error("IO error: No space left on device")).__name__ == "DiskFull"
    store = Store.open(tmp_path / "db")
    try:
        store.halt(str(failure))
        with pytest.raises(Halted) as info:
            store.write_state(storage_pb2.WriteStateRequest(puts=[]))
        message = str(info.value)
        assert message.startswith("writes are halted: the database is damaged: Corruption:")
        assert "restore it from a backup (cretoai-node restore --from DIR --force)" in message
        assert "free disk space" not in message
    finally:
        store.close()
