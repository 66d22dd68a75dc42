"""A real Prometheus for tests: ``promtool check metrics``, a scrape config from a
cluster's ``cluster.json``, and a Prometheus server process on a loopback port.

    python -m devkit.prometheus cluster/cluster.json [--interval 1s] > prometheus.yml

The config is JSON, which Prometheus reads as YAML. One job per service
(``cretoai-gateway``, ``cretoai-consensus``, ``cretoai-transport``, ``cretoai-storage``),
one target per node, each labelled ``node``. The binaries come from Debian's
``prometheus`` package (``scripts/system-deps.sh`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from devkit.ports import free_tcp_port

#: The services whose metrics are scraped, in the order of cluster.json's ``metrics``.
SERVICES = ("gateway", "consensus", "transport", "storage")


def tool(name: str) -> str | None:
    """The path of ``promtool`` or ``prometheus`` (PATH, then /usr/bin), or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    return str(candidate) if candidate.is_file() else None


def promtool_check(text: str, *, timeout: float = 60) -> tuple[int, str]:
    """``promtool check metrics`` of one exposition page: (exit code, its output)."""
    promtool = tool("promtool")
    if promtool is None:
        raise FileNotFoundError("promtool (Debian package prometheus) is not installed")
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def promtool_check_config(path: Path, *, timeout: float = 60) -> tuple[int, str]:
    """``promtool check config`` of a Prometheus config file: (exit code, its output)."""
    promtool = tool("promtool")
    if promtool is None:
        raise FileNotFoundError("promtool (Debian package prometheus) is not installed")
    done = subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def scrape_config(cluster: Mapping[str, Any], *, interval: str = "1s") -> dict[str, Any]:
    """A Prometheus config scraping every service of every node in ``cluster`` (cluster.json)."""
    jobs = []
    for service in SERVICES:
        targets = [
            {"targets": [node["metrics"][service]], "labels": {"node": node["name"]}}
            for node in cluster["nodes"]
        ]
        jobs.append({"job_name": f"cretoai-{service}", "static_configs": targets})
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": jobs,
    }


class PrometheusServer:
    """``/usr/bin/prometheus`` on a free loopback port, with its TSDB under ``directory``.

    ``async with PrometheusServer(config, directory) as prom``: started, ready (its
    ``/-/ready`` polled, bounded), stopped (SIGTERM, then SIGKILL) at the end — only the
    process this object started."""

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.log_path = directory / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *, ready_timeout: float = 60) -> None:
        binary = tool("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus (Debian package prometheus) is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "prometheus.yml"
        config_path.write_text(json.dumps(self.config, indent=2) + "\n")
        self.port = free_tcp_port()
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1h",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"prometheus exited ({self.process.returncode}):\n{self.log()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {ready_timeout:.0f}s\n{self.log()}")
            await asyncio.sleep(0.2)

    def log(self, lines: int = 30) -> str:
        """The last lines of the server's own log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> PrometheusServer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data`` (raises on an error status)."""
        assert self.session is not None, "not started"
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"GET /api/v1/{path} {params}: {body}")
        return body["data"]

    async def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (labels, health, last error)."""
        data = await self.api("targets", state="active")
        return list(data["activeTargets"])

    async def query(self, expr: str, *, by: str = "node") -> dict[str, float]:
        """An instant vector query: the label ``by``'s value -> the sample's value (one
        series per value, else ValueError; a series without the label is keyed "")."""
        data = await self.api("query", query=expr)
        out: dict[str, float] = {}
        for item in data["result"]:
            key = item["metric"].get(by, "")
            if key in out:
                raise ValueError(f"{expr}: several series with {by}={key!r}: {data['result']}")
            out[key] = float(item["value"][1])
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A prometheus.yml for a cluster.json.")
    parser.add_argument("cluster_json", type=Path)
    parser.add_argument("--interval", default="5s", help="scrape interval (default 5s)")
    args = parser.parse_args(argv)
    cluster = json.loads(args.cluster_json.read_text())
    json.dump(scrape_config(cluster, interval=args.interval), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
