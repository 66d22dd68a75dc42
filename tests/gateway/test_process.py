"""``python -m services.gateway`` as a process: serves HTTP, gRPC health and metrics; stops
cleanly on SIGTERM (HTTP included). No consensus or storage runs: it is alive, not ready."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO
from tests.gateway.support import TIMEOUT

pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def spawn(
    config: Path, env: dict[str, str], log: Path, open_files: int | None = None
) -> subprocess.Popen[bytes]:
    """The gateway process; ``open_files``: its soft and hard limit of open files."""

    def limit() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "services.gateway", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=limit,
        )


async def until(check: Callable[[], Any], proc: subprocess.Popen[bytes]) -> None:
    """Poll ``check`` (a coroutine function) until it is truthy; bounded, fails if proc exits."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited"
        try:
            if await check():
                return
        except (aiohttp.ClientError, grpc.aio.AioRpcError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not come up")


async def test_gateway_process_serves_and_stops_cleanly_without_a_validator_key(
    cluster_factory: Any,
) -> None:
    config = cluster_factory(1).nodes[0].config
    http, grpc_port, metrics, consensus, storage = free_ports(5)
    env = {
        **os.environ,
        "CRETOAI_GATEWAY_HTTP": f"127.0.0.1:{http}",
        "CRETOAI_GATEWAY_GRPC": f"127.0.0.1:{grpc_port}",
        "CRETOAI_GATEWAY_METRICS": f"127.0.0.1:{metrics}",
        "CRETOAI_CONSENSUS_LISTEN": f"127.0.0.1:{consensus}",
        "CRETOAI_STORAGE_LISTEN": f"127.0.0.1:{storage}",
        # The gateway never loads the validator key: here there is none to load.
        "CRETOAI_NODE_KEY": str(config.parent / "no-such-validator.key"),
    }
    log = config.parent / "gateway.log"
    proc = spawn(config, env, log)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as client:
            base = f"http://127.0.0.1:{http}"

            async def healthy() -> bool:
                async with client.get(base + "/healthz") as resp:
                    return resp.status == 200

            await until(healthy, proc)
            async with client.get(base + "/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["consensus"] == "unreachable"
            async with client.post(base + "/v1/vertices", json={"payload": ""}) as resp:
                assert resp.status == 503
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="cretoai.v1.Gateway"), timeout=TIMEOUT
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            async with client.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                text = await resp.text()
            requests = 'method="POST",route="/v1/vertices",status="503"'
            assert f"cretoai_gateway_http_requests_total{{{requests}}} 1.0" in text
            outcome = 'api="http",outcome="consensus_unavailable"'
            assert f"cretoai_gateway_submissions_total{{{outcome}}} 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()
        with socket.socket() as probe:  # the HTTP site is closed too
            assert probe.connect_ex(("127.0.0.1", http)) != 0
        text = log.read_text()
        assert "http serving" in text and "stopped" in text and "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


async def test_a_gateway_short_of_file_descriptors_warns_at_start(cluster_factory: Any) -> None:
    """With a hard limit of 1,024 open files, below what the default connection bounds
    need (two listeners of 1,024 and a reserve), the gateway serves and says so."""
    config = cluster_factory(1).nodes[0].config
    http, grpc_port, consensus, storage = free_ports(4)
    env = {
        **os.environ,
        "CRETOAI_GATEWAY_HTTP": f"127.0.0.1:{http}",
        "CRETOAI_GATEWAY_GRPC": f"127.0.0.1:{grpc_port}",
        "CRETOAI_GATEWAY_METRICS": "",
        "CRETOAI_CONSENSUS_LISTEN": f"127.0.0.1:{consensus}",
        "CRETOAI_STORAGE_LISTEN": f"127.0.0.1:{storage}",
    }
    log = config.parent / "gateway.log"
    proc = spawn(config, env, log, open_files=1024)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as client:

            async def healthy() -> bool:
                async with client.get(f"http://127.0.0.1:{http}/healthz") as resp:
                    return resp.status == 200

            await until(healthy, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()
        text = log.read_text()
        assert "the open files limit is below what gateway.max_connections needs" in text
        assert "limit=1024 needed=2368" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
