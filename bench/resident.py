"""A node's resident memory with each physical page counted once.

A node is four processes. Summing their ``VmRSS`` counts the pages they share (the
code of libpython, gRPC's core, OpenSSL, RocksDB: about 37-43 MB of each process's RSS
at idle, the same file pages in all four) four times. What the node holds in RAM is the
set of physical frames its processes map: ``/proc/PID/pagemap`` gives each resident
page's frame number (to root only; to anyone else it reads 0, and this returns None).
"""

from __future__ import annotations

import array
from collections.abc import Iterable
from pathlib import Path

PAGE_BYTES = 4096
_PRESENT = 1 << 63
_FRAME_MASK = (1 << 55) - 1


def _mappings_with_resident_pages(pid: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each mapping of ``pid`` with resident pages, from its smaps."""
    ranges: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            start, end = head.split("-")
            current = (int(start, 16), int(end, 16))
        elif head == "Rss:" and current is not None and int(line.split()[1]) > 0:
            ranges.append(current)
    return ranges


def resident_frames(pid: int) -> set[int] | None:
    """The physical frame numbers of ``pid``'s resident pages; None when unreadable
    (the process is gone, or frame numbers are hidden from this user)."""
    frames: set[int] = set()
    try:
        ranges = _mappings_with_resident_pages(pid)
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
            for start, end in ranges:
                pagemap.seek(start // PAGE_BYTES * 8)
                entries = array.array("Q")
                entries.frombytes(pagemap.read((end - start) // PAGE_BYTES * 8))
                frames.update(e & _FRAME_MASK for e in entries if e & _PRESENT)
    except (OSError, ValueError):
        return None
    if frames == {0}:  # present pages whose frame numbers are hidden
        return None
    return frames


def distinct_resident_mb(pids: Iterable[int]) -> float | None:
    """MB of RAM the processes ``pids`` hold together, each shared page counted once."""
    union: set[int] = set()
    for pid in pids:
        frames = resident_frames(pid)
        if frames is None:
            return None
        union |= frames
    return round(len(union) * PAGE_BYTES / 2**20, 1)
