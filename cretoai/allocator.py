"""glibc malloc's mmap threshold, fixed for one process; and every service's heap
trimmed every few seconds (:func:`trim_heap_every`).

glibc serves an allocation at or above its mmap threshold (128 KiB at first) with its
own ``mmap``, unmapped when freed. But the threshold is dynamic: each such block freed
raises it to the block's size (up to 32 MiB), so later blocks that size come from the
heap instead, and what they leave when freed stays resident (glibc gives back only the
heap's top). The storage service allocates RocksDB's memtables in 1-MiB arena blocks and
frees them by the dozen at every flush: with the dynamic threshold its RSS crept up by
1.5 to 2 MB a minute over 10 minutes at half the node's maximum rate while its memtables
cycled between 10 and 36 MB (docs/benchmarks.md, "The memory target, judged by the
run"). ``mallopt(M_MMAP_THRESHOLD, n)`` fixes the threshold, so those blocks go back
to the kernel with their memtable.

The other side of a low threshold: every block above it is a fresh ``mmap``, and each of
its pages costs a page fault (and zeroing) when first written. The storage service
receives and builds a batch's ~1-MiB buffers several times per batch (the gRPC message,
its bytes, the voted record read back, the write batch): with the threshold at 512 KiB
that was 2-3 % of the whole cluster's CPU at saturation in the kernel's page-fault path
(perf, docs/benchmarks.md). So the threshold can be set between the two sizes, with
the memtables' blocks made larger than it, and the trim threshold (how much free memory
at the top of the heap glibc keeps instead of handing back) set above the buffers, so
that a buffer freed at the top of the heap is not given back only to be faulted in
again by the next one.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

#: mallopt's parameter numbers for the mmap and trim thresholds (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
#: The environment variable by which an operator sets the threshold instead (glibc reads
#: it at start); when it is set, :func:`fix_mmap_threshold` leaves the threshold alone.
ENV = "MALLOC_MMAP_THRESHOLD_"
#: ... and the trim threshold's (then the trim threshold is left alone).
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


def fix_mmap_threshold(threshold: int, *, trim_threshold: int | None = None) -> bool:
    """Fix this process's mmap threshold at ``threshold`` bytes, and with
    ``trim_threshold`` its trim threshold. False, and nothing done, without glibc or
    when the operator set :data:`ENV` (or :data:`TRIM_ENV`, with ``trim_threshold``)."""
    if ENV in os.environ or not sys.platform.startswith("linux"):
        return False
    if trim_threshold is not None and TRIM_ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused", extra={"fields": {"bytes": threshold}})
        return False
    if trim_threshold is not None and mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1:
        log.warning(
            "mallopt(M_TRIM_THRESHOLD) refused", extra={"fields": {"bytes": trim_threshold}}
        )
        return False
    return True


#: glibc's mmap threshold in the services that carry a batch's bodies as whole messages
#: (consensus, transport): a PRE-PREPARE with its bodies is about 1 MB, and the primary
#: builds, copies and frames one for each of three peers. Each such buffer above the
#: threshold is a mapping of its own, unmapped when freed, instead of a block that
#: raises the dynamic threshold and leaves a hole in the heap. In two pairs of 10-minute
#: runs at 306 vertices/s the primary's transport peaked 8-12 MB lower (85-89 MB against
#: 98) and the backups' nodes 7-15 MB lower, for no more CPU (docs/benchmarks.md, "The
#: message services' mmap threshold").
#: Below it, a buffer comes from the heap, reused: the messages of an idle cluster (a
#: few KB) fault no pages.
MESSAGE_MMAP_THRESHOLD_BYTES = 512 * 1024

#: How often every service hands its heap's free pages back to the kernel
#: (:func:`trim_heap_every`).
TRIM_EVERY_S = 2.0


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None without glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


async def trim_heap_every(interval_s: float = TRIM_EVERY_S) -> None:
    """Every ``interval_s``, hand the free pages inside the heap back to the kernel.

    glibc returns freed memory to the kernel only from the top of each heap (and whole
    mmapped blocks). A service's heap holds short-lived buffers of every size (a batch's
    bodies, parsed messages, JSON answers) among long-lived small objects, so the pages
    they leave when freed are mostly in the middle, and stay resident until reused.
    ``malloc_trim(0)`` releases every whole free page of every arena
    (``MADV_DONTNEED``); it runs in a worker thread (ctypes releases the GIL) and walks
    the free chunks, a few milliseconds at most. A page given back costs a page fault
    when it is used again: at most one per page per interval. In 10-minute runs at 306
    vertices/s the node's four processes ended 345-356 MB instead of 373-399 MB, and
    peaked 6-11 MB lower, for no measurable CPU (docs/benchmarks.md).
    """
    trim = malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim, 0)
