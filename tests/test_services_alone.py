"""Each service on its own: a one-node cluster whose four services are started one by
one as separate ``cretoai-node start --service NAME`` processes (as containers run
them), in start order, each once the previous serves; a vertex submitted through the
gateway's REST API is finalized; SIGTERM in reverse order stops each cleanly (exit 0)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import aiohttp
import pytest

from cretoai import registry
from cretoai.config import load_config
from cretoai.vertex import vertex_hash
from devkit.ports import free_base_port
from tests.conftest import REPO, cli
from tests.gateway.support import client_key, signed_body
from tests.support.processes import Process, wait_serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def init_one_node(directory: Path) -> Path:
    """``cretoai-node cluster init --nodes 1``: the node's config file."""
    base = free_base_port(40)
    proc = await Process.start(
        "cluster init",
        cli("cluster", "init", "--nodes", "1", "--dir", str(directory),
            "--base-port", str(base), "--http-port", str(base + 30)),
        REPO,
    )  # fmt: skip
    assert await proc.wait(60) == 0, proc.output()
    return directory / "node1" / "node.toml"


async def test_the_four_services_run_each_on_its_own(tmp_path: Path) -> None:
    config = await init_one_node(tmp_path / "cluster")
    cfg = load_config(config)
    running: list[Process] = []
    try:
        for name in registry.NAMES:
            argv = cli("start", "--config", str(config), "--service", name)
            proc = await Process.start(name, argv, REPO)
            running.append(proc)
            await wait_serving(cfg, name, proc, timeout=60)

        body, vertex = signed_body(client_key(), b"each service on its own")
        url = f"http://{cfg.gateway.http}/v1/vertices?wait=true"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(url, json=body) as reply,
        ):
            text = await reply.text()
        assert reply.status == 200, text
        answer = json.loads(text)
        assert answer["status"] == "finalized" and answer["seq"] >= 1, answer
        assert answer["hash"] == vertex_hash(vertex).hex()

        # what the services wrote is not for every user of the host (umask 027)
        readable = [
            path
            for path in cfg.data_dir.rglob("*")
            if path.stat().st_mode & 0o007 and not path.is_symlink()
        ]
        assert readable == [], readable

        codes = {}
        for proc in reversed(running):  # the gateway first
            codes[proc.name] = await proc.stop(signal.SIGTERM, timeout=30)
        assert codes == {name: 0 for name in reversed(registry.NAMES)}, "\n".join(
            p.output() for p in running
        )
        # storage fixed glibc's mmap and trim thresholds (cretoai/allocator.py); the others did not
        said = {p.name: "glibc mmap and trim thresholds fixed" in p.output() for p in running}
        assert said == {name: name == "storage" for name in registry.NAMES}, said
    finally:
        for proc in reversed(running):
            await proc.stop(signal.SIGKILL, timeout=10)
