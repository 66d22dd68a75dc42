"""Fixtures of the gateway tests: a node with real gateway and storage, a stand-in consensus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cretoai.config import NodeConfig
from tests.gateway.support import Node, node_config, start_node


@pytest.fixture
def make_config(cluster_factory: Any) -> Callable[..., NodeConfig]:
    """Node 1's config of a fresh one-node cluster on free ports, with gateway overrides."""

    def make(**gateway: Any) -> NodeConfig:
        layout = cluster_factory(1)
        return node_config(layout.nodes[0].config, **{"wait_timeout_ms": 1500, **gateway})

    return make


@pytest.fixture
async def node(make_config: Callable[..., NodeConfig]) -> AsyncIterator[Node]:
    async with start_node(make_config()) as running:
        yield running
