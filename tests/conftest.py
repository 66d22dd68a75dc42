"""Fixtures shared by every test layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devkit.otlp_receiver import OtlpReceiver
from devkit.ports import free_base_port
from node.clusterinit import ClusterLayout, init_cluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cluster_factory(tmp_path: Path):
    """Make an initialised N-node cluster directory on free loopback ports."""

    def make(nodes: int = 4, **kwargs: object) -> ClusterLayout:
        base = free_base_port(20 * nodes + 20)
        return init_cluster(
            tmp_path / f"cluster{nodes}",
            nodes,
            http_port=base + 20 * nodes,
            base_port=base,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def receiver():
    """An OTLP/gRPC trace receiver on a free loopback port (in place of Jaeger)."""
    r = OtlpReceiver()
    r.start()
    yield r
    r.stop()


def cli(*args: str) -> list[str]:
    """Argv running the installed CLI with this interpreter."""
    return [sys.executable, "-m", "node.cli", *args]
