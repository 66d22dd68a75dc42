"""``cretoai-node evidence``: the bans by equivocation evidence a node holds, and lifting
one. A ban by evidence outlives restarts; before this command nothing could lift it, and
the cluster ran one fault short for good (an audit, 2026-12-04). Real processes: a
4-node cluster under the supervisor, its real RocksDB, the real CLI."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cretoai.channels import service_channel, service_endpoint
from cretoai.config import NodeConfig, load_config
from cretoai.crypto import load_private_key
from cretoai.v1 import consensus_pb2, consensus_pb2_grpc, storage_pb2
from node.clusterinit import ClusterLayout
from node.supervisor import Supervisor, run_until
from services.consensus.core.codec import encode_body
from services.consensus.core.crypto import MlDsaSigner
from services.consensus.core.durable import encode_evidence, evidence_key
from services.consensus.core.messages import EvidenceEnvelope, Prepare, Signed
from services.storage.store import Owner, Store
from tests.conftest import cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def equivocation(cfg: NodeConfig, signer: int) -> bytes:
    """An evidence record: two PREPAREs for one (view, seq) with different digests, signed
    by ``cfg``'s key, validator ``signer`` (what a replica records when it sees them)."""
    signer_key = MlDsaSigner(load_private_key(cfg.key_path, cfg.crypto.backend))
    first, second = (Prepare(view=0, seq=7, digest=bytes([b]) * 32) for b in (1, 2))
    signed = [
        Signed(body=encode_body(m), signature=signer_key.sign(encode_body(m)), signer=signer, msg=m)
        for m in (first, second)
    ]
    return encode_evidence(EvidenceEnvelope(first=signed[0], second=signed[1]))


def plant(cfg: NodeConfig, key: str, value: bytes) -> None:
    store = Store.open(cfg.storage_path, owner=Owner.of_node(cfg))
    try:
        store.write_state(
            storage_pb2.WriteStateRequest(
                puts=[storage_pb2.StateEntry(key=key.encode(), value=value)]
            )
        )
        store.sync()
    finally:
        store.close()


async def banned_by(cfg: NodeConfig) -> list[str]:
    """The node ids ``cfg``'s running consensus bans (GetStatus)."""
    target, tls = service_endpoint(cfg, "consensus")
    async with service_channel(target, tls=tls) as channel:
        status = await consensus_pb2_grpc.ConsensusStub(channel).GetStatus(
            consensus_pb2.GetStatusRequest(), timeout=10
        )
    return list(status.banned)


async def run_cluster(
    configs: list[NodeConfig], logs: Path
) -> tuple[asyncio.Task[int], asyncio.Event]:
    supervisor = Supervisor(configs, log_dir=lambda cfg: logs / cfg.node.name, tolerate_down=1)
    supervisor.on_event = lambda _: None
    ready, stop = asyncio.Event(), asyncio.Event()
    run = asyncio.create_task(run_until(supervisor, ready.set, stop, stop_on_give_up=False))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({run, waiting}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not ready.is_set():
        stop.set()
        await asyncio.wait_for(run, 120)
        raise AssertionError("the cluster did not start")
    return run, stop


def evidence_cli(cfg: NodeConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli("evidence", "--config", str(cfg.source), *args),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_ban_by_evidence_outlives_restarts_until_the_operator_forgives_it(
    cluster_factory: Callable[..., ClusterLayout], tmp_path: Path
) -> None:
    layout = cluster_factory(4)
    configs = [load_config(n.config) for n in layout.nodes]
    node1, node4 = configs[0], configs[3]
    node4_id = load_private_key(node4.key_path, node4.crypto.backend).node_id
    plant(node1, evidence_key(3), equivocation(node4, 3))

    listed = evidence_cli(node1)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == (
        "node4: banned for equivocation; it signed two conflicting messages: "
        "Prepare (view 0, seq 7) and Prepare (view 0, seq 7)\n"
    )
    # a node never started (or a wrong data_dir) has no database: said, not taken for none
    empty = evidence_cli(configs[1])
    assert empty.returncode == 1
    assert empty.stderr == f"error: there is no database at {configs[1].storage_path}\n"

    run, stop = await run_cluster(configs, tmp_path / "logs")
    try:
        assert await banned_by(node1) == [node4_id]
        assert await banned_by(configs[1]) == []
        # listing reads a running node's database; forgiving needs the node stopped
        assert evidence_cli(node1).stdout.startswith("node4: banned for equivocation")
        refused = evidence_cli(node1, "--forgive", "node4")
        assert refused.returncode == 1
        assert "is in use by another process" in refused.stderr
        assert "Stop this node's services first" in refused.stderr
    finally:
        stop.set()
        assert await asyncio.wait_for(run, 120) == 0

    # the ban outlived nothing yet: a wrong name is refused, the right one forgiven
    wrong = evidence_cli(node1, "--forgive", "node9")
    assert wrong.returncode == 1
    assert "node9 is not a validator of this cluster (node1, node2, node3, node4)" in wrong.stderr
    forgiven = evidence_cli(node1, "--forgive", "node4")
    assert forgiven.returncode == 0, forgiven.stderr
    assert forgiven.stdout.startswith("node1 forgave node4 (it signed two conflicting messages")
    assert "Do the same on every node" in forgiven.stdout
    assert evidence_cli(node1).stdout == "node1 bans no validator for equivocation\n"
    again = evidence_cli(node1, "--forgive", "node4")
    assert again.stdout == "node1 holds no equivocation evidence against node4: nothing to do\n"

    run, stop = await run_cluster(configs, tmp_path / "logs-after")
    try:
        assert await banned_by(node1) == []
    finally:
        stop.set()
        assert await asyncio.wait_for(run, 120) == 0
