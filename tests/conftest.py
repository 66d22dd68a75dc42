"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from node.clusterinit import ClusterLayout, init_cluster

REPO = Path(__file__).resolve().parents[1]


def free_base_port(count: int = 20 * 8) -> int:
    """A base port whose next ``count`` TCP+UDP loopback ports are free right now."""
    import random

    from node.clusterinit import ports_free

    rng = random.Random(os.getpid() ^ os.urandom(2)[0])
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count, 20)
        if not ports_free("127.0.0.1", list(range(base, base + count, 7))):
            return base
    raise RuntimeError("no free port range on loopback")


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


def cli(*args: str) -> list[str]:
    """Argv running the installed CLI with this interpreter."""
    return [sys.executable, "-m", "node.cli", *args]
