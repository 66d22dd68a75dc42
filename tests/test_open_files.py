"""Every service raises its soft limit of open files at start (cretoai/entry.py): with the
usual 1,024, as many idle connections to one of its ports left it unable to open a file
or accept its own node's calls."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

import pytest

from cretoai.serving import SERVICE_OPEN_FILES
from devkit.storage import ServiceProcess
from tests.storage.support import Dag

_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
FLOOD = 1100  # more than the usual soft limit


def soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


def start_with_soft_limit_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, HARD))


@pytest.mark.skipif(
    HARD != resource.RLIM_INFINITY and HARD < 2 * FLOOD,
    reason=f"the hard limit of open files here ({HARD}) leaves nothing to raise",
)
async def test_a_service_started_with_1024_open_files_survives_more_idle_connections(
    tmp_path: Path,
) -> None:
    # the test holds FLOOD sockets itself
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(4 * FLOOD, 4096), HARD))
    proc = ServiceProcess.create(tmp_path, db=tmp_path / "db")
    proc.spawn(preexec=start_with_soft_limit_1024)
    idle: list[socket.socket] = []
    try:
        await proc.wait_serving()
        assert proc.proc is not None
        wanted = (
            SERVICE_OPEN_FILES if HARD == resource.RLIM_INFINITY else min(SERVICE_OPEN_FILES, HARD)
        )
        assert soft_limit(proc.proc.pid) == wanted
        for _ in range(FLOOD):
            idle.append(socket.create_connection(("127.0.0.1", proc.port), timeout=10))
        # still serving its node: a health check, and a synced write (a new WAL, files)
        assert await proc.health() == 1
        async with proc.channel() as channel:
            from cretoai.v1 import storage_pb2_grpc

            stub = storage_pb2_grpc.StorageStub(channel)
            reply = await stub.CommitBatch(Dag().next_batch(3), timeout=30)
            assert reply.last_seq == 1
    finally:
        for sock in idle:
            sock.close()
        if proc.proc is not None and proc.proc.poll() is None:
            assert proc.terminate() == 0
