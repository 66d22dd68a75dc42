"""bench/storage_memory.py, run as a user runs it: on a real RocksDB through the real
``Store``, the node's table options keep what the table readers hold outside the block
cache small as the database grows, where RocksDB's defaults (index and filter blocks
beside the cache) grow with it; every sampled read finds its vertex."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO


def _run(tmp_path: Path, *extra: str) -> dict[str, Any]:
    output = tmp_path / f"result{len(extra)}.json"
    subprocess.run(
        [sys.executable, "-m", "bench.storage_memory", "--vertices", "30000",
         "--report-every", "10000", "--dir", str(tmp_path), "--output", str(output), *extra],
        cwd=REPO, check=True, timeout=240, capture_output=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def test_table_readers_stay_small_with_the_nodes_options_and_grow_with_rocksdbs(
    tmp_path: Path,
) -> None:
    node = _run(tmp_path)
    defaults = _run(tmp_path, "--rocksdb-defaults")
    for result in (node, defaults):
        assert [s["vertices"] for s in result["samples"]] == [10_000, 20_000, 30_000]
        assert result["samples"][-1]["table_bytes"] > 100_000_000  # flushed table files
    grown = defaults["samples"][-1]["table_readers_bytes"]
    kept = node["samples"][-1]["table_readers_bytes"]
    assert grown > 300_000  # about 22 bytes a vertex, beside the cache
    assert kept < grown / 5
    assert defaults["table_readers_bytes_per_100k_vertices"] > 1_000_000
    assert node["table_readers_bytes_per_100k_vertices"] < 300_000
    assert node["parameters"]["table_options"] == "node"
