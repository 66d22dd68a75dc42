"""python -m services.transport --config FILE"""

from __future__ import annotations

import sys

from cretoai.allocator import MESSAGE_MMAP_THRESHOLD_BYTES
from cretoai.entry import run_service
from services.transport.service import build


def main(argv: list[str] | None = None) -> int:
    return run_service("transport", build, argv, mmap_threshold=MESSAGE_MMAP_THRESHOLD_BYTES)


if __name__ == "__main__":
    sys.exit(main())
