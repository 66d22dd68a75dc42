"""cretoai.allocator: with glibc's mmap threshold fixed, large blocks freed among live
small objects leave the process; with glibc's dynamic threshold they stay resident."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cretoai import allocator
from tests.conftest import REPO

#: In a fresh interpreter (argv[1]: "fix" or "default"): one 1-MiB block freed (which
#: raises glibc's dynamic threshold above 1 MiB), then 200 1-MiB blocks each followed by
#: a small live object (from the heap), then the blocks freed: RSS before and after.
CHURN = """
import json, sys
from cretoai.allocator import fix_mmap_threshold
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
fixed = fix_mmap_threshold(512 * 1024) if sys.argv[1] == "fix" else None
first = bytearray(1 << 20)
del first
blocks, keep = [], []
for _ in range(200):
    blocks.append(bytearray(1 << 20))
    keep.append(bytearray(1000))  # above pymalloc's 512 bytes: from the heap too
filled = rss_mb()
del blocks
print(json.dumps({"fixed": fixed, "filled": filled, "freed": rss_mb()}))
"""


def churn(mode: str, **env: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "2", **env},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_leave_the_process_once_the_threshold_is_fixed() -> None:
    default = churn("default")
    # glibc's dynamic threshold: the 200 MB freed among small live objects stay resident
    assert default["freed"] > default["filled"] - 50, default
    fixed = churn("fix")
    assert fixed["fixed"] is True
    assert fixed["filled"] > 200 and fixed["freed"] < fixed["filled"] - 180, fixed


def test_an_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.ENV, "131072")
    assert allocator.fix_mmap_threshold(512 * 1024) is False
    # and the child sees it too: nothing fixed, glibc reads the operator's value
    result = churn("fix", **{allocator.ENV: "131072"})
    assert result["fixed"] is False
    assert result["freed"] < result["filled"] - 180, result  # 131072 < 1 MiB: mmapped
