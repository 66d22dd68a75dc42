"""A consensus that cannot restore its state says why in one line and exits non-zero."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cretoai.channels import service_channel, service_endpoint
from cretoai.config import load_config
from cretoai.v1 import pbft_pb2, storage_pb2, storage_pb2_grpc
from node.clusterinit import ClusterLayout, NodeLayout

pytestmark = pytest.mark.slow


async def _serving(target: str, tls: object) -> bool:
    async with service_channel(target, tls=tls) as channel:  # type: ignore[arg-type]
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def start_service(
    node: NodeLayout, service: str, *, stderr: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """Node ``node``'s ``service`` process (``services.<service>``; stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"services.{service}",
        "--config",
        str(node.config),
        cwd=node.directory,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )


async def start_consensus(node: NodeLayout) -> asyncio.subprocess.Process:
    """Node ``node``'s consensus process (stderr piped)."""
    return await start_service(node, "consensus")


@contextlib.asynccontextmanager
async def consensus_over_record(
    node: NodeLayout, view_record: bytes
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Node ``node``'s real storage holding ``view_record`` under the consensus key
    ``view``, then its consensus process started over it (stderr piped); both stopped
    at the end."""
    cfg = load_config(node.config)
    storage = await start_service(node, "storage", stderr=asyncio.subprocess.DEVNULL)
    consensus = None
    try:
        target, tls = service_endpoint(cfg, "storage")
        deadline = time.monotonic() + 60
        while not await _serving(target, tls):
            assert storage.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        async with service_channel(target, tls=tls) as channel:
            await storage_pb2_grpc.StorageStub(channel).WriteState(
                storage_pb2.WriteStateRequest(
                    puts=[storage_pb2.StateEntry(key=b"view", value=view_record)]
                ),
                timeout=10,
            )
        consensus = await start_consensus(node)
        yield consensus
    finally:
        if consensus is not None and consensus.returncode is None:
            consensus.terminate()
            await asyncio.wait_for(consensus.wait(), 30)
        storage.terminate()
        await asyncio.wait_for(storage.wait(), 30)


async def test_damaged_consensus_records_stop_the_consensus_with_one_line(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    node = cluster_factory(1).nodes[0]
    async with consensus_over_record(node, b"\xff\xff not a ViewState") as consensus:
        _, err = await asyncio.wait_for(consensus.communicate(), 60)
    assert consensus.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("error: consensus failed: CorruptState: unreadable consensus record")


async def test_a_missing_signing_mark_beside_records_is_warned_about(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    """The mark deleted (or its volume replaced) while storage keeps the replica's
    records: safe while the records are whole, but it was re-created without a word."""
    node = cluster_factory(1).nodes[0]
    assert not load_config(node.config).signing_mark_path.exists()
    view = pbft_pb2.ViewState(view=2, active=True).SerializeToString()
    async with consensus_over_record(node, view) as consensus:
        assert consensus.stderr is not None

        async def warned() -> None:
            assert consensus.stderr is not None
            while line := await consensus.stderr.readline():
                if b"the signing mark is missing" in line:
                    return
            raise AssertionError("consensus ended without the warning")

        await asyncio.wait_for(warned(), 60)


async def test_a_consensus_whose_config_lists_another_validator_set_than_storage_refuses(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    """Each service reads node.toml when it starts: [[validators]] edited while the node
    ran (here two entries swapped), then consensus restarted alone, ran the replica under
    another validator set than its storage's database was written under. Consensus
    compares its set with the database's stamp first and refuses, naming both."""
    node = cluster_factory(4).nodes[0]
    original = node.config.read_text()
    async with consensus_over_record(
        node, pbft_pb2.ViewState(view=0, active=True).SerializeToString()
    ) as first:
        first.terminate()  # storage stamped the database with the original set
        await asyncio.wait_for(first.wait(), 30)
        head, *blocks = original.split("[[validators]]")
        blocks[1], blocks[2] = blocks[2], blocks[1]  # node2 and node3 swapped
        node.config.write_text("[[validators]]".join([head, *blocks]))
        edited = await start_consensus(node)
        _, err = await asyncio.wait_for(edited.communicate(), 60)
    assert edited.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert "lists a validator set" in last and "other than the one the storage service" in last
