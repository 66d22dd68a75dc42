"""Fixtures of the storage tests: a real storage service on port 0 over a temp RocksDB."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devkit.storage import make_config
from tests.storage.support import Running, start_service


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    service = await start_service(make_config(tmp_path))
    try:
        yield service
    finally:
        await service.stop()
