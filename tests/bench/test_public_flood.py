"""bench/public_flood.py: a short real run against a one-node cluster (real processes), with
bounds small enough that the flood and the subscribers meet them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

#: Long enough that the bystander surely comes while the idle connections are held (at
#: 500 ms a loaded CI machine let one reach the timeout first: the count flaked).
IDLE_TIMEOUT_MS = 2000


def test_a_small_flood_subscribers_readers_and_idle_connections_meet_the_bounds(
    tmp_path: Path,
) -> None:
    out = tmp_path / "flood.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.public_flood",
            "--connections",
            "2",
            "--calls",
            "20",
            "--message-bytes",
            "600000",
            "--subscribers",
            "3",
            "--history-batches",
            "2",
            "--readers",
            "3",
            "--hold",
            "0",
            "--idle-connections",
            "6",
            "--idle-sources",
            "2",
            "--set",
            "gateway.max_connections=3",
            "--set",
            "gateway.max_connections_per_client=2",
            "--set",
            f"gateway.idle_timeout_ms={IDLE_TIMEOUT_MS}",
            "--set",
            "gateway.grpc_max_concurrent_rpcs=2",
            "--set",
            "gateway.max_streams=2",
            "--set",
            "gateway.max_answer_bytes_in_progress=1",
            "--output",
            str(out),
        ],
        cwd=REPO,
        check=True,
        timeout=180,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["settings"]["grpc_max_concurrent_rpcs"] == 2
    step, subscribers, pages, vertices, idle = result["steps"]
    assert step["calls"] == 40 and sum(step["outcomes"].values()) == 40
    assert step["message_bytes"] > 500_000
    # 40 calls at once against 2 slots: some are refused before they are read
    assert step["outcomes"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert step["peak_rss_mb"] >= step["rss_before_mb"] > 0
    assert step["after"] == {"submit_status": 1, "readyz": 200}
    # 3 subscribers from seq 1 against 2 slots: the third is refused before its upgrade
    assert subscribers["history_seq"] >= 2
    assert subscribers["outcomes"] == {"open": 2, "refused 429": 1}
    assert subscribers["after"] == {"submit_status": 1, "readyz": 200}
    # reads: one at a time fits the 1-byte answer budget; the others at once get 429
    assert (pages["reads"], pages["readers"], vertices["readers"]) == ("pages", 3, 30)
    for reads in (pages, vertices):
        assert set(reads["outcomes"]) <= {"200", "429"} and reads["outcomes"]["200"] >= 1
        assert sum(reads["outcomes"].values()) == reads["readers"]
    assert vertices["outcomes"]["429"] >= 1
    # 6 half request heads from 2 addresses, 3 connections at most: 3 held, 3 refused at
    # once; a bystander's connection meanwhile is served, and the oldest connection of
    # the address holding 2 closed for it; the 2 others held until the idle timeout
    assert (idle["idle_connections"], idle["idle_sources"]) == (6, 2)
    assert idle["outcomes"] == {
        "closed after being held": 2,
        "closed at once": 1,
        "refused 429": 3,
    }
    assert idle["readyz_while_held"] == 200
    held = idle["held_until_closed_s"]
    assert 0.9 * IDLE_TIMEOUT_MS / 1000 <= held["first"] <= held["last"]
    assert idle["gateway_fds_held"] - idle["gateway_fds_before"] <= 6
    assert idle["after"] == {"submit_status": 1, "readyz": 200}
