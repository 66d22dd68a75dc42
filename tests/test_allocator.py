"""cretoai.allocator: with glibc's mmap threshold fixed, large blocks freed among live
small objects leave the process; with glibc's dynamic threshold they stay resident. With
the threshold above a block size (and the trim threshold too), blocks of that size are
reused from the heap instead of being faulted in again each time."""

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


def in_fresh_interpreter(code: str, mode: str, **env: str) -> dict[str, float]:
    """What ``code`` prints (JSON), run with ``mode`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "2", **env},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout)
    return result


def churn(mode: str, **env: str) -> dict[str, float]:
    return in_fresh_interpreter(CHURN, mode, **env)


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


#: In a fresh interpreter (argv[1]: "low" or "high"): 50 rounds of a 1-MiB buffer written
#: whole and freed, as storage's per-batch buffers; the page faults those rounds cost.
REUSE = """
import json, resource, sys
from cretoai.allocator import fix_mmap_threshold
if sys.argv[1] == "low":
    fixed = fix_mmap_threshold(512 * 1024)
else:
    fixed = fix_mmap_threshold(2 << 20, trim_threshold=8 << 20)
keep = []
for _ in range(3):
    buf = b"\\x01" * (1 << 20)
    keep.append(bytearray(1000))
    del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    buf = b"\\x01" * (1 << 20)
    keep.append(bytearray(1000))
    del buf
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"fixed": fixed, "faults": after - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_buffer_below_the_threshold_is_reused_without_page_faults() -> None:
    """storage's thresholds (services/storage/options.py): a batch-sized buffer made and
    freed again and again costs no page faults; below a 512-KiB threshold each one was a
    fresh mapping, 256 faults a MiB."""

    low, high = in_fresh_interpreter(REUSE, "low"), in_fresh_interpreter(REUSE, "high")
    assert low["fixed"] is True and high["fixed"] is True
    assert low["faults"] > 50 * 200, low  # every round: a fresh mapping, every page faulted
    assert high["faults"] < 100, high  # without the trim threshold: ~240


def test_an_operators_trim_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.TRIM_ENV, "131072")
    assert allocator.fix_mmap_threshold(2 << 20, trim_threshold=8 << 20) is False


#: In a fresh interpreter (argv[1]: "trim" or "wait"): 4,000 bodies of 8.5 KB, each
#: followed by a small live object, then the bodies freed (a batch's bodies among what
#: outlives them); then one round of :func:`trim_heap_every` at a short interval, or the
#: same time asleep: RSS after the bodies were freed and at the end.
FRAGMENTS = """
import asyncio, json, sys
from cretoai.allocator import trim_heap_every
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
bodies, keep = [], []
for i in range(4000):
    bodies.append(bytes([i % 256]) * 8500)
    keep.append(bytearray(600))
del bodies
freed = rss_mb()
async def main():
    if sys.argv[1] == "trim":
        task = asyncio.create_task(trim_heap_every(0.05))
        await asyncio.sleep(0.5)
        task.cancel()
    else:
        await asyncio.sleep(0.5)
asyncio.run(main())
print(json.dumps({"freed": freed, "end": rss_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_free_pages_inside_the_heap_go_back_to_the_kernel() -> None:
    """What freed bodies leave among live objects stays resident (glibc gives back only
    the heap's top) until the trimmer hands it back: 34 MB of bodies, ~16 MB of it whole
    free pages."""
    waited = in_fresh_interpreter(FRAGMENTS, "wait")
    assert waited["end"] > waited["freed"] - 2, waited
    trimmed = in_fresh_interpreter(FRAGMENTS, "trim")
    assert trimmed["end"] < trimmed["freed"] - 10, trimmed
