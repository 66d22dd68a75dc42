"""bench.resident: a node's memory with shared pages counted once, on real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster_load import proc_rss_mb
from bench.resident import distinct_resident_mb, resident_frames

SHARED_MB = 32
PRIVATE_MB = 16

# Maps a file and reads every page of it (file pages, shared through the page cache),
# then writes a private buffer of its own, and waits.
CHILD = f"""
import mmap, sys
with open(sys.argv[1], "rb") as f:
    shared = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
total = sum(shared[i] for i in range(0, len(shared), 4096))
private = bytearray({PRIVATE_MB} * 2**20)
for i in range(0, len(private), 4096):
    private[i] = 1
print("ready", total, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[list[int]]:
    shared = tmp_path / "shared.bin"
    shared.write_bytes(bytes(range(256)) * (SHARED_MB * 2**20 // 256))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(shared)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().startswith("ready")
        yield [child.pid for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_shared_file_pages_are_counted_once(two_processes: list[int]) -> None:
    if resident_frames(two_processes[0]) is None:
        pytest.skip("frame numbers in /proc/PID/pagemap are readable by root only")
    rss = [proc_rss_mb(pid) or 0.0 for pid in two_processes]
    alone = [distinct_resident_mb([pid]) or 0.0 for pid in two_processes]
    together = distinct_resident_mb(two_processes)
    assert together is not None
    # one process alone: its own RSS (the samples are moments apart)
    for one, own in zip(alone, rss, strict=True):
        assert abs(one - own) < 2.0
    # together: the file's 32 MB once, not twice; each private buffer still counted
    assert together <= sum(rss) - SHARED_MB * 0.9
    assert together >= max(rss) + PRIVATE_MB * 0.9


def test_a_process_that_is_gone_reads_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert distinct_resident_mb([child.pid]) is None
