"""A failed replica task is never silent. Real processes, real RocksDB, real gRPC.

The fault is a real I/O error of the storage service's disk: its RLIMIT_FSIZE is
lowered to 0 while it runs (``prlimit``), so RocksDB's next WAL append fails
with EFBIG ("File too large"). The storage service answers that write with
INTERNAL ("write failed: ..."), which the consensus does not retry (only
UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and CANCELLED are transient),
and halts its writes: every later write is UNAVAILABLE until it is restarted.
The consensus's next persist (one submitted vertex: with one validator the node
orders alone; in a 4-node cluster every backup persists its votes) fails.

Expected: the consensus reports NOT_SERVING, exits with code 1 and one line
``error: consensus failed: ...`` naming the call and the storage's error. Under
the supervisor (``cretoai-node start``, ``cretoai-node cluster up``) it is
restarted, waits (retrying) while storage is still halted, and once storage is
restarted without the fault the node finalizes again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cretoai import registry
from cretoai.channels import service_channel, service_endpoint
from cretoai.config import NodeConfig, load_config
from cretoai.v1 import consensus_pb2, consensus_pb2_grpc, vertex_pb2
from devkit.ports import free_base_port
from node.clusterinit import ClusterLayout
from tests.conftest import cli
from tests.gateway.support import client_key, signed_body
from tests.support.processes import Process, wait_serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SERVING = health_pb2.HealthCheckResponse.SERVING
#: How the consensus's one-line error starts (``cretoai.entry``, ``GrpcService.run``).
FAILED = "error: consensus failed: "


# ------------------------------------------------------------------------------ processes


def children_of(parent: int) -> dict[int, bytes]:
    """The live processes that ``parent`` started: pid -> raw command line."""
    found: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # after "pid (comm)": state, ppid
        if ppid == parent and cmdline:  # a zombie has no command line
            found[int(entry.name)] = cmdline
    return found


def services_of(parent: int, config: Path) -> dict[str, int]:
    """The live service processes of the node of ``config`` that ``parent`` started."""
    found: dict[str, int] = {}
    for pid, cmdline in children_of(parent).items():
        argv = cmdline.split(b"\0")
        if str(config).encode() in argv and b"-m" in argv:
            module = argv[argv.index(b"-m") + 1].decode()
            if module.startswith("services."):
                found[module.removeprefix("services.")] = pid
    return found


def kill_leftovers(processes: dict[int, bytes]) -> list[bytes]:
    """SIGKILL those of ``processes`` (pid -> command line) still running; returns them."""
    killed = []
    for pid, cmdline in processes.items():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() != cmdline:
                continue  # exited (a zombie) or the pid was reused
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
        killed.append(cmdline)
    return killed


@contextlib.asynccontextmanager
async def supervising(name: str, argv: list[str], cwd: Path, ready: str) -> AsyncIterator[Process]:
    """A supervisor, once it printed ``ready``; at the end it is stopped (Ctrl-C) and must
    stop every service process and exit 0."""
    supervisor = await Process.start(name, argv, cwd)
    try:
        await supervisor.wait_line(ready, timeout=120)
        yield supervisor
    finally:
        running = children_of(supervisor.pid)
        code = await supervisor.stop(signal.SIGINT)
        left = kill_leftovers(running)
    assert code == 0 and supervisor.err[-1] == "stopped", supervisor.output()
    assert not left, f"still running after the supervisor stopped: {left}"


def fail_file_writes(pid: int) -> None:
    """From now on, every write of process ``pid`` that would grow a file fails with EFBIG.

    Python ignores SIGXFSZ, so the storage service sees the error, as from a failing disk.
    """
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))


async def wait_until(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(every)


# ------------------------------------------------------------------------------ health


def channel_to(cfg: NodeConfig, service: str) -> grpc.aio.Channel:
    """A channel to a service of the node, with the node's internal TLS (as its peers)."""
    address, tls = service_endpoint(cfg, service)
    return service_channel(address, tls=tls)


async def health(cfg: NodeConfig, service: str) -> str:
    """The service's overall health: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    async with channel_to(cfg, service) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            return "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else code.name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def node_health(config: Path, cwd: Path) -> tuple[int, dict[str, str]]:
    """``cretoai-node health --json``: its exit code and each service's status."""
    proc = await asyncio.create_subprocess_exec(
        *cli("health", "--config", str(config), "--timeout", "1", "--json"),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert out, err.decode()
    statuses: dict[str, str] = json.loads(out)["services"]
    assert proc.returncode is not None
    return proc.returncode, statuses


async def next_status(watch: Any, timeout: float) -> str:
    """The next status a health Watch reports, within ``timeout``."""
    try:
        reply = await asyncio.wait_for(watch.read(), timeout)
    except TimeoutError:
        raise AssertionError(f"health stayed SERVING for {timeout:.0f}s") from None
    assert reply is not grpc.aio.EOF, "the health watch ended without a status"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# ------------------------------------------------------------------------------ clients


def _http(method: str, url: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def http(
    method: str, url: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(_http, method, url, body)


async def submit(gateway: str, payload: bytes, *, wait: bool, timeout: float = 30) -> Any:
    """POST a node-signed vertex; retried while the gateway answers 503 (consensus not
    connected or not ready yet). Returns the 200/202 reply."""
    url = f"{gateway}/v1/vertices" + ("?wait=true" if wait else "")
    body = {"payload": base64.b64encode(payload).decode(), "parents": []}
    deadline = time.monotonic() + timeout
    while True:
        code, reply = await http("POST", url, body)
        if code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert code == (200 if wait else 202), (code, reply)
    return reply


def metrics(cfg: NodeConfig) -> str:
    with urllib.request.urlopen(f"http://{cfg.consensus.metrics}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
        return text


def failure_line(lines: list[str]) -> str:
    """The consensus's ``error:`` line: one line, naming the failed call and why.

    ``lines`` may go on with other log records (``ts=...``), never with more of it.
    """
    at = next((i for i, line in enumerate(lines) if line.startswith(FAILED)), None)
    assert at is not None, "\n".join(lines)
    line = lines[at]
    assert "'persist'" in line and "INTERNAL" in line, line
    assert "write failed" in line and "File too large" in line, line
    assert at + 1 == len(lines) or lines[at + 1].startswith("ts="), lines[at : at + 3]
    return line


@pytest.fixture
def node(cluster_factory: Callable[..., ClusterLayout]) -> tuple[Path, NodeConfig]:
    """A one-validator node (it orders and finalizes alone): its config file and config."""
    config = cluster_factory(1).nodes[0].config
    return config, load_config(config)


# ------------------------------------------------------------------------------ tests


async def start_service(config: Path, cfg: NodeConfig, service: str) -> Process:
    """One service of the node, on its own, once it serves."""
    argv = (
        # the consensus as an operator runs one service (e.g. in a container)
        cli("start", "--config", str(config), "--service", service)
        if service == "consensus"
        else registry.service(service).command(config)
    )
    proc = await Process.start(service, argv, config.parent)
    await wait_serving(cfg, service, proc)
    return proc


def submission(payload: bytes) -> consensus_pb2.SubmitVertexRequest:
    _, vertex = signed_body(client_key(), payload)
    return consensus_pb2.SubmitVertexRequest(vertex=vertex)


async def accept(stub: consensus_pb2_grpc.ConsensusStub, payload: bytes) -> None:
    """Submit to the consensus; retried while it is UNAVAILABLE (transport link not up)."""
    request = submission(payload)

    async def accepted() -> bool:
        try:
            await stub.SubmitVertex(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
        return True

    await wait_until("the vertex is accepted", accepted, 30)


async def test_a_storage_write_error_makes_the_consensus_process_fail(
    node: tuple[Path, NodeConfig],
) -> None:
    config, cfg = node
    started: dict[str, Process] = {}
    try:
        for service in registry.NAMES[:-1]:  # in start order, all but the gateway
            started[service] = await start_service(config, cfg, service)
        storage, consensus = started["storage"], started["consensus"]

        async with channel_to(cfg, "consensus") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert await next_status(watch, 10) == "SERVING"

            fail_file_writes(storage.pid)
            await accept(consensus_pb2_grpc.ConsensusStub(channel), b"written to a failing disk")

            # The persist of its PRE-PREPARE fails with INTERNAL: NOT_SERVING at once.
            assert await next_status(watch, 30) == "NOT_SERVING", consensus.output()
            # Our watch holds the server in its drain, so the failure can be read now.
            text = await asyncio.to_thread(metrics, cfg)
            assert 'cretoai_consensus_replica_failures_total{kind="error"} 1.0' in text
        # (closing the channel ends the watch: the server stops)

        assert await consensus.wait(timeout=30) == 1, consensus.output()
        assert failure_line(consensus.err) == consensus.err[-1], "its last word"
        logged = "\n".join(consensus.err)
        assert "replica task failed" in logged and "Traceback" in logged, logged

        # The storage service halted its writes on the error and says so.
        await storage.wait_line("storage writes halted", stderr=True, timeout=10)
        code, statuses = await node_health(config, config.parent)
        assert code == 1
        assert statuses["consensus"] == "UNREACHABLE", statuses
        assert statuses["storage"] == "NOT_SERVING", statuses
        assert statuses["transport"] == "SERVING", statuses
    finally:
        for proc in reversed(started.values()):
            await proc.stop()
    assert started["storage"].proc.returncode == 0, started["storage"].output()


class ConsensusDied(AssertionError):
    """The consensus stopped answering (its replica task failed)."""


async def test_a_client_giving_up_while_storage_is_halted_does_not_kill_the_consensus(
    node: tuple[Path, NodeConfig],
) -> None:
    config, cfg = node
    started: dict[str, Process] = {}
    try:
        for service in registry.NAMES[:-1]:  # in start order, all but the gateway
            started[service] = await start_service(config, cfg, service)
        fail_file_writes(started["storage"].pid)
        async with channel_to(cfg, "consensus") as channel:
            await accept(consensus_pb2_grpc.ConsensusStub(channel), b"written to a failing disk")
        assert await started["consensus"].wait(timeout=30) == 1

        # Restarted while storage is still halted: its writes are retried meanwhile.
        consensus = started["consensus"] = await start_service(config, cfg, "consensus")
        async with channel_to(cfg, "consensus") as channel:
            stub = consensus_pb2_grpc.ConsensusStub(channel)
            tries = iter(range(1000))

            async def gave_up() -> bool:  # a client's deadline passes while it waits
                try:
                    await stub.SubmitVertex(submission(b"%d" % next(tries)), timeout=1)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        return True
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return False

            await wait_until("a submission times out", gave_up, 30)

            # storage comes back without the fault; the replica task goes on
            assert await started["storage"].stop() == 0
            started["storage"] = await start_service(config, cfg, "storage")
            replies: list[consensus_pb2.SubmitVertexResponse] = []

            async def accepted_after() -> bool:  # storage reconnects within moments
                if consensus.proc.returncode is not None:
                    raise ConsensusDied(consensus.output())
                try:
                    replies.append(await stub.SubmitVertex(submission(b"after"), timeout=5))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    return False
                return True

            await wait_until("a submission is accepted after storage is back", accepted_after, 30)
            assert replies[-1].status == vertex_pb2.VERTEX_STATUS_PENDING, replies
        assert consensus.proc.returncode is None
        assert await health(cfg, "consensus") == "SERVING"
    finally:
        for proc in reversed(started.values()):
            await proc.stop()


class NotFinalized(AssertionError):
    """The recovered node did not finalize a new vertex."""


async def fail_and_recover(
    supervisor: Process, config: Path, *, logs: Path | None, peer: NodeConfig | None
) -> None:
    """The scenario under a supervisor, at the node of ``config``.

    ``logs``: the node's log directory (``cluster up``), or None when the services'
    output is the supervisor's (``start``). ``peer``: another node of the cluster,
    which must finalize while this one fails.
    """
    cfg = load_config(config)
    name, cwd = cfg.node.name, config.parent
    gateway = f"http://{cfg.gateway.http}"

    def services() -> dict[str, int]:
        return services_of(supervisor.pid, config)

    before = services()
    assert sorted(before) == sorted(registry.NAMES), before
    assert (await submit(gateway, b"before the fault", wait=True))["status"] == "finalized"

    async with channel_to(cfg, "consensus") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert await next_status(watch, 10) == "SERVING"
        fail_file_writes(before["storage"])
        if peer is None:  # alone: the vertex is ordered here, and its persist fails
            await submit(gateway, b"written to a failing disk", wait=False)
        else:  # the others go on without it (f = 1)
            reply = await submit(f"http://{peer.gateway.http}", b"during", wait=True)
            assert reply["status"] == "finalized", reply
        assert await next_status(watch, 30) == "NOT_SERVING", supervisor.output()

    # It exits 1, and the supervisor says it restarts it; its last word is one line.
    event = await supervisor.wait_line(f"{name}/consensus exited with code 1", timeout=30)
    assert "restarting" in event, event
    if logs is None:
        await supervisor.wait_line(FAILED, stderr=True, timeout=10)
        failure_line(supervisor.err)
    else:
        failure_line((logs / "consensus.log").read_text().splitlines())

    async def restarted() -> bool:
        pid = services().get("consensus")
        return pid is not None and pid != before["consensus"]

    await wait_until("a new consensus process", restarted, 30)
    await wait_serving(cfg, "consensus", supervisor, 30)
    consensus = services()["consensus"]

    # Storage stays halted until it restarts: the node does not serve, and the new
    # consensus waits for it (a halted store answers UNAVAILABLE: retried, not fatal).
    code, statuses = await node_health(config, cwd)
    assert code == 1 and statuses["storage"] == "NOT_SERVING", statuses
    assert statuses["consensus"] == "SERVING", statuses

    # The fault is removed: storage restarts (the supervisor's child has no limit).
    os.kill(before["storage"], signal.SIGTERM)
    await supervisor.wait_line(f"{name}/storage exited with code 0", timeout=30)

    async def node_serves() -> bool:
        return (await node_health(config, cwd))[0] == 0

    await wait_until("cretoai-node health exits 0", node_serves, 60)
    now = services()
    assert now["consensus"] == consensus, "the consensus did not fail again"
    assert now["storage"] != before["storage"], now
    assert sum(f"{name}/consensus exited" in line for line in supervisor.out) == 1

    # ... and the node finalizes again.
    try:
        after = await submit(gateway, b"after the fault", wait=True)
    except AssertionError as exc:
        raise NotFinalized(str(exc)) from None
    assert after["status"] == "finalized", after


async def test_the_supervisor_restarts_a_failed_consensus_and_a_single_node_recovers(
    node: tuple[Path, NodeConfig],
) -> None:
    config, cfg = node
    argv = cli("start", "--config", str(config))
    ready = f"{cfg.node.name} ready"
    async with supervising("cretoai-node start", argv, config.parent, ready) as supervisor:
        await fail_and_recover(supervisor, config, logs=None, peer=None)


@pytest.mark.cluster
async def test_a_failed_consensus_of_a_cluster_node_is_restarted_and_catches_up(
    tmp_path: Path,
) -> None:
    base = free_base_port(20 * 4 + 20)
    directory = tmp_path / "cluster"
    argv = cli("cluster", "up", "--nodes", "4", "--dir", str(directory),
               "--base-port", str(base), "--http-port", str(base + 20 * 4))  # fmt: skip
    async with supervising("cretoai-node cluster up", argv, tmp_path, "press Ctrl-C") as supervisor:
        # node2 is a backup of view 0: the others go on finalizing without it
        await fail_and_recover(
            supervisor,
            directory / "node2" / "node.toml",
            logs=directory / "node2" / "logs",
            peer=load_config(directory / "node1" / "node.toml"),
        )
