"""Fixtures: transport clusters on loopback, stopped at the end of each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from devkit.transport import ClusterSpec, RunningTransport, make_cluster, start_transport

Starter = Callable[..., Awaitable[tuple[ClusterSpec, list[RunningTransport]]]]


@pytest.fixture
async def transports(tmp_path: Path) -> AsyncIterator[Starter]:
    """``await transports(n, **make_cluster_kwargs)`` → (spec, running services)."""
    running: list[RunningTransport] = []

    async def start(n: int, **kwargs: Any) -> tuple[ClusterSpec, list[RunningTransport]]:
        spec = make_cluster(tmp_path, n, **kwargs)
        started = []
        for i in range(n):
            node = await start_transport(spec.config(i))
            running.append(node)
            started.append(node)
        return spec, started

    yield start
    for node in running:
        await node.stop()
