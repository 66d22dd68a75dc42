"""glibc malloc's mmap threshold, fixed for one process.

glibc serves an allocation at or above its mmap threshold (128 KiB at first) with its
own ``mmap``, unmapped when freed. But the threshold is dynamic: each such block freed
raises it to the block's size (up to 32 MiB), so later blocks that size come from the
heap instead, and what they leave when freed stays resident (glibc gives back only the
heap's top). The storage service allocates RocksDB's memtables in 1-MiB arena blocks and
frees them by the dozen at every flush: with the dynamic threshold its RSS crept up by
1.5 to 2 MB a minute over 10 minutes at half the node's maximum rate while its memtables
cycled between 10 and 36 MB (docs/benchmarks.md, "The memory target, judged by the
run"). ``mallopt(M_MMAP_THRESHOLD, n)`` fixes the threshold (and the trim threshold
with it), so those blocks go back to the kernel with their memtable.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
#: The environment variable by which an operator sets the threshold instead (glibc reads
#: it at start); when it is set, :func:`fix_mmap_threshold` leaves the threshold alone.
ENV = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(threshold: int) -> bool:
    """Fix this process's mmap threshold at ``threshold`` bytes. False, and nothing done,
    without glibc or when the operator set :data:`ENV`."""
    if ENV in os.environ or not sys.platform.startswith("linux"):
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
    return True
