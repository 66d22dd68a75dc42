"""Real transport services on loopback for tests and benchmarks: keys, configs, stubs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import tomli_w

from cretoai import registry
from cretoai.channels import service_channel
from cretoai.config import NodeConfig, parse_config, to_toml_dict
from cretoai.crypto import write_keypair
from cretoai.crypto.keys import read_public_key
from cretoai.serving import GrpcService
from cretoai.v1 import transport_pb2, transport_pb2_grpc
from devkit.ports import free_tcp_port, free_udp_ports
from services.transport.node import TransportNode
from services.transport.service import build

REPO = str(Path(__file__).resolve().parents[1])

#: Fast timers so that tests see reconnections and timeouts quickly.
FAST_TRANSPORT: dict[str, Any] = {
    "reconnect_min_ms": 50,
    "reconnect_max_ms": 500,
    "handshake_timeout_ms": 2_000,
    "keepalive_ms": 1_000,
    "idle_timeout_ms": 10_000,
}


@dataclass
class ClusterSpec:
    """Keys and per-node config dicts for an n-member cluster on loopback."""

    directory: Path
    names: list[str]
    ports: list[int]
    public_keys: list[bytes]
    node_ids: list[str]
    data: list[dict[str, Any]] = field(default_factory=list)

    def config(self, index: int) -> NodeConfig:
        return parse_config(self.data[index], self.directory / self.names[index] / "node.toml")

    def write(self, index: int) -> Path:
        cfg = self.config(index)
        path = cfg.source
        path.write_text(tomli_w.dumps(to_toml_dict(cfg)))
        return path


def make_cluster(
    directory: Path,
    n: int,
    *,
    transport: dict[str, Any] | None = None,
    fault_injection: bool = False,
    extra_members: int = 0,
) -> ClusterSpec:
    """``n`` nodes (plus ``extra_members`` listed members that tests may leave down)."""
    total = n + extra_members
    names = [f"node{i + 1}" for i in range(total)]
    ports = free_udp_ports(total)
    public_keys = []
    node_ids = []
    for name in names:
        _, nid = write_keypair(directory / name)
        public_keys.append(read_public_key(directory / name / "node.pub"))
        node_ids.append(nid)
    validators = [
        {"name": names[i], "public_key": public_keys[i].hex(), "address": f"127.0.0.1:{ports[i]}"}
        for i in range(total)
    ]
    spec = ClusterSpec(
        directory=directory, names=names, ports=ports, public_keys=public_keys, node_ids=node_ids
    )
    for name in names:
        spec.data.append(
            {
                "node": {"name": name, "key": str(directory / name / "node.key")},
                "validators": [dict(v) for v in validators],
                "transport": {
                    "listen": "127.0.0.1:0",
                    "metrics": "",
                    **FAST_TRANSPORT,
                    **(transport or {}),
                },
                "crypto": {"backend": "cryptography"},
                "fault_injection": {"enabled": fault_injection},
            }
        )
    return spec


@dataclass(frozen=True)
class Sent:
    #: Queued for every destination.
    queued: bool
    #: How many peers it was queued for (broadcast: up to n - 1).
    peers: int


@dataclass
class RunningTransport:
    cfg: NodeConfig
    node: TransportNode
    service: GrpcService
    channel: grpc.aio.Channel
    stub: transport_pb2_grpc.TransportStub

    @property
    def node_id(self) -> str:
        return self.node.node_id

    async def stop(self) -> None:
        await self.channel.close()
        await self.service.stop()

    async def send(self, envelope: transport_pb2.Envelope) -> Sent:
        """Queue ``envelope`` as the Exchange stream does, but raising for a bad destination
        or size (UnknownPeer, InvalidRequest); then let the loop run (the transport sends)."""
        queued, peers = self.node.send(envelope)
        await asyncio.sleep(0)
        return Sent(queued=queued, peers=peers)

    async def peers(self) -> dict[str, transport_pb2.Peer]:
        reply = await self.stub.ListPeers(transport_pb2.ListPeersRequest(), timeout=5)
        return {p.node_id: p for p in reply.peers}

    async def counters(self) -> dict[str, int]:
        reply = await self.stub.GetStats(transport_pb2.GetTransportStatsRequest(), timeout=5)
        return dict(reply.counters)


async def start_transport(cfg: NodeConfig, *, metrics: bool = False) -> RunningTransport:
    """The transport service of ``cfg`` as it runs in a node (its ``build``), in this
    process, its gRPC API on a free port (and its metrics on one, with ``metrics``)."""
    transport = dataclasses.replace(
        cfg.transport, listen="127.0.0.1:0", metrics="127.0.0.1:0" if metrics else ""
    )
    cfg = dataclasses.replace(cfg, transport=transport)
    service = await build(cfg)
    service.grace = 1.0
    await service.start()
    channel = service_channel(f"127.0.0.1:{service.port}", max_message_bytes=64 * 1024 * 1024)
    return RunningTransport(
        cfg=cfg,
        node=service.transport,
        service=service,
        channel=channel,
        stub=transport_pb2_grpc.TransportStub(channel),
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` (an RPC-level observation) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def all_connected(nodes: list[RunningTransport], timeout: float = 15.0) -> None:
    async def check() -> bool:
        for node in nodes:
            peers = await node.peers()
            for other in nodes:
                if other is not node and not peers[other.node_id].connected:
                    return False
        return True

    await eventually(check, timeout=timeout, what="every pair connected")


@dataclass
class TransportProcess:
    """``python -m services.transport --config F`` as a real child process."""

    config: Path
    grpc_port: int
    node_id: str
    proc: asyncio.subprocess.Process | None = None
    channel: grpc.aio.Channel | None = None

    @property
    def stub(self) -> transport_pb2_grpc.TransportStub:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        return transport_pb2_grpc.TransportStub(self.channel)

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *registry.service("transport").command(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=REPO,
        )

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"transport process exited with {self.proc.returncode}")
            try:
                await self.stub.ListPeers(transport_pb2.ListPeersRequest(), timeout=0.5)
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually(ready, timeout=timeout, what="transport process serving")

    async def peers(self) -> dict[str, transport_pb2.Peer]:
        reply = await self.stub.ListPeers(transport_pb2.ListPeersRequest(), timeout=5)
        return {p.node_id: p for p in reply.peers}

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(sig)

    async def stop(self, *, kill: bool = False, timeout: float = 10.0) -> int:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc is not None and proc.returncode is not None else 0
        import signal as signals

        proc.send_signal(signals.SIGKILL if kill else signals.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            return await proc.wait()


def spawnable(spec: ClusterSpec, index: int) -> TransportProcess:
    """Write node ``index``'s config with a fixed gRPC port, ready to run as a process."""
    port = free_tcp_port()
    spec.data[index]["transport"]["listen"] = f"127.0.0.1:{port}"
    return TransportProcess(config=spec.write(index), grpc_port=port, node_id=spec.node_ids[index])
